"""Load the policy, the frozen reference and the processor from a local folder or a hub name.

Pure transformers; every loading setting is the caller's (``model.*``: conf/model/*.yaml holds
them, ``trust_remote_code: false`` included). The special names ``tiny`` and
``tiny-10m`` (when no such local folder exists) resolve to the cached tiny Qwen2.5-VL built by
``mapo.models.tiny``, which is what the embedded default and the tests use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as on the HF hub
# names of the seed-0 tiny models of the original family (benchmarks, scripts): name -> size
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
        from mapo.models.tiny import UNKEYED_FAMILY, tiny_model_path

        path = tiny_model_path(None, seed=0, size=_TINY_ALIASES[text], family=UNKEYED_FAMILY)
        return str(path)
    if _HUB_NAME.match(text) and not text.startswith((".", "~")):
        return text
    raise FileNotFoundError(
        f"Model path {text!r} does not exist and is not a hub name. Point the config at a local "
        "checkpoint folder, e.g. model.path=/local/Qwen2.5-VL-7B-Instruct, use a hub name such "
        "as Qwen/Qwen2.5-VL-7B-Instruct on a machine that can reach the hub, or model.path=tiny "
        "for the tiny model built offline."
    )


_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


def check_model_folder(path: str | os.PathLike) -> None:
    """Raise ValueError unless the local folder `path` looks like a Hugging Face model (a
    config.json that parses, with a model_type, and weight files), before any data or model
    loads; transformers would fail much later, with its own message."""
    folder = Path(path)
    how = (
        "point model.path at the folder that holds config.json and the *.safetensors files "
        "(e.g. a local copy of Qwen/Qwen2.5-VL-7B-Instruct)"
    )
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"model.path={folder} is not a model folder: no config.json. Fix: {how}")
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"model.path={folder}: config.json is not valid JSON ({err}); the copy is damaged. "
            "Fix: copy or download the model again"
        ) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(
            f"model.path={folder}: config.json has no model_type, so it is not a transformers "
            f"model config. Fix: {how}"
        )
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHTS):
        raise ValueError(
            f"model.path={folder} has a config.json but no weights (*.safetensors or "
            f"pytorch_model*.bin). Fix: {how}; a download may have stopped early"
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

    from mapo.models.families import family_of

    path = resolve_model_path(path)
    family_of(path)  # an unsupported VLM family fails here, before the weights load
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
    """The vision encoder (with its merger) of a supported family's model (the module its
    ``mapo.models.families`` entry names), or None."""
    from mapo.models.families import family_of_model

    family = family_of_model(model)
    if family is None:
        return None
    return model.get_submodule(family.vision_tower)


def load_policy(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype,  # model.* (conf/model/*.yaml)
    attn_implementation: str,
    trust_remote_code: bool,
    freeze_vision: bool,
    gradient_checkpointing: bool,
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
    dtype: str | torch.dtype,  # model.* (conf/model/*.yaml)
    attn_implementation: str,
    trust_remote_code: bool,
) -> torch.nn.Module:
    """The frozen reference model: eval mode, no parameter requires grad."""
    model = _load_model(path, dtype, attn_implementation, trust_remote_code)
    return model.eval().requires_grad_(False)


def load_processor(path: str | os.PathLike, **kwargs):
    """The model's processor. Without (a working) torchvision, the folders of a supported
    family (``mapo.models.families``) get its image-only processor, which gives identical text
    and image inputs; an unsupported VLM family is a ConfigError naming the supported ones."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    from mapo.models.families import family_of
    from mapo.models.processor import image_only_class

    path = resolve_model_path(path)
    family = family_of(path)  # None: a hub name or a text-only model
    if is_torchvision_available():
        try:
            return AutoProcessor.from_pretrained(path, **kwargs)
        except Exception as err:  # a CUDA-linked torchvision breaks AutoProcessor on CPU
            log.warning("AutoProcessor failed (%s); trying the image-only processor", err)
    if family is not None:
        return image_only_class(family.processor_class).from_pretrained(path, **kwargs)
    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError):
        return AutoTokenizer.from_pretrained(path, **kwargs)  # a text-only model
