"""Rollout engines behind one protocol (`mapo.types.RolloutEngine`); `ENGINES` maps `rollout.engine` to a builder."""

from __future__ import annotations

from typing import Any, Callable

from mapo.registry import Registry
from mapo.types import Completions, Prompt, RolloutEngine, SamplingConfig

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
ENGINES: Registry[Callable[..., RolloutEngine]] = Registry("rollout engine")


def register_engine(name: str):
    """Decorator: `@register_engine("name")` on a builder(policy, processor, model_path, cfg)."""
    return ENGINES.register(name)


def build_engine(
    name: str, policy: Any, processor: Any, model_path: str, cfg: Any
) -> RolloutEngine:
    return ENGINES[name](policy, processor, model_path, cfg)  # unknown: lists the known ones


@register_engine("hf")
def _hf(policy, processor, model_path, cfg):
    from mapo.rollout.hf import HFEngine

    return HFEngine(policy, processor, share_prefill=cfg.share_prefill)


@register_engine("vllm")
def _vllm(policy, processor, model_path, cfg):
    from mapo.rollout.lora_sync import engine_lora_args
    from mapo.rollout.vllm import VLLMEngine  # lazy: vLLM is an optional dependency

    return VLLMEngine(str(model_path), **vllm_engine_args(cfg), **engine_lora_args(policy))


def vllm_engine_args(cfg: Any) -> dict[str, Any]:
    """``VLLMEngine``'s keyword arguments from a ``rollout`` config (conf/rollout/vllm.yaml)."""
    return {
        "dtype": cfg.dtype,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_model_len": cfg.max_model_len,
        "enable_sleep_mode": cfg.enable_sleep_mode,
        "enforce_eager": cfg.enforce_eager,
        "limit_mm_per_prompt": dict(cfg.limit_mm_per_prompt),
        "seed": cfg.seed,
        "sync_bucket_mb": cfg.sync_bucket_mb,
        "lora_sync": cfg.lora_sync,
    }
