"""Load the policy, the frozen reference and the processor from a local folder or a hub name.

Pure transformers, ``trust_remote_code=False`` by default. The special names ``tiny`` and
``tiny-10m`` (when no such local folder exists) resolve to the cached tiny Qwen2.5-VL built by
``mapo.models.tiny``, which is what the embedded default and the tests use.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as on the HF hub
_TINY_ALIASES = {"tiny": "tiny", "tiny-10m": "10m"}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_model_path(path: str | os.PathLike) -> str:
    """A local folder, a hub name, or the tiny model's cached folder; else FileNotFoundError."""
    text = str(path)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if text in _TINY_ALIASES:
        from mapo.models.tiny import tiny_model_path

        return str(tiny_model_path(size=_TINY_ALIASES[text]))
    if _HUB_NAME.match(text) and not text.startswith((".", "~")):
        return text
    raise FileNotFoundError(
        f"Model path {text!r} does not exist and is not a hub name. Point the config at a local "
        "checkpoint folder, e.g. model.path=/local/Qwen2.5-VL-7B-Instruct, use a hub name such "
        "as Qwen/Qwen2.5-VL-7B-Instruct on a machine that can reach the hub, or model.path=tiny "
        "for the tiny model built offline."
    )


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'.")
    return _DTYPES[dtype]


def _load_model(path, dtype, attn_implementation, trust_remote_code):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    is_vlm = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    auto_class = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    return auto_class.from_pretrained(
        path,
        dtype=_torch_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision encoder (with its merger) of a Qwen2/2.5-VL-style model, or None."""
    base = getattr(model, "model", model)
    return getattr(base, "visual", None)


def load_policy(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    freeze_vision: bool = False,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """The trainable policy, in train mode. ``freeze_vision`` freezes the vision tower
    (the paper trains it: keep False to reproduce)."""
    model = _load_model(path, dtype, attn_implementation, trust_remote_code)
    if freeze_vision:
        tower = vision_tower(model)
        if tower is None:
            raise ValueError(f"freeze_vision=True but {type(model).__name__} has no vision tower.")
        tower.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the KV cache is useless (and refused) when checkpointing
    return model.train()


def load_reference(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """The frozen reference model: eval mode, no parameter requires grad."""
    model = _load_model(path, dtype, attn_implementation, trust_remote_code)
    return model.eval().requires_grad_(False)


def load_processor(path: str | os.PathLike, **kwargs):
    """The model's processor. Without (a working) torchvision, Qwen2.5-VL folders get the
    image-only processor, which gives identical text and image inputs."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    from mapo.models.processor import ImageOnlyQwen2_5_VLProcessor

    path = resolve_model_path(path)
    if is_torchvision_available():
        try:
            return AutoProcessor.from_pretrained(path, **kwargs)
        except Exception as err:  # a CUDA-linked torchvision breaks AutoProcessor on CPU
            log.warning("AutoProcessor failed (%s); trying the image-only processor", err)
    try:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError):
        model_type = None
    if model_type == "qwen2_5_vl":
        return ImageOnlyQwen2_5_VLProcessor.from_pretrained(path, **kwargs)
    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError):
        return AutoTokenizer.from_pretrained(path, **kwargs)  # a text-only model
