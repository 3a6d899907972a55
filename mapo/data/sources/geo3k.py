"""Geometry3K in either published layout.

Hub parquet (``hiyouga/geometry3k``): ``data/{train,validation,test}-*.parquet`` with columns
images (list of {bytes, path}), problem, answer (the choice text); the current revision adds
id, choices, ground_truth (train 2101 / validation 300 / test 601). The earlier revision, the
one EasyR1 users have, lacks ``id``: rows then get ``{split}-{n}`` (n = position in the split,
shards in name order), counted as ``id_derived``. Problems start with "<image>".

Original release (lupantech/InterGPS, ``data/geometry3k``): ``{train,val,test}/<id>/data.json``
and ``img_diagram.png``; data.json has problem_text, choices (4), answer (a letter), id, ...
The answer becomes the choice text, as in the hub layout; ``val`` is written as ``validation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    RawFile,
    Record,
    convert,
    find_split_files,
    image_entry,
    read_parquet_rows,
    strip_image_tokens,
)
from mapo.data.sources.registry import register_source

SPLITS = ("train", "validation", "test")
COLUMNS = ("images", "problem", "answer")
FOLDER_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _hub_row(record: tuple[dict[str, Any], tuple[str, ...]]) -> Record:
    raw, reasons = record
    problem = raw.get("problem") or ""
    stripped = strip_image_tokens(problem)
    row = {
        "id": None if raw.get("id") is None else str(raw["id"]),
        "images": [image_entry(im, None) for im in raw.get("images") or []],
        "problem": stripped,
        "answer": raw.get("answer"),
        "choices": raw.get("choices"),
        "source": "geo3k",
        "task": "math",
    }
    if stripped != problem.strip():
        reasons = (*reasons, "image_tokens_removed")
    return Record(row, reasons)


def _hub_split(src: Path, split: str) -> list[RawFile]:
    """The split's shards as RawFiles of (raw row, change reasons)."""
    tables = [(str(f), read_parquet_rows(f, COLUMNS)) for f in find_split_files(src, split)]
    if all("id" in r for _, rows in tables for r in rows):
        return [RawFile(f, [(r, ()) for r in rows]) for f, rows in tables]
    files, n = [], 0  # the earlier revision has no ids: number the rows across the shards
    for f, rows in tables:
        files.append(
            RawFile(
                f, [({**r, "id": f"{split}-{n + i}"}, ("id_derived",)) for i, r in enumerate(rows)]
            )
        )
        n += len(rows)
    return files


def _folder_root(src: Path) -> Path | None:
    """The folder holding train/ val/ test/ problem folders (src or data/geometry3k below)."""
    for root in (src, src / "geometry3k", src / "data" / "geometry3k"):
        if any((root / s).is_dir() and any((root / s).glob("*/data.json")) for s in FOLDER_SPLITS):
            return root
    return None


def _folder_number(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (1 << 30, folder.name)


def _folder_row(folder: Path) -> Record:
    try:
        data = json.loads((folder / "data.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'data.json'} is not valid JSON ({err})") from None
    choices = [str(c) for c in data.get("choices") or []]
    letter = str(data.get("answer") or "").strip().upper()
    index = ord(letter) - ord("A") if len(letter) == 1 else -1
    row = {
        "id": str(data.get("id", folder.name)),
        "images": [image_entry("img_diagram.png", folder)],
        "problem": data.get("problem_text"),
        "answer": choices[index] if 0 <= index < len(choices) else None,  # missing_answer
        "choices": choices or None,
        "source": "geo3k",
        "task": "math",
    }
    number = int(folder.name) if folder.name.isdigit() else None  # messages name the folder
    return Record(row, ("answer_letter_to_choice",), number)


def _folder_splits(root: Path) -> dict[str, list[RawFile]]:
    splits = {}
    for name, split in FOLDER_SPLITS.items():
        folders = sorted((p.parent for p in (root / name).glob("*/data.json")), key=_folder_number)
        if not folders:
            raise FileNotFoundError(
                f"{root / name}: no <id>/data.json problem folders; the Geometry3K release has "
                "train/, val/ and test/ (docs/data.md)."
            )
        splits[split] = [RawFile(str(root / name), folders, unit="folder")]
    return splits


@register_source("geo3k", help="Geometry3K: hiyouga/geometry3k parquet or InterGPS folders")
def prepare_geo3k(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    src = Path(src)
    root = _folder_root(src) if src.is_dir() else None
    if root is not None and not list(src.rglob("*.parquet")):
        return convert("geo3k", out, _folder_splits(root), _folder_row, opts)
    splits = {split: _hub_split(src, split) for split in SPLITS}
    result = convert("geo3k", out, splits, _hub_row, opts)
    if any(result.changed[s]["id_derived"] for s in SPLITS):
        result.notes.append("no `id` column (earlier hub revision): ids are '<split>-<position>'")
    return result
