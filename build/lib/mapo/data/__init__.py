"""Data: the on-disk schema, loaders, prompt templates, synthetic tasks, prepare scripts.

Public names are imported lazily: ``python -m mapo.data.prepare`` and the loaders stay light
(``datasets`` and ``mapo.rollout.base``, hence torch, are imported only where needed).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_split": "loader",
    "LoadedSplit": "loader",
    "BadRowError": "schema",
    "SchemaError": "schema",
    "validate_rows": "schema",
    "write_rows": "schema",
    "decode_image": "schema",
    "encode_image": "schema",
    "load_template": "prompts",
    "build_messages": "prompts",
    "to_prompt": "prompts",
    "resize_image": "prompts",
    "filter_prompts_by_tokens": "prompts",
    "generate": "synthetic",
    "write_synthetic": "synthetic",
    "tokenizer_corpus": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mapo.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mapo.data.{_EXPORTS[name]}"), name)
