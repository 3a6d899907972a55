"""A LoRA policy's weights for the vLLM engine (``rollout.lora_sync``, docs/lora.md).

``adapter``: vLLM is built with LoRA enabled (``enable_lora``) on the base weights of the model
folder, which never change; each sync writes only the adapter, as a peft folder, and loads it
under a new ``LoRARequest`` id (vLLM caches an adapter by its id, so a reused id would keep the
old tensors); the generations that follow name that request. The previous adapter is dropped.
``merged``: the full weights with every adapter folded in (W + alpha / rank * B @ A) are pushed
like a fully fine-tuned policy's, bucket by bucket (``weight_sync.weight_buckets``).

Under DeepSpeed ZeRO-3 the adapter's tensors are gathered (collectively) before they are
written or folded in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mapo.models.lora import (
    adapter_state_dict,
    adapts_vision,
    has_lora,
    lora_scale,
    merged_entry,
    save_adapter,
)
from mapo.models.sharding import gathered
from mapo.rollout.weight_sync import iter_weights, weight_buckets

LORA_SYNC_MODES = ("adapter", "merged")
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def engine_lora_args(policy: torch.nn.Module) -> dict[str, Any]:
    """``VLLMEngine``'s ``lora_rank`` / ``lora_vision`` for ``policy`` (none without LoRA)."""
    if not has_lora(policy):
        return {}
    return {"lora_rank": int(policy.peft_config["default"].r), "lora_vision": adapts_vision(policy)}


def adapter_support_problem(architecture: str, vision: bool) -> str | None:
    """Why this vLLM cannot serve LoRA adapters for ``architecture`` (None: it can). Leaves
    the environment as it found it: the engine, built later under the trainer's process group,
    sets this rank's variables (its cores) only where they are absent."""
    from mapo.rollout.vllm_compat import import_vllm

    before = dict(os.environ)
    try:
        import_vllm()  # the project's image-only classes registered
        from vllm import ModelRegistry
        from vllm.model_executor.models.interfaces import supports_lora

        cls = ModelRegistry._try_load_model_cls(architecture)
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)
    if cls is None:
        return f"this vLLM has no model class for {architecture}"
    if not (supports_lora(cls) and getattr(cls, "supports_lora", False) is True):
        return f"this vLLM build has no LoRA support for {architecture}"
    if vision and not getattr(cls, "supports_tower_connector_lora", False):
        return (
            f"this vLLM build cannot put LoRA adapters on the vision tower of {architecture} "
            "(model.lora.vision=true)"
        )
    return None


def adapter_support_error(architecture: str, vision: bool) -> str | None:
    """The one-line error for ``rollout.lora_sync=adapter`` where vLLM lacks the support."""
    problem = adapter_support_problem(architecture, vision)
    if problem is None:
        return None
    return (
        f"rollout.lora_sync=adapter: {problem}. Fix: rollout.lora_sync=merged (pushes the "
        "merged weights every step instead of the adapter)"
    )


def lora_llm_kwargs(rank: int, vision: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments that let it serve one adapter of ``rank``."""
    fits = [r for r in _VLLM_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"vLLM serves LoRA ranks up to {_VLLM_RANKS[-1]}; got {rank}")
    return {
        "enable_lora": True,
        "max_lora_rank": fits[0],
        "max_loras": 1,
        "enable_tower_connector_lora": vision,
    }


def adapter_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The adapter's parameters by their state-dict names, full (gathered under ZeRO-3), on
    the CPU. Collective under ZeRO-3: every rank must call it."""
    named = [(n, p) for n, p in model.named_parameters() if ".lora_" in n]
    with gathered([p for _, p in named if hasattr(p, "ds_id")]):
        return {n: p.detach().to("cpu", copy=True) for n, p in named}


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def engine_weights(
    model: torch.nn.Module, bucket_bytes: int | None
) -> Iterator[tuple[str, Tensor]]:
    """What a full sync pushes: ``model``'s weights (HF names), a bucket at a time; with LoRA,
    the base model's names and shapes with every adapter folded in."""
    if not has_lora(model):
        yield from iter_weights(model, bucket_bytes)
        return
    adapters, scale = adapter_tensors(model), lora_scale(model)
    entries = [(n, t) for n, t in model.state_dict(keep_vars=True).items() if ".lora_" not in n]
    for bucket in weight_buckets(model, bucket_bytes, entries):
        for name, value in bucket:
            yield merged_entry(name, value, adapters, scale)


class AdapterSync:
    """Adapter-only weight sync into a ``vllm.LLM`` built with ``lora_llm_kwargs``: ``push``
    writes the adapter to a new folder, loads it under the next id and drops the previous one;
    ``request`` is what ``generate`` passes (None: the base model, before the first push)."""

    def __init__(self, llm: Any, base_path: str):
        self.llm, self.base_path = llm, base_path
        self.folder = Path(tempfile.mkdtemp(prefix="mapo-lora-"))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.version = 0
        self.request: Any = None

    def push(self, model: torch.nn.Module) -> int:
        """Load ``model``'s adapter into the engine; returns the bytes of its tensors."""
        from vllm.lora.request import LoRARequest

        tensors = adapter_tensors(model)
        self.version += 1
        out = self.folder / f"v{self.version}"
        save_adapter(model, out, self.base_path, state=tensors)
        self.clear()
        request = LoRARequest(f"policy-v{self.version}", self.version, str(out))
        self.llm.llm_engine.add_lora(request)  # loaded now: a bad adapter fails at the sync
        self.request = request
        return tensor_bytes(adapter_state_dict(model, tensors))

    def clear(self) -> None:
        """Drop the loaded adapter (generations then use the engine's base weights)."""
        if self.request is None:
            return
        self.llm.llm_engine.remove_lora(self.request.lora_int_id)
        shutil.rmtree(self.request.lora_path, ignore_errors=True)
        self.request = None
