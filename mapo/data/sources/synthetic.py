"""The synthetic sets as dataset sources: generated here, no download."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from mapo.data.sources.common import Converted, PrepareOptions
from mapo.data.sources.registry import Converter, register
from mapo.data.synthetic import write_synthetic


def _synthetic(name: str) -> Converter:
    def prepare(src: Path | None, out: Path, opts: PrepareOptions) -> Converted:
        kwargs = {"n_train": opts.n_train, "n_test": opts.n_test}
        paths = write_synthetic(
            name, out, seed=opts.seed, **{k: v for k, v in kwargs.items() if v is not None}
        )
        rows = {split: pq.read_metadata(p).num_rows for split, p in paths.items()}
        empty = {s: Counter() for s in paths}
        changed = {s: Counter() for s in paths}
        return Converted(paths=paths, skipped=empty, rows=rows, changed=changed)

    return prepare


register("synth_emo", _synthetic("synth_emo"), "SynthEmo (no download)", needs_src=False)
register("synth_math", _synthetic("synth_math"), "SynthMath (no download)", needs_src=False)
