"""Step time of the real Qwen2.5-VL-7B architecture with random weights (no download needed),
for the GPU figure in docs/benchmarks.md: rollout tokens/s and seconds per RL step.

    # 1. a random-initialised 7B-architecture folder (~16 GB in bf16; built on the GPU)
    python -m benchmarks.arch7b build --out /scratch/qwen25vl7b-random
    # 2. time RL steps through the real trainer (train.py's config, evaluation off)
    python -m benchmarks.arch7b time --model /scratch/qwen25vl7b-random \
        --engine vllm --trainer deepspeed_stage_3 --prompts 16 --group 8 --max-new-tokens 256

`scripts/gpu_check.sh` runs the HF-engine variant within its 8 minutes (docs/benchmarks.md):
training-phase tokens/s, MFU (benchmarks/mfu.py), peak GPU memory and generation tokens/s.

The architecture is Qwen2.5-VL-7B-Instruct's (text 28 x 3584, 28 heads / 4 KV heads, MLP 18944,
vocabulary 152064, mrope [16, 24, 24]; vision 32 x 1280, MLP 3420, full attention in blocks
7/15/23/31, merger to 3584). The tokenizer is the tiny model's (a few hundred tokens; the
embedding keeps the real 152064 rows), so prompts are short; random weights generate to
max_new_tokens, so every rollout has the same length and every reward is 0 (the step does
the same work regardless). `--small` builds the same code path at tiny dimensions, which is
how CPU checks it (benchmarks/tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from benchmarks.common import Settings, load_average, peak_rss_mb
from benchmarks.mfu import (
    H200_BF16_DENSE_TFLOPS,
    param_counts_of_folder,
    training_flops,
    utilisation,
)
from benchmarks.run_ours import StepClockCallback

QWEN25_VL_7B = {
    "text": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=128000,
        max_window_layers=28,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
}
# The other families' 7B-class architectures, from their public config.json values (not
# loaded here): Qwen2-VL-7B (vision hidden = merger output) and Qwen3-VL-8B (interleaved
# MRoPE, DeepStack from vision blocks 8, 16, 24).
QWEN2_VL_7B = {
    "text": dict(QWEN25_VL_7B["text"]),
    "vision": dict(
        depth=32,
        embed_dim=1280,
        hidden_size=3584,
        mlp_ratio=4,
        num_heads=16,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    ),
}
QWEN3_VL_8B = {
    "text": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    ),
    "vision": dict(
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        out_hidden_size=4096,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
    ),
}
ARCHITECTURES = {"qwen2_5_vl": QWEN25_VL_7B, "qwen2_vl": QWEN2_VL_7B, "qwen3_vl": QWEN3_VL_8B}
# Same code path at CPU size: head_dim 32 for mrope [4, 6, 6], as the tiny model.
SMALL = {
    "text": dict(
        QWEN25_VL_7B["text"],
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        max_window_layers=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    ),
    "vision": dict(
        QWEN25_VL_7B["vision"],
        depth=4,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=128,
        fullatt_block_indexes=[1, 3],
    ),
}


def build(
    out: Path,
    *,
    small: bool = False,
    seed: int = 0,
    dtype: str = "bfloat16",
    family: str = "qwen2_5_vl",
) -> Path:
    """Random-initialised VLM of ``family``'s 7B-class architecture (or, ``small``, a CPU-size
    one: SMALL for Qwen2.5-VL, the tiny model's config otherwise) saved into ``out`` with the
    tiny model's tokenizer and processor, loadable by train.py as ``model.path=out``."""
    from transformers import GenerationConfig

    from mapo.models.families import get_family, transformers_class
    from mapo.models.tiny import SIZES, SPECIAL_TOKENS, save_processor, tiny_config
    from mapo.models.tiny_tokenizer import default_corpus, train_tiny_tokenizer

    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another --out or delete it")
    fam = get_family(family)
    tokenizer = train_tiny_tokenizer(list(default_corpus()), vocab_size=1024)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    if small and family != "qwen2_5_vl":
        config = tiny_config(SIZES["tiny"], tokenizer, family)
    else:
        dims = SMALL if small else ARCHITECTURES[family]
        if len(tokenizer) > dims["text"]["vocab_size"]:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size")
        config = transformers_class(fam.config_class)(
            text_config=dict(dims["text"], bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot),
            vision_config=dims["vision"],
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = transformers_class(fam.model_class)(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot
    )
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    save_processor(tokenizer, out, family)
    print(f"built {params / 1e6:,.1f} M parameters ({dtype}) -> {out}")
    return out


class StepLog(StepClockCallback):
    """The step clock; also appends each step's trainer metrics and GPU memory to ``path``
    (JSON lines) as it ends, so a run cut short still leaves its finished steps."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if self.path:
            row = {"step": len(self.metrics) - 1, **self.metrics[-1], **gpu_memory_gb()}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def gpu_memory_gb() -> dict[str, float]:
    """Peak GPU memory of this process so far (GiB): allocated by tensors, reserved by the
    caching allocator. Empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return {
        "gpu_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "gpu_peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def step_figures(m: dict, rollouts: int, n_flops: int, *, recompute: bool) -> dict[str, float]:
    """Generation and training-phase rates of one RL step from its trainer metrics ``m``
    (time/rollout, time/update, response_length/mean, perf/train_tokens); benchmarks.mfu."""
    train_s, tokens = m["time/update"], m["perf/train_tokens"]
    flops = training_flops(n_flops, tokens, recompute=recompute)
    return {
        "generation_tokens_per_s": m["response_length/mean"] * rollouts / m["time/rollout"],
        "train_tokens": tokens,
        "train_s": train_s,
        "train_tokens_per_s": tokens / train_s,
        "mfu": utilisation(flops["model_flops"], train_s),
        "hfu": utilisation(flops["hardware_flops"], train_s),
    }


def time_steps(a: argparse.Namespace) -> dict:
    """RL steps of the real trainer on ``a.model``; prints and returns the timing summary."""
    from benchmarks.run_ours import run

    s = Settings(
        size="tiny",
        engine=a.engine,
        prompts=a.prompts,
        group=a.group,
        max_new_tokens=a.max_new_tokens,
        beta=a.beta,
        warmup=a.warmup,
        timed=a.timed,
        threads=torch.get_num_threads(),
        coldstart=False,
    )
    recompute = a.gradient_checkpointing
    extra = [
        f"model.path={a.model}",
        f"model.dtype={a.dtype}",
        f"trainer={a.trainer}",
        f"algorithm.micro_batch_size={a.micro_batch}",
        f"model.gradient_checkpointing={str(recompute).lower()}",
        f"model.freeze_vision={str(a.freeze_vision).lower()}",
        f"data.min_pixels={a.min_pixels}",
        f"data.max_pixels={a.max_pixels}",
        *a.override,
    ]
    load = load_average()
    steps_jsonl = str(a.steps_jsonl) if a.steps_jsonl else None
    result, _ = run(s, *extra, callback=StepLog, callback_kwargs={"path": steps_jsonl})
    rollouts = a.prompts * a.group
    counts = param_counts_of_folder(a.model)
    per_step = [
        step_figures(m, rollouts, counts["flops"], recompute=recompute) for m in result["phases"]
    ]
    median = {k: statistics.median(f[k] for f in per_step) for k in per_step[0]}
    tokens = result["mean_completion_tokens"] * rollouts
    out = {
        "model": str(a.model),
        "trainer": a.trainer,
        "engine": a.engine,
        "prompts": a.prompts,
        "group": a.group,
        "max_new_tokens": a.max_new_tokens,
        "gradient_checkpointing": recompute,
        "freeze_vision": a.freeze_vision,
        "s_per_step": result["s_per_step"],
        "rollouts_per_s": result["rollouts_per_s"],
        "rollout_tokens_per_s": tokens / result["s_per_step"],
        "mean_completion_tokens": result["mean_completion_tokens"],
        **median,
        "per_step": per_step,
        "params": counts,
        "trainable_parameters": result["trainable_parameters"],  # LoRA: the adapters only
        "flop_formula": "model 6*N*T, hardware 8*N*T with checkpointing (else 6*N*T); "
        "N = params['flops'], T = train_tokens (benchmarks/mfu.py)",
        "peak_tflops": H200_BF16_DENSE_TFLOPS,
        "peak_rss_mb": peak_rss_mb(),
        "load": [load, load_average()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **gpu_memory_gb(),
    }
    print(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the random-initialised folder")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--small", action="store_true", help="tiny dimensions (CPU check)")
    b.add_argument("--dtype", default="bfloat16")
    b.add_argument("--family", default="qwen2_5_vl", help="model family (docs/models.md)")
    t = sub.add_parser("time", help="time RL steps on a built folder")
    t.add_argument("--model", type=Path, required=True)
    t.add_argument("--engine", default="vllm", choices=["hf", "vllm"])
    t.add_argument("--trainer", default="deepspeed_stage_3", help="conf/trainer/<name>")
    t.add_argument("--dtype", default="bfloat16")
    t.add_argument("--prompts", type=int, default=16)
    t.add_argument("--group", type=int, default=8)
    t.add_argument("--max-new-tokens", type=int, default=256)
    t.add_argument("--micro-batch", type=int, default=8, help="rollouts per forward/backward")
    t.add_argument("--min-pixels", type=int, default=3136, help="images are resized up to this")
    t.add_argument("--max-pixels", type=int, default=12544, help="image size cap (pixels)")
    t.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute activations in the backward (paper: on)",
    )
    t.add_argument("--freeze-vision", action="store_true", help="train the language model only")
    t.add_argument("--steps-jsonl", type=Path, help="append each step's metrics here as it ends")
    t.add_argument("--beta", type=float, default=0.01)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--timed", type=int, default=3)
    t.add_argument("--json", type=Path, help="also write the summary here")
    t.add_argument("override", nargs="*", help="extra Hydra overrides (key=value)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(a.out, small=a.small, dtype=a.dtype, family=a.family)
        return
    out = time_steps(a)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
