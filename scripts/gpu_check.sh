#!/usr/bin/env bash
# GPU acceptance check: at most 8 minutes on one H200, installation included (docs/benchmarks.md
# "GPU figures"). Run from anywhere on the GPU machine, with the wheel folder of
# scripts/gpu_wheels.sh next to the tree (wheels/gpu, or GPU_WHEELS=DIR):
#
#   bash scripts/gpu_check.sh [OUT_DIR]    # OUT_DIR defaults to $OUT, else outputs/gpu_check
#
# Phases, each under its own time limit (seconds; never past the overall GPU_CHECK_TOTAL_S):
#   env 20 | install 60 | fused_adam 60 | pytest 150 | time7b the rest | summary, with
#   build7b (200) in the background from the end of install to the start of time7b.
# A failed or timed-out phase is recorded and the next one still runs; OUT_DIR always gets
# gpu_check.json (every phase's status and the figures) and gpu_check.log (everything).
# Without CUDA (or with GPU_CHECK_DRY_RUN=1) it is a dry run: it prints what it would run and
# exits 0. Environment: PYTHON (python3), GPU_CHECK_WORK (scratch, /tmp/mapo-gpu-check).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
OUT_DIR=$(realpath -m "${1:-${OUT:-$ROOT/outputs/gpu_check}}")
WHEELS=$(realpath -m "${GPU_WHEELS:-$ROOT/wheels/gpu}")
WORK=${GPU_CHECK_WORK:-/tmp/mapo-gpu-check}
TOTAL_S=${GPU_CHECK_TOTAL_S:-465}  # 8 min minus the summary and the start of the machine
SITE=$WORK/site  # the carried wheels install here (--target), never over the machine's own

START=$(date +%s)
DRY=${GPU_CHECK_DRY_RUN:-}
if [[ -z "$DRY" ]]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
        && DRY=0 || DRY=1
fi
LOG=$OUT_DIR/gpu_check.log
PHASES=$OUT_DIR/phases.jsonl

export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="9.0"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # less fragmentation at 7B scale

# The 7B step: 8 prompts x 2 rollouts, 448 x 448 images (256 image tokens per prompt), up to
# 256 new tokens; ZeRO-3 + gradient checkpointing, HF engine, no KL reference (beta 0: one 7B
# copy fewer in memory), vision tower frozen (ZeRO-3's ~16 bytes per trained parameter for all
# 8.29 B would leave ~15 GiB of the 139 GiB for everything else; ARCH7B_FREEZE_VISION=0 trains it).
# ARCH7B_FAMILY picks the family's 7B-class architecture (docs/models.md): qwen2_5_vl (the
# default, 7B), qwen2_vl (7B) or qwen3_vl (8B).
FAMILY=${ARCH7B_FAMILY:-qwen2_5_vl}
MODEL_DIR=$WORK/$FAMILY-7b-random
if [[ -d /dev/shm ]] && (( $(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 24 * 1024 * 1024 )); then
    MODEL_DIR=/dev/shm/mapo-$FAMILY-7b-random  # ~17 GB in RAM: written and read in seconds
fi
FREEZE=(--freeze-vision)
[[ "${ARCH7B_FREEZE_VISION:-1}" == 0 ]] && FREEZE=()
ARCH7B_TIME=(-m benchmarks.arch7b time --model "$MODEL_DIR" --engine hf
    --trainer deepspeed_stage_3 --prompts 8 --group 2 --max-new-tokens 256 --micro-batch 4
    --min-pixels 200704 --max-pixels 200704 --beta 0 --warmup 1 --timed 2 "${FREEZE[@]}"
    --steps-jsonl "$OUT_DIR/arch7b_steps.jsonl" --json "$OUT_DIR/arch7b.json"
    trainer.devices=1 trainer.strategy.sub_group_size=100000000 model.attn_implementation=sdpa)
BUILD=(-m benchmarks.arch7b build --family "$FAMILY" --out "$MODEL_DIR")
if [[ "${GPU_CHECK_SMALL:-0}" == 1 ]]; then  # the same path at CPU size: tests/test_gpu_kit.py
    MODEL_DIR=$WORK/arch-small
    BUILD=(-m benchmarks.arch7b build --small --family "$FAMILY" --dtype float32 --out "$MODEL_DIR")
    ARCH7B_TIME=(-m benchmarks.arch7b time --model "$MODEL_DIR" --engine hf --trainer default
        --dtype float32 --prompts 8 --group 2 --max-new-tokens 3 --micro-batch 4 --beta 0
        --warmup 1 --timed 1 --steps-jsonl "$OUT_DIR/arch7b_steps.jsonl"
        --json "$OUT_DIR/arch7b.json")
fi
# ARCH7B_LORA=R: the same step with LoRA rank R on the decoder (docs/benchmarks.md, "LoRA vs
# full fine-tuning"): its peak GPU memory checks the computed ZeRO-3 bytes per GPU.
if [[ -n "${ARCH7B_LORA:-}" ]]; then
    ARCH7B_TIME+=("model.lora.rank=$ARCH7B_LORA" model.lora.vision=false)
fi
PYTEST=(-m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider
    --junitxml="$OUT_DIR/pytest.xml" -o junit_logging=all)

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

phase() {  # phase NAME BUDGET_S CMD...: run CMD under min(BUDGET_S, time left), record it
    local name=$1 budget=$2
    shift 2
    local left=$((TOTAL_S - ($(date +%s) - START)))
    ((budget > left)) && budget=$left
    if [[ $DRY == 1 ]]; then
        left=$((TOTAL_S - PLANNED))
        ((budget > left)) && budget=$left
        PLANNED=$((PLANNED + budget))
        printf '  %-10s (max %3ss)  %s\n' "$name" "$budget" "$(describe "$@")"
        return 0
    fi
    if ((budget < 5)); then
        log "$name: skipped, ${left}s left"
        echo "{\"phase\": \"$name\", \"rc\": null, \"seconds\": 0, \"budget_s\": $budget, \"skipped\": \"no time left\"}" >>"$PHASES"
        return 1
    fi
    log "$name: start (limit ${budget}s): $*"
    local t0=$SECONDS rc
    # bash -c: CMD may be one of the exported functions below. Own log: phases may overlap.
    timeout -k 10 "$budget" bash -c '"$@"' _ "$@" >"$OUT_DIR/logs/$name.log" 2>&1
    rc=$?
    tail -n 5 "$OUT_DIR/logs/$name.log" | sed "s/^/    $name| /" >>"$LOG"
    local took=$((SECONDS - t0))
    log "$name: rc=$rc after ${took}s"
    echo "{\"phase\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"budget_s\": $budget, \"timed_out\": $([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)}" >>"$PHASES"
    return $rc
}

describe() {  # what a phase runs, for the dry run
    case $1 in
        install_wheels) echo "$PY -m pip install --no-deps --no-index --target $SITE" \
            "<the wheels of $WHEELS this Python lacks: scripts/gpu_wheels.py plan>" ;;
        build_fused_adam) echo "(if nvcc exists) $PY -c 'FusedAdamBuilder().load()'" \
            "-> $TORCH_EXTENSIONS_DIR" ;;
        env_report) echo "nvidia-smi; versions of Python, torch, CUDA, transformers, lightning" ;;
        *) echo "$*" ;;
    esac
}

