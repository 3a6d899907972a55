"""LoRA adapters on the policy through peft (``model.lora``; docs/lora.md).

The adapters are injected in place (``peft.inject_adapter_in_model``): the policy stays the
transformers model, so the log-prob code (``model.model`` backbone), ``generate`` and the
engines see the same object with ``lora_A`` / ``lora_B`` layers inside. Only the adapters
require grad. The reference of the KL term is the same model with the adapters switched off
(``adapters_disabled``): no second copy of the weights is loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

ADAPTER_NAME = "default"  # peft's name; the adapter folder drops it from the keys


def _tower_prefix(model: torch.nn.Module) -> str | None:
    """The module name of the vision tower (with its merger), or None."""
    from mapo.models.loading import vision_tower

    tower = vision_tower(model)
    if tower is None:
        return None
    return next(name for name, module in model.named_modules() if module is tower)


def target_names(model: torch.nn.Module, target_modules: Sequence[str], vision: bool) -> list[str]:
    """Full names of the Linear layers that get adapters: the decoder's whose last name part is
    in ``target_modules`` (the vision tower's blocks use some of the same names), and with
    ``vision`` every Linear layer of the vision tower and its merger. Raises ValueError for a
    name that matches no decoder layer."""
    tower = _tower_prefix(model)
    if vision and tower is None:
        raise ValueError(
            f"model.lora.vision=true but {type(model).__name__} has no vision tower; "
            "set model.lora.vision=false"
        )

    def in_tower(name: str) -> bool:
        return tower is not None and (name == tower or name.startswith(tower + "."))

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    decoder = [n for n in linear if not in_tower(n) and n != "lm_head"]
    names = [n for n in decoder if n.rsplit(".", 1)[-1] in set(target_modules)]
    found = {n.rsplit(".", 1)[-1] for n in names}
    missing = [t for t in target_modules if t not in found]
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in decoder})
        raise ValueError(
            f"model.lora.target_modules: {missing} match no Linear layer of the decoder; "
            f"known: {known}"
        )
    return names + ([n for n in linear if in_tower(n)] if vision else [])


def apply_lora(
    model: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    vision: bool,
) -> torch.nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze everything else. lora_B starts
    at zero, so the adapted model computes exactly what the base model does until a step."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_names(model, target_modules, vision),
        bias="none",
    )
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def has_lora(model: torch.nn.Module) -> bool:
    return ADAPTER_NAME in getattr(model, "peft_config", {})


def _lora_layers(model: torch.nn.Module) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The base model: every LoRA layer runs its base layer alone (peft's disable_adapter).
    The adapters' requires_grad flags are restored afterwards."""
    layers = _lora_layers(model)
    grads = {id(p): p.requires_grad for layer in layers for p in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
            for p in layer.parameters():
                p.requires_grad_(grads[id(p)])


def adapter_state_dict(model: torch.nn.Module, state: dict | None = None) -> dict:
    """The adapter's tensors under peft's saved names (no adapter name), from ``state``
    (a gathered state dict under ZeRO-3) or the model."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state, adapter_name=ADAPTER_NAME)


def save_adapter(model: torch.nn.Module, out: Path, base: str, state: dict | None = None) -> None:
    """A peft adapter folder (adapter_config.json, adapter_model.safetensors) for the base
    model at ``base``: ``PeftModel.from_pretrained(base_model, out)`` loads it."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER_NAME]
    config.base_model_name_or_path = str(base)
    config.save_pretrained(str(out))
    # PeftModel wraps the model as base_model.model: its saved names carry that prefix
    tensors = {
        f"base_model.model.{k}": v.detach().cpu().contiguous()
        for k, v in adapter_state_dict(model, state).items()
    }
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def adapter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the adapter's tensors: what an adapter-only weight sync sends."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".lora_" in n)


def merged_entry(key: str, value: torch.Tensor, adapters: dict, scale: float):
    """``(name, tensor)`` of one policy state-dict entry in the base model: a LoRA layer's
    ``base_layer`` weight with its adapter folded in (W + scale * B @ A, the adapter's tensors
    looked up in ``adapters`` by their state-dict names), under the name transformers saves."""
    if ".base_layer." not in key:
        return key, value
    name, leaf = key.split(".base_layer.")
    a = adapters.get(f"{name}.lora_A.{ADAPTER_NAME}.weight")
    if leaf == "weight" and a is not None:
        b = adapters[f"{name}.lora_B.{ADAPTER_NAME}.weight"]
        value = value + (b.float() @ a.float()).mul(scale).to(value.dtype)
    return f"{name}.{leaf}", value


def merged_state_dict(state: dict, scale: float) -> dict:
    """The base model's state dict with every adapter folded in (W + scale * B @ A), under the
    names transformers saves: what ``merge_and_unload`` gives, without changing the policy."""
    return dict(merged_entry(k, v, state, scale) for k, v in state.items() if ".lora_" not in k)


def adapts_vision(model: torch.nn.Module) -> bool:
    """Whether any adapter sits in the vision tower or its merger (``model.lora.vision``)."""
    tower = _tower_prefix(model)
    return tower is not None and any(
        ".lora_" in name and name.startswith(tower + ".") for name, _ in model.named_parameters()
    )


def lora_scale(model: torch.nn.Module) -> float:
    config = model.peft_config[ADAPTER_NAME]
    return config.lora_alpha / config.r
