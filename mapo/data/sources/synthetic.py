"""The synthetic sets as dataset sources: generated here, no download. Sizes not given are
``data.synthetic.n_train`` / ``n_test`` of conf/data/<name>.yaml, the sizes a run uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from mapo.data.sources.common import Converted, PrepareOptions
from mapo.data.sources.registry import Converter, register
from mapo.data.synthetic import write_synthetic

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def _synthetic(name: str) -> Converter:
    def prepare(src: Path | None, out: Path, opts: PrepareOptions) -> Converted:
        sizes = {"n_train": opts.n_train, "n_test": opts.n_test}
        run = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml").synthetic
        sizes = {k: run[k] if v is None else v for k, v in sizes.items()}
        paths = write_synthetic(name, out, seed=opts.seed, **sizes)
        rows = {split: pq.read_metadata(p).num_rows for split, p in paths.items()}
        empty = {s: Counter() for s in paths}
        changed = {s: Counter() for s in paths}
        return Converted(paths=paths, skipped=empty, rows=rows, changed=changed)

    return prepare


register("synth_emo", _synthetic("synth_emo"), "SynthEmo (no download)", needs_src=False)
register("synth_math", _synthetic("synth_math"), "SynthMath (no download)", needs_src=False)
