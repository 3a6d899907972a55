"""The optimizer and learning-rate schedule of the policy (``optim.*``, conf/optim/adamw.yaml)."""

from __future__ import annotations

import math
from typing import Any

import torch

from mapo.types import OptimConfig


def build_optimizer(params: list, cfg: OptimConfig, trainer: Any, total_updates: int) -> dict:
    """AdamW (DeepSpeed's CPU Adam when ZeRO offloads the optimizer, FusedAdam for
    ``optim.impl=fused``) and a per-update schedule: linear warm-up, then constant or cosine
    down to ``min_lr_ratio`` over ``total_updates``. Lightning's configure_optimizers form."""
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if _offloads_optimizer(trainer):
        # DeepSpeed refuses torch's AdamW with the optimizer offloaded to CPU
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        opt = DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    elif cfg.impl == "fused":
        # one CUDA kernel for all tensors; JIT-compiled on first use (needs nvcc, ninja)
        from deepspeed.ops.adam import FusedAdam

        opt = FusedAdam(params, adam_w_mode=True, **kw)
    else:
        opt = torch.optim.AdamW(params, **kw)

    def factor(i: int) -> float:
        if i < cfg.warmup_steps:
            return (i + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = min(1.0, (i - cfg.warmup_steps) / max(1, total_updates - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _offloads_optimizer(trainer: Any) -> bool:
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    config = getattr(strategy, "config", None) or {}
    offload = (
        config.get("zero_optimization", {}).get("offload_optimizer")
        if isinstance(config, dict)
        else None
    )
    return bool(offload) and offload.get("device", "cpu") != "none"
