"""Parameter, gradient and optimizer-state bytes per GPU under ZeRO-3, full fine-tuning vs
LoRA, for the Qwen2.5-VL-7B architecture built on the meta device (real shapes, no weights):

    python -m benchmarks.lora_zero3_bytes --rank 16 --gpus 1 8

ZeRO-3 with bf16 weights and AdamW shards everything over the GPUs: bf16 parameters (2 bytes
each, frozen ones included), bf16 gradients of the trainable parameters (2 bytes) and the
optimizer's fp32 master copy, exp_avg and exp_avg_sq of the trainable ones (12 bytes). LoRA
keeps the frozen base (sharded parameters) and drops its gradients and optimizer state.
Activations, buffers and DeepSpeed's gather buffers are not counted.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.arch7b import QWEN25_VL_7B
from mapo.models.lora import apply_lora
from mapo.pipeline.quickrun import lora_config

GIB = 2**30


def meta_model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=QWEN25_VL_7B["text"],
        vision_config=QWEN25_VL_7B["vision"],
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)


def counts(rank: int, vision: bool) -> tuple[int, int]:
    """(all parameters, trainable parameters); rank 0: full fine-tuning."""
    model = meta_model()
    if rank > 0:
        apply_lora(model, **lora_config(rank=rank, vision=vision))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def per_gpu(total: int, trainable: int, gpus: int) -> dict[str, float]:
    """GiB per GPU of ZeRO-3's three sharded parts."""
    parts = {"params": 2 * total, "grads": 2 * trainable, "optimizer": 12 * trainable}
    out = {k: v / gpus / GIB for k, v in parts.items()}
    out["sum"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--vision", action="store_true", help="adapters on the vision tower too")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    a = parser.parse_args(argv)
    rows = {"full": counts(0, False), f"LoRA r={a.rank}": counts(a.rank, a.vision)}
    print(
        "| run | GPUs | parameters | trainable | params GiB | grads GiB | optimizer GiB | sum GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (total, trainable) in rows.items():
        for gpus in a.gpus:
            g = per_gpu(total, trainable, gpus)
            print(
                f"| {name} | {gpus} | {total / 1e9:.3f} B | {trainable / 1e6:,.1f} M | "
                f"{g['params']:.2f} | {g['grads']:.3f} | {g['optimizer']:.3f} | {g['sum']:.2f} |"
            )


if __name__ == "__main__":
    main()
