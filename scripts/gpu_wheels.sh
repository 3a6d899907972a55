#!/usr/bin/env bash
# Builds the wheel folder (default wheels/gpu, git-ignored) that scripts/gpu_check.sh installs
# on the GPU machine, which has no network: the packages of scripts/gpu_requirements.txt for
# CPython 3.12 on manylinux x86_64, then checks that the list resolves against that folder plus
# what the machine already has (scripts/gpu_provided.txt), and that the folder stays under
# GPU_WHEELS_LIMIT_MIB (60). Writes DIR/manifest.json. Needs PyPI, and a Python with pip and
# torch (DeepSpeed's setup.py imports torch): .venv by default, or PYTHON=...
#
#   bash scripts/gpu_wheels.sh [DIR]           # build DIR, then check it
#   bash scripts/gpu_wheels.sh --check [DIR]   # only check an existing DIR (no download)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHECK_ONLY=0
if [[ "${1:-}" == "--check" ]]; then CHECK_ONLY=1; shift; fi
DEST=$(realpath -m "${1:-$ROOT/wheels/gpu}")
PY=${PYTHON:-$ROOT/.venv/bin/python}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-60}
REQ=$ROOT/scripts/gpu_requirements.txt
PROVIDED=$ROOT/scripts/gpu_provided.txt
HELPER=$ROOT/scripts/gpu_wheels.py
# The GPU machine: CPython 3.12, glibc >= 2.28 (CUDA 13 needs it), x86_64.
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)

pins() {  # name==version lines of REQ; $1 = build (sdist-only) or binary
    "$PY" - "$REQ" "$1" "$HELPER" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("w", sys.argv[3]); w = importlib.util.module_from_spec(spec)
spec.loader.exec_module(w)
for name, version, build in w.read_pins(__import__("pathlib").Path(sys.argv[1])):
    if build == (sys.argv[2] == "build"):
        print(f"{name}=={version}")
EOF
}

if [[ $CHECK_ONLY == 0 ]]; then
rm -rf "$DEST"
mkdir -p "$DEST"
echo "== downloading binary wheels for CPython 3.12 manylinux x86_64 -> $DEST"
mapfile -t BINARY < <(pins binary)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DEST" "${BINARY[@]}"
echo "== building pure-Python wheels of the sdist-only packages"
mapfile -t BUILD < <(pins build)
# DS_BUILD_OPS=0: no op is compiled here (this machine has no CUDA); they JIT-build from the
# wheel's csrc/ on the GPU machine when ninja and nvcc are there (FusedAdam in the GPU tests).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "${BUILD[@]}"
fi

echo "== resolving the list against the folder + the GPU machine's packages (stand-ins)"
STUBS=$(mktemp -d)
trap 'rm -rf "$STUBS"' EXIT
"$PY" "$HELPER" stubs "$PROVIDED" "$STUBS/wheels"
"$PY" -m pip install -q --dry-run --ignore-installed --no-index --only-binary=:all: \
    "${TARGET[@]}" --target "$STUBS/target" --find-links "$DEST" --find-links "$STUBS/wheels" \
    --report "$STUBS/report.json" -r "$REQ"
"$PY" - "$STUBS/report.json" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))["install"]
print(f"resolved {len(items)} distributions:",
      ", ".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items))
EOF
"$PY" "$HELPER" manifest "$DEST" "$LIMIT_MIB"