install_wheels() {  # the carried wheels this Python lacks (or has older), into $SITE
    local plan
    plan=$("$PY" scripts/gpu_wheels.py plan "$WHEELS" scripts/gpu_requirements.txt) || return 1
    echo "to install:"; echo "${plan:-  (nothing)}"
    if [[ -n "$plan" ]]; then
        cut -f1 <<<"$plan" | xargs "$PY" -m pip install -q --no-deps --no-index \
            --disable-pip-version-check --target "$SITE" || return 1
    fi
    "$PY" -c 'import deepspeed, hydra, omegaconf, math_verify, mathruler, pylatexenc, PIL, rich
print("imports ok: deepspeed", deepspeed.__version__, "hydra", hydra.__version__)'
}

build_fused_adam() {  # JIT-compiles DeepSpeed's FusedAdam for sm_90 (cached for the tests)
    local nvcc
    nvcc=$(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" 2>/dev/null) || {
        echo "nvcc not found: FusedAdam cannot be built, the tests use torch AdamW"; return 3; }
    echo "nvcc: $nvcc"
    "$PY" -c 'from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load(); print("FusedAdam built")'
}

env_report() {
    nvidia-smi || true
    "$PY" -c 'import sys, torch, transformers, lightning
print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "lightning", lightning.__version__)'
    echo "nproc $(nproc)"; free -g; df -h /dev/shm "$WORK" 2>/dev/null || true
}

export PY WHEELS SITE WORK
export -f install_wheels build_fused_adam env_report

if [[ $DRY == 1 ]]; then
    echo "gpu_check: dry run (no CUDA device here, or GPU_CHECK_DRY_RUN=1); on a GPU it would run,"
    echo "within ${TOTAL_S}s in all, writing $OUT_DIR/{gpu_check.json,gpu_check.log}:"
    PLANNED=0
    [[ -d "$WHEELS" ]] || echo "  (no wheel folder $WHEELS yet: build it with scripts/gpu_wheels.sh)"
fi
if [[ $DRY == 0 ]]; then
    mkdir -p "$OUT_DIR/logs" "$WORK"
    : >"$LOG"
    : >"$PHASES"
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 1000 \
        >"$OUT_DIR/nvidia_smi.csv" 2>/dev/null &
    SMI_PID=$!
    trap 'kill $SMI_PID 2>/dev/null' EXIT
fi
phase env 20 env_report
phase install 60 install_wheels
# The 7B folder is written in the background while FusedAdam builds and the tests run.
BUILD_PID=
if [[ $DRY == 1 || ! -f "$MODEL_DIR/config.json" ]]; then
    [[ $DRY == 0 ]] && rm -rf "$MODEL_DIR"  # a half-written folder from a cut-short run
    [[ $DRY == 1 ]] && echo "  (build7b runs in the background, alongside fused_adam and pytest)"
    phase build7b 200 "$PY" "${BUILD[@]}" &
    BUILD_PID=$!
    [[ $DRY == 1 ]] && wait $BUILD_PID  # (its budget is not counted: it overlaps)
fi
# Not built (no nvcc, failed, timed out): the tests then use torch AdamW without retrying.
phase fused_adam 60 build_fused_adam || export MAPO_FUSED_ADAM=0
phase pytest 150 "$PY" "${PYTEST[@]}"
[[ -n "$BUILD_PID" ]] && wait "$BUILD_PID"
phase time7b 600 "$PY" "${ARCH7B_TIME[@]}"
if [[ $DRY == 1 ]]; then
    printf '  %-10s            %s\n' summary "$PY scripts/gpu_report.py $OUT_DIR"
    exit 0
fi
log "summary"
"$PY" scripts/gpu_report.py "$OUT_DIR" --model "$MODEL_DIR" --rollouts 16 \
    --total-s $(($(date +%s) - START)) 2>&1 | tee -a "$LOG"
for f in "$OUT_DIR"/logs/*.log; do  # the full output of every phase, in the one log
    { echo; echo "======== $(basename "$f" .log)"; cat "$f"; } >>"$LOG"
done
