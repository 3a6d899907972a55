"""Registry of dataset converters used by ``python -m mapo.data.prepare NAME``.

Each converter is ``fn(src: Path | None, out: Path, opts: PrepareOptions) -> Converted`` and
writes ``out/<split>.parquet`` in the schema of ``mapo.data.schema``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from mapo.data.sources.benchmarks import prepare_mathverse, prepare_mathvision, prepare_mathvista
from mapo.data.sources.common import Converted, PrepareOptions
from mapo.data.sources.conversations import prepare_emotion6, prepare_webemo
from mapo.data.sources.emoset import prepare_emoset
from mapo.data.sources.geo3k import prepare_geo3k
from mapo.data.synthetic import write_synthetic

Converter = Callable[[Path | None, Path, PrepareOptions], Converted]


@dataclass(frozen=True)
class Source:
    fn: Converter
    help: str
    needs_src: bool = True


REGISTRY: dict[str, Source] = {}


def register(name: str, fn: Converter, help: str, needs_src: bool = True) -> None:
    if name in REGISTRY and REGISTRY[name].fn is not fn:
        raise ValueError(f"A different converter is already registered as {name!r}")
    REGISTRY[name] = Source(fn, help, needs_src)


def _synthetic(name: str) -> Converter:
    def prepare(src: Path | None, out: Path, opts: PrepareOptions) -> Converted:
        kwargs = {"n_train": opts.n_train, "n_test": opts.n_test}
        paths = write_synthetic(
            name, out, seed=opts.seed, **{k: v for k, v in kwargs.items() if v is not None}
        )
        rows = {split: pq.read_metadata(p).num_rows for split, p in paths.items()}
        return Converted(paths=paths, skipped={s: Counter() for s in paths}, rows=rows)

    return prepare


register("geo3k", prepare_geo3k, "Geometry3K, hiyouga/geometry3k parquet layout")
register("emoset", prepare_emoset, "EmoSet-118K root (train/test.json + image/)")
register("mathvista", prepare_mathvista, "MathVista testmini parquet (AI4Math/MathVista)")
register("mathverse", prepare_mathverse, "MathVerse testmini parquet (AI4Math/MathVerse)")
register("mathvision", prepare_mathvision, "MathVision test/testmini (MathLLMs/MathVision)")
register("webemo", prepare_webemo, "WEBEmo conversations JSON (authors' eval file)")
register("emotion6", prepare_emotion6, "Emotion6 conversations JSON (authors' eval file)")
register("synth_emo", _synthetic("synth_emo"), "SynthEmo (no download)", needs_src=False)
register("synth_math", _synthetic("synth_math"), "SynthMath (no download)", needs_src=False)

__all__ = ["REGISTRY", "Converted", "PrepareOptions", "Source", "register"]
