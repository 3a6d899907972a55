"""Dataset converters used by ``python -m mapo.data.prepare NAME``, one module per source.

Each converter is ``fn(src: Path | None, out: Path, opts: PrepareOptions) -> Converted``, writes
``out/<split>.parquet`` in the schema of ``mapo.data.schema`` and registers itself with
``@register_source`` (``registry.py``); every module here is found without an import list.
"""

from __future__ import annotations

from mapo.data.sources.common import Converted, PrepareOptions
from mapo.data.sources.registry import REGISTRY, Converter, Source, register, register_source

__all__ = [
    "REGISTRY",
    "Converted",
    "Converter",
    "PrepareOptions",
    "Source",
    "register",
    "register_source",
]
