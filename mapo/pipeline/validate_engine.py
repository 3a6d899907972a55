"""Checks of settings that depend on what is installed (flash-attn, the vLLM build), run by
``validate`` before any model loads."""

from __future__ import annotations

import importlib.util
import os

from omegaconf import DictConfig, OmegaConf

from mapo.algorithm.config import ConfigError


def check_engine_settings(cfg: DictConfig) -> None:
    _check_attention(cfg)
    check_lora_sync(cfg)


def _check_attention(cfg: DictConfig) -> None:
    """transformers' own ImportError does not name the setting that asked for flash-attn."""
    attn = OmegaConf.select(cfg, "model.attn_implementation", default=None)
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package, which is "
            "not installed. Fix: pip install flash-attn, or use model.attn_implementation=sdpa"
        )


def check_lora_sync(cfg: DictConfig) -> None:
    """``rollout.lora_sync`` is adapter or merged; with LoRA on, adapter mode needs a vLLM whose
    model class for the architecture serves adapters (asked of vLLM itself, when installed)."""
    mode = OmegaConf.select(cfg, "rollout.lora_sync", default=None)
    if mode is None:  # the HF engine generates from the policy itself: nothing is synced
        return
    from mapo.rollout.lora_sync import LORA_SYNC_MODES

    if mode not in LORA_SYNC_MODES:
        raise ConfigError(f"rollout.lora_sync={mode!r} must be one of {list(LORA_SYNC_MODES)}")
    if cfg.rollout.engine != "vllm" or cfg.model.lora.rank == 0 or mode != "adapter":
        return
    arch = _vllm_architecture(cfg.model)
    if arch is None or importlib.util.find_spec("vllm") is None:
        return  # the engine checks again when it is built (or names the missing install)
    from mapo.rollout.lora_sync import adapter_support_error

    error = adapter_support_error(arch, bool(cfg.model.lora.vision))
    if error:
        raise ConfigError(error)


def _vllm_architecture(model: DictConfig) -> str | None:
    """vLLM's name of the model's architecture: its family's, else config.json's."""
    from mapo.models.families import family_of, get_family

    if model.family is not None:
        return get_family(model.family).vllm_architecture
    if model.path is not None and os.path.isdir(str(model.path)):
        family = family_of(model.path)
        return family.vllm_architecture if family else None
    return None
