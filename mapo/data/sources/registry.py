"""The registry of dataset converters (``python -m mapo.data.prepare NAME``).

A converter module in this package registers itself with ``@register_source(name, help=...)``;
every module here is imported the first time ``REGISTRY`` is read, so a new dataset is a new
file (or a module named in the config's ``plugins``), never an edit to a central list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mapo.data.sources.common import Converted, PrepareOptions
from mapo.registry import Registry

Converter = Callable[[Path | None, Path, PrepareOptions], Converted]


@dataclass(frozen=True)
class Source:
    fn: Converter
    help: str
    needs_src: bool = True


REGISTRY: Registry[Source] = Registry("dataset", discover="mapo.data.sources")


def register(name: str, fn: Converter, help: str, needs_src: bool = True) -> None:
    """Register ``fn`` as dataset ``name``; a different converter under a taken name fails."""
    REGISTRY.add(name, Source(fn, help, needs_src))


def register_source(name: str, *, help: str, needs_src: bool = True):
    """Decorator form of `register`."""

    def decorator(fn: Converter) -> Converter:
        register(name, fn, help, needs_src)
        return fn

    return decorator
