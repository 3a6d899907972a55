"""Load one split in the schema of ``mapo.data.schema`` from wherever it lives.

``load_split(spec)`` accepts
  - a parquet file:               ``data/geo3k/train.parquet``
  - a parquet glob:               ``data/geo3k/train-*.parquet``
  - an HF ``save_to_disk`` folder: ``data/geo3k_disk/train`` (a DatasetDict's split folder)
  - a hub name:                   ``owner/name`` or ``owner/name:split`` (only when
    HF_HUB_OFFLINE is unset; the hub dataset must already follow the schema)
and returns a ``LoadedSplit``: the validated rows plus the counts of dropped rows.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo.data.coerce import table_to_rows
from mapo.data.schema import check_columns, validate_rows

_GLOB_CHARS = re.compile(r"[*?\[]")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


@dataclass
class LoadedSplit:
    """Validated rows of one split (a list-like, map-style dataset of schema dicts)."""

    rows: list[dict[str, Any]]
    skipped: Counter = field(default_factory=Counter)  # dropped rows by reason
    files: list[str] = field(default_factory=list)  # where the rows came from

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no")


def _not_found(spec: str, why: str) -> FileNotFoundError:
    from mapo.data.sources import REGISTRY  # lazy: sources import this package's modules

    return FileNotFoundError(
        f"Data split not found: {spec!r} ({why}). Give a parquet file, a parquet glob or a "
        "save_to_disk folder in the schema of mapo/data/schema.py. To build one from a raw "
        "download run `python -m mapo.data.prepare NAME --src RAW --out DIR` "
        f"(NAME one of {sorted(REGISTRY)}), then set data.train=DIR/train.parquet; the "
        "synthetic sets need no download: `python -m mapo.data.prepare synth_emo --out DIR`. "
        "See docs/data.md."
    )


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    check_columns(table.column_names, str(path))
    return table_to_rows(table)


def _read_dataset(ds: Any, origin: str) -> list[dict[str, Any]]:
    """Rows of an HF Dataset with images as raw {bytes, path} (no PIL decode round trip)."""
    check_columns(ds.column_names, origin)
    table: pa.Table = ds.with_format("arrow")[:]
    return table_to_rows(table)


def _read_save_to_disk(path: Path) -> list[dict[str, Any]]:
    import datasets  # lazy: importing datasets costs ~1 s

    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(
            f"{path} is a DatasetDict folder; point at one split instead, e.g. "
            f"{path / (splits[0] if splits else 'train')} (splits here: {splits})"
        )
    return _read_dataset(datasets.load_from_disk(str(path)), str(path))


def _read_hub(spec: str) -> list[dict[str, Any]]:
    import datasets

    name, _, split = spec.partition(":")
    ds = datasets.load_dataset(name, split=split or "train")
    return _read_dataset(ds, f"hub:{spec}")


def _sources(spec: str) -> list[tuple[str, Path | None]]:
    """[(origin, base_dir)] of the files or folders a spec names; raises if none exist."""
    if _GLOB_CHARS.search(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise _not_found(spec, "the glob matches no file")
        return [(m, Path(m).parent) for m in matches]
    path = Path(spec).expanduser()
    if path.is_file():
        return [(str(path), path.parent)]
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return [(str(path), path)]
        parquets = sorted(p.name for p in path.glob("*.parquet"))
        if parquets:
            raise _not_found(spec, f"a folder, not a split; name one of its files {parquets}")
        raise _not_found(spec, "the folder holds no parquet file and no save_to_disk dataset")
    if _HUB_NAME.match(spec) and not spec.endswith(".parquet"):
        if _hub_offline():
            raise _not_found(spec, "no such local path, and HF_HUB_OFFLINE is set")
        return [(f"hub:{spec}", None)]
    raise _not_found(spec, "no such file or folder")


def _read(origin: str) -> list[dict[str, Any]]:
    if origin.startswith("hub:"):
        return _read_hub(origin[4:])
    path = Path(origin)
    return _read_save_to_disk(path) if path.is_dir() else _read_parquet(path)


def load_split(
    spec: str | os.PathLike,
    *,
    on_bad_row: str,  # data.on_bad_row
    max_prompt_chars: int | None = None,
    max_image_pixels: int | None = None,
) -> LoadedSplit:
    """Load and validate one split.

    on_bad_row: "error" raises ``BadRowError`` naming file, row index, id and the fix;
        "skip" drops such rows and counts them by reason in ``LoadedSplit.skipped``.
    max_prompt_chars: rows whose problem is longer are dropped and counted as "too_long"
        (prompts are never truncated).
    max_image_pixels: images with more pixels (width x height) are bad rows.
    """
    spec = os.fspath(spec)
    out = LoadedSplit(rows=[])
    for origin, base_dir in _sources(spec):
        rows, skipped = validate_rows(
            _read(origin),
            origin=origin,
            on_bad_row=on_bad_row,
            max_prompt_chars=max_prompt_chars,
            base_dir=base_dir,
            max_image_pixels=max_image_pixels,
        )
        out.rows.extend(rows)
        out.skipped.update(skipped)
        out.files.append(origin)
    _check_unique_ids(out)
    return out


def require_rows(split: LoadedSplit, what: str, spec: str) -> None:
    """Raise ValueError if a split has no usable row, saying whether it was empty or every row
    was dropped (and why), instead of failing later on a misleading setting."""
    if split.rows:
        return
    if split.skipped:
        why = (
            f"all {split.num_skipped} rows were dropped as bad rows {dict(split.skipped)} "
            "(data.on_bad_row=skip); set data.on_bad_row=error to see the first one with its "
            "row number and fix"
        )
    else:
        why = "it has no rows; point it at a non-empty split"
    raise ValueError(f"{what}={spec} has no usable rows: {why} (files: {split.files})")


def _check_unique_ids(split: LoadedSplit) -> None:
    """Ids must stay unique across the files of a glob too (groups are keyed by them)."""
    if len(split.files) < 2:
        return
    counts = Counter(row["id"] for row in split.rows)
    dupes = [i for i, n in counts.items() if n > 1]
    if dupes:
        raise ValueError(
            f"ids {dupes[:5]} appear in more than one of {split.files}; ids must be unique "
            "within a split. Prefix them per file (prepare does this) or load the files apart."
        )
