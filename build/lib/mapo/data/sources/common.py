"""Helpers shared by the per-dataset converters in ``mapo.data.sources``."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.progress import track

from mapo.data.schema import validate_rows, write_rows

# "<image>", "<image1>", "<image 2>" placeholders: our messages carry images as content items.
_IMAGE_TOKEN = re.compile(r"<image\s*\d*>", re.IGNORECASE)


@dataclass
class PrepareOptions:
    """Options every converter receives (each uses the ones it needs)."""

    seed: int = 0  # sampling seed (EmoSet subsets, synthetic sets)
    n_train: int | None = None  # training rows; None = the converter's default
    n_test: int | None = None  # test rows; None = the converter's default; 0 = all
    labels: Sequence[str] | None = None  # allowed emotion labels (conversations JSON)
    images_root: Path | None = None  # where relative image paths resolve (JSON sources)
    on_bad_row: str = "error"  # "error" | "skip", as in load_split
    progress: bool = True  # show a Rich progress bar


@dataclass
class Converted:
    """What a converter wrote: {split: parquet path} and the rows dropped per reason."""

    paths: dict[str, Path]
    skipped: dict[str, Counter]
    rows: dict[str, int]


def strip_image_tokens(text: str) -> str:
    return _IMAGE_TOKEN.sub("", text).strip()


def letter(index: int) -> str:
    return chr(ord("A") + index)


def format_choices(options: Sequence[str]) -> str:
    """'Choices:\\n(A) x\\n(B) y' as MathVista's own queries write them."""
    return "Choices:\n" + "\n".join(f"({letter(i)}) {o}" for i, o in enumerate(options))


def image_entry(value: Any, base_dir: Path | None) -> dict[str, Any]:
    """An HF Image struct, a PIL image or a relative path as a schema image entry.

    Paths that do not exist are kept (bytes None) so that validation reports the row."""
    if isinstance(value, dict) and value.get("bytes"):
        return {"bytes": value["bytes"], "path": value.get("path")}
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        full = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
        data = full.read_bytes() if full.is_file() else None
        return {"bytes": data, "path": str(full)}
    if hasattr(value, "save"):  # a PIL image
        from mapo.data.schema import encode_image

        return encode_image(value)
    return {"bytes": None, "path": None}


def find_split_files(src: Path, split: str, names: Sequence[str] | None = None) -> list[Path]:
    """Parquet shards of one split under src: ``**/{split}-*.parquet`` (HF's data/ layout)
    or the exact file names in ``names``. Raises FileNotFoundError naming the patterns."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"--src {src} does not exist; point it at the raw download.")
    patterns = [f"{split}-*.parquet"] + list(names or [])
    files = sorted({p for pat in patterns for p in src.rglob(pat)})
    if not files:
        raise FileNotFoundError(
            f"No parquet file for split {split!r} under {src} (looked for "
            f"{', '.join('**/' + p for p in patterns)}). Download the dataset with its "
            "original layout (docs/data.md) and pass its root folder as --src."
        )
    return files


def read_parquet_rows(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {table.column_names}. This converter "
            "expects the original layout described in docs/data.md."
        )
    return table.to_pylist()


def convert(
    name: str,
    out: Path,
    splits: dict[str, list[tuple[str, list[dict[str, Any]]]]],
    to_row: Callable[[dict[str, Any]], dict[str, Any]],
    opts: PrepareOptions,
    base_dir: Path | None = None,
) -> Converted:
    """Convert raw records to schema rows, validate them per raw file (errors name that file
    and the record index), and write ``out/{split}.parquet``.

    splits: {split: [(origin file, raw records), ...]}.
    """
    result = Converted(paths={}, skipped={}, rows={})
    for split, parts in splits.items():
        rows: list[dict[str, Any]] = []
        skipped: Counter = Counter()
        for origin, records in parts:
            converted = _track(records, f"{name} {split}", opts.progress, to_row)
            kept, dropped = validate_rows(
                converted, origin=origin, on_bad_row=opts.on_bad_row, base_dir=base_dir
            )
            rows.extend(kept)
            skipped.update(dropped)
        result.paths[split] = write_rows(rows, Path(out) / f"{split}.parquet")
        result.skipped[split] = skipped
        result.rows[split] = len(rows)
    return result


def _track(records: list, description: str, show: bool, fn: Callable) -> Iterable[dict]:
    """Map fn over records, with a Rich progress bar when `show`."""
    items = track(records, description=description, transient=True) if show else records
    return [fn(r) for r in items]
