"""FLOP counts and model-FLOPs utilisation (MFU) of the training phase of an RL step.

Training phase = the policy's forward + backward over every rollout (prompt + completion) and
the optimizer step (`time/update`). The count is the usual dense-transformer one:

    model FLOPs     = 6 * N * T      (forward 2NT, backward 4NT)
    hardware FLOPs  = 8 * N * T      with gradient checkpointing (the forward runs twice)

N = parameters of the language model that multiply every token: all of it but the input
embedding (a lookup) and the vision tower, lm_head included. T = prompt + completion tokens of
all rollouts, padding excluded (`perf/train_tokens`). Not counted: attention scores
(12 * layers * hidden * context per token: ~1 % of 6N at 28 x 3584 and ~600-token rows) and
the vision tower (it sees only the images' patches). MFU = model FLOPs / seconds / peak.
"""

from __future__ import annotations

from pathlib import Path

import torch

# NVIDIA H100/H200 SXM, dense bf16 tensor-core peak (the datasheet's 1,979 is with sparsity).
H200_BF16_DENSE_TFLOPS = 989.0


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of ``model``: total, vision tower, input embedding, and ``flops`` (the N
    above: total minus vision minus input embedding). Works on the meta device."""
    from mapo.models.loading import vision_tower

    total = sum(p.numel() for p in model.parameters())
    tower = vision_tower(model)
    vision = sum(p.numel() for p in tower.parameters()) if tower is not None else 0
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "total": total,
        "vision": vision,
        "embedding": embedding,
        "flops": total - vision - embedding,
    }


def param_counts_of_folder(path: str | Path) -> dict[str, int]:
    """param_counts of the model saved in ``path``, built on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return param_counts(model)


def training_flops(n_params: int, tokens: float, *, recompute: bool) -> dict[str, float]:
    """Model and hardware FLOPs of one forward + backward over ``tokens`` tokens."""
    return {
        "model_flops": 6.0 * n_params * tokens,
        "hardware_flops": (8.0 if recompute else 6.0) * n_params * tokens,
    }


def utilisation(flops: float, seconds: float, peak_tflops: float = H200_BF16_DENSE_TFLOPS) -> float:
    """Fraction of ``peak_tflops`` that ``flops`` in ``seconds`` achieve."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return flops / seconds / (peak_tflops * 1e12)
