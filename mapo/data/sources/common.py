"""Helpers shared by the per-dataset converters in ``mapo.data.sources``."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.progress import track

from mapo.data.schema import BadRowError, validate_rows, write_rows

# "<image>", "<image1>", "<image 2>" placeholders: our messages carry images as content items.
_TOKEN_WITH_BLANKS = re.compile(r"[ \t]*<image\s*\d*>[ \t]*", re.IGNORECASE)


@dataclass
class PrepareOptions:
    """Options every converter receives (each uses the ones it needs)."""

    seed: int = 0  # sampling seed (EmoSet / WEBEmo subsets, synthetic sets)
    n_train: int | None = None  # training rows; None = the converter's default
    n_test: int | None = None  # test rows; None = the converter's default; 0 = all
    labels: Sequence[str] | None = None  # allowed emotion labels (WEBEmo / Emotion6)
    images_root: Path | None = None  # where relative image paths resolve (JSON / URL lists)
    on_bad_row: str = "error"  # "error" | "skip", as in load_split
    progress: bool = True  # show a Rich progress bar
    label_source: str = "folder"  # Emotion6: "folder" (the image's folder) | "argmax"
    label_level: int = 2  # WEBEmo: 1 (positive/negative), 2 (category.txt level 2), 3 (25)


@dataclass
class Converted:
    """What a converter wrote: {split: parquet path}, rows written, the rows dropped and the
    rows changed per reason, and notes (e.g. which label convention was used)."""

    paths: dict[str, Path]
    skipped: dict[str, Counter]
    rows: dict[str, int]
    changed: dict[str, Counter] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Record:
    """One raw record after conversion: the schema row (None when a documented rule drops it)
    and why it was changed (row kept) or dropped; ``index`` is its position in the raw file
    for error messages (default: its position in the record list)."""

    row: dict[str, Any] | None
    reasons: tuple[str, ...] = ()
    index: int | None = None


@dataclass
class RawFile:
    """The records read from one raw file; ``unit`` says what an index counts (row, line)."""

    origin: str
    records: list
    unit: str = "row"


def dropped(reason: str, index: int | None = None) -> Record:
    return Record(None, (reason,), index)


def bad_record(
    opts: PrepareOptions,
    origin: str,
    index: int,
    row_id,
    reason: str,
    detail: str,
    unit: str = "line",
) -> Record:
    """A raw record that cannot become a row: BadRowError, or dropped and counted (skip)."""
    if opts.on_bad_row == "error":
        raise BadRowError(origin, index, row_id, reason, detail, unit)
    return dropped(reason, index)


def subset(entries: list, n: int, seed: int, split: str) -> list:
    """A seeded uniform sample of n entries (all of them for n == 0), in file order."""
    if n == 0 or n >= len(entries):
        return entries
    rng = random.Random(f"{seed}-{split}")  # string seeds hash deterministically
    return [entries[i] for i in sorted(rng.sample(range(len(entries)), n))]


def strip_image_tokens(text: str) -> str:
    """Remove image placeholders and only the blanks they leave: "the ant <image1> walks" ->
    "the ant walks", "the ladybird <image3>." -> "the ladybird.", a line holding only tokens
    goes; whitespace elsewhere is kept as released."""
    lines = []
    for line in _TOKEN_WITH_BLANKS.sub("\0", text).split("\n"):
        had_token = "\0" in line
        line = re.sub(r"^\0+|\0+$", "", line)
        line = re.sub(r"\0+(?=[.,;:?!])", "", line)
        line = re.sub(r"\0+", " ", line)
        if not (had_token and not line.strip()):
            lines.append(line)
    return "\n".join(lines).strip()


def letter(index: int) -> str:
    return chr(ord("A") + index)


def placeholder_letters(options: Sequence[str]) -> bool:
    """True for options that are just their own letters (['A', 'B', ...]): the real options
    are drawn in the image. ['A', 'B', 'D', 'F', 'G'] (letters as answers) is not."""
    return [str(o).strip() for o in options] == [letter(i) for i in range(len(options))]


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
    splits: dict[str, list[RawFile]],
    to_row: Callable[[Any], dict[str, Any] | Record],
    opts: PrepareOptions,
    base_dir: Path | None = None,
) -> Converted:
    """Convert raw records to schema rows, validate them per raw file (errors name that file
    and the record's position), and write ``out/{split}.parquet``.

    ``to_row`` returns a row, or a ``Record`` saying why the row was changed or dropped; both
    are counted per reason (``Converted.changed`` counts only rows that were written).
    """
    result = Converted(paths={}, skipped={}, rows={})
    for split, files in splits.items():
        rows: list[dict[str, Any]] = []
        skipped, changed = Counter(), Counter()
        for raw in files:
            records = _track(raw.records, f"{name} {split}", opts.progress, to_row)
            batch, indices, reasons = [], [], {}
            for pos, rec in enumerate(records):
                rec = rec if isinstance(rec, Record) else Record(rec)
                if rec.row is None:
                    skipped.update(rec.reasons)
                    continue
                batch.append(rec.row)
                indices.append(pos if rec.index is None else rec.index)
                reasons.setdefault(str(rec.row.get("id")), rec.reasons)  # first of an id is kept
            kept, bad = validate_rows(
                batch,
                origin=raw.origin,
                on_bad_row=opts.on_bad_row,
                base_dir=base_dir,
                indices=indices,
                unit=raw.unit,
            )
            for row in kept:
                changed.update(reasons.get(row["id"], ()))
            rows.extend(kept)
            skipped.update(bad)
        result.paths[split] = write_rows(rows, Path(out) / f"{split}.parquet")
        result.skipped[split], result.changed[split] = skipped, changed
        result.rows[split] = len(rows)
    return result


def _track(records: list, description: str, show: bool, fn: Callable) -> list:
    """Map fn over records, with a Rich progress bar when `show`."""
    items = track(records, description=description, transient=True) if show else records
    return [fn(r) for r in items]
