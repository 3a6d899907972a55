"""Build a tiny VLM offline, deterministically from a seed, as a real checkpoint folder.

One per model family (``mapo.models.families``; Qwen2.5-VL by default, Qwen2-VL, Qwen3-VL
with DeepStack and Qwen3.5 too), from the transformers config classes. The folder holds what
``save_pretrained`` writes for a real checkpoint (config.json with e.g.
``Qwen2_5_VLForConditionalGeneration`` / model_type ``qwen2_5_vl``, safetensors weights,
generation_config.json, tokenizer files, chat template, processor config), so
``from_pretrained``, ``mapo.models.load_processor`` and vLLM load it like any checkpoint.

Sizes (docs/facts.md, "CPU machines" and "Tiny VLM"): "tiny" is text hidden 128 x 2 layers with mrope_section
[4, 6, 6], vision depth 2 x hidden 64, patch 14, merge 2 (~0.8 M parameters); "10m" is a
~10 M-parameter variant for benchmarks. Images are resized to at most 56x56 pixels (64x64 for
Qwen3-VL's patch 16), i.e. at most 4x4 patches = 4 image tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mapo.atomic import build_dir
from mapo.models.families import get_family, transformers_class
from mapo.models.processor import image_only_processor_class
from mapo.models.tiny_tokenizer import SPECIAL_TOKENS, default_corpus, train_tiny_tokenizer

BUILDER_VERSION = 1  # bump when the build changes, to invalidate cached folders
UNKEYED_FAMILY = "qwen2_5_vl"  # its cache key and folder name omit the family (they predate it)


@dataclass(frozen=True)
class TinySpec:
    hidden: int  # text hidden size
    layers: int  # text decoder layers
    heads: int  # text attention heads; head_dim = hidden / heads must be 32 for mrope [4, 6, 6]
    kv_heads: int  # grouped-query key/value heads
    intermediate: int  # text MLP width
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vocab_size: int = 1024  # cap on the learned BPE vocabulary (special/added tokens come on top)


SIZES = {
    "tiny": TinySpec(128, 2, 4, 2, 384, 64, 2, 4, 256),
    "10m": TinySpec(256, 4, 8, 8, 2048, 128, 4, 8, 512),
}


def _spec(size: str) -> TinySpec:
    if size not in SIZES:
        raise ValueError(f"Unknown tiny model size {size!r}; known sizes: {sorted(SIZES)}")
    return SIZES[size]


def _resolve(values: dict, spec: TinySpec) -> dict:
    """A family's tiny config keys: a str names a TinySpec field, a callable maps the spec."""
    out = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = getattr(spec, value)
        elif callable(value):
            value = value(spec)
        out[key] = value
    return out


def tiny_config(spec: TinySpec, tokenizer, family: str):
    """A standard config of ``family`` (Qwen2_5_VLConfig by default) for ``spec`` whose token
    ids match ``tokenizer``."""
    fam = get_family(family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096,
        rope_parameters=dict(fam.tiny_rope),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **_resolve(fam.tiny_text, spec),
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        patch_size=fam.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=spec.hidden,
    )
    vision.update(_resolve(fam.tiny_vision, spec))
    return transformers_class(fam.config_class)(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def pixel_limits(family: str) -> tuple[int, int]:
    """The tiny processor's (min, max) pixels: 1 to 2 x 2 merged tokens a side (28-56 pixels
    for patch 14, 32-64 for patch 16)."""
    factor = get_family(family).patch_size * 2  # patch x spatial merge
    return factor * factor, (2 * factor) ** 2


def save_processor(tokenizer, out_dir: Path, family: str) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    fam = get_family(family)
    low, high = pixel_limits(family)
    extra = {} if fam.patch_size == 14 else {"patch_size": fam.patch_size}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, **extra)
    processor = image_only_processor_class(family)(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )
    processor.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)  # legacy preprocessor_config.json, as hub folders
    # Name the stock processor, and give it the video processor config it expects, so the
    # folder loads with AutoProcessor / vLLM wherever torchvision exists.
    config_path = out_dir / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = fam.processor_class
    video = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
    config["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", **video}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    if "processor_class" in tok_config:
        tok_config["processor_class"] = fam.processor_class
        tok_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")


def build_tiny_vlm(
    out_dir: str | os.PathLike,
    *,
    seed: int,  # model.seed, model.size, model.family (conf/model/tiny.yaml)
    size: str,
    family: str,
    corpus: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build the tiny VLM of ``family`` (weights from ``seed``, tokenizer trained on
    ``corpus``) and save it into ``out_dir``. ``corpus=None`` uses the synthetic tasks'
    prompts and answers."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to rebuild it.")
        shutil.rmtree(out)
    spec = _spec(size)
    corpus = list(default_corpus() if corpus is None else corpus)
    tokenizer = train_tiny_tokenizer(corpus, vocab_size=spec.vocab_size)
    config = tiny_config(spec, tokenizer, family)
    # fork_rng: building must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers_class(get_family(family).model_class)(config).to(torch.float32)
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot
    )
    model.save_pretrained(out)
    save_processor(tokenizer, out, family)
    return out


def default_cache_dir() -> Path:
    """$MAPO_CACHE_DIR, else ``.cache`` of the source checkout, else ~/.cache/mapo."""
    if env := os.environ.get("MAPO_CACHE_DIR"):
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return root / ".cache"
    return Path.home() / ".cache" / "mapo"


def _build_key(seed: int, size: str, corpus: list[str], family: str) -> str:
    payload = {"v": BUILDER_VERSION, "seed": seed, "spec": asdict(_spec(size)), "corpus": corpus}
    if family != UNKEYED_FAMILY:  # the family's tiny settings too: changing them rebuilds
        fam, spec = get_family(family), _spec(size)
        payload["family"] = family
        payload["family_config"] = {
            "patch_size": fam.patch_size,
            "rope": fam.tiny_rope,
            "text": _resolve(fam.tiny_text, spec),
            "vision": _resolve(fam.tiny_vision, spec),
        }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def tiny_model_path(
    cache_dir: str | os.PathLike | None,  # None: default_cache_dir()
    *,
    seed: int,  # model.seed, model.size, model.family (conf/model/tiny.yaml)
    size: str,
    family: str,
    corpus: Iterable[str] | None = None,
) -> Path:
    """The cached tiny model folder ``<cache>/tiny-vlm[-family][-size]-<hash>``, built on
    first use.

    The hash covers the seed, the size, the corpus, the family and BUILDER_VERSION. The folder is built in
    a temporary directory and renamed into place, so concurrent callers never see half a model.
    """
    corpus = list(default_corpus() if corpus is None else corpus)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = "tiny-vlm" if family == UNKEYED_FAMILY else f"tiny-vlm-{family}"
    name = name if size == "tiny" else f"{name}-{size}"
    final = cache / f"{name}-{_build_key(seed, size, corpus, family)}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        build_tiny_vlm(tmp, seed=seed, corpus=corpus, size=size, family=family, overwrite=True)

    build_dir(final, build, done=final.is_dir)
    return final
