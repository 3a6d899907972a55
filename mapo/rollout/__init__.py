"""Rollout engines behind one protocol (base.py); `ENGINES` maps `rollout.engine` to a builder."""

from __future__ import annotations

from typing import Any, Callable

from mapo.rollout.base import Completions, Prompt, RolloutEngine, SamplingConfig

__all__ = [
    "ENGINES",
    "Completions",
    "Prompt",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
    "register_engine",
]

# builder(policy, processor, model_path, rollout_cfg) -> RolloutEngine
ENGINES: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(name: str):
    def decorator(fn):
        if name in ENGINES and ENGINES[name] is not fn:
            raise ValueError(f"rollout engine {name!r} is already registered")
        ENGINES[name] = fn
        return fn

    return decorator


def build_engine(
    name: str, policy: Any, processor: Any, model_path: str, cfg: Any
) -> RolloutEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {sorted(ENGINES)}")
    return ENGINES[name](policy, processor, model_path, cfg)


@register_engine("hf")
def _hf(policy, processor, model_path, cfg):
    from mapo.rollout.hf import HFEngine

    return HFEngine(policy, processor, share_prefill=cfg.get("share_prefill", True))


@register_engine("vllm")
def _vllm(policy, processor, model_path, cfg):
    from mapo.rollout.vllm import VLLMEngine  # lazy: vLLM is an optional dependency

    return VLLMEngine(
        str(model_path),
        dtype=cfg.get("dtype", "auto"),
        gpu_memory_utilization=cfg.get("gpu_memory_utilization", 0.5),
        tensor_parallel_size=cfg.get("tensor_parallel_size", 1),
        max_model_len=cfg.get("max_model_len", 4096),
        enable_sleep_mode=cfg.get("enable_sleep_mode", False),
        enforce_eager=cfg.get("enforce_eager", False),
        limit_mm_per_prompt=dict(cfg.get("limit_mm_per_prompt") or {"image": 1}),
        seed=cfg.get("seed", 0),
        sync_bucket_mb=cfg.get("sync_bucket_mb"),
    )
