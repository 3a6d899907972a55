"""Geometry3K in the ``hiyouga/geometry3k`` layout: ``data/{train,validation,test}-*.parquet``
with columns images (list of {bytes, path}), problem, answer, id, choices (train 2101 /
validation 300 / test 601). The answer is the choice text; problems start with "<image>"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    convert,
    find_split_files,
    image_entry,
    read_parquet_rows,
    strip_image_tokens,
)

SPLITS = ("train", "validation", "test")
COLUMNS = ("images", "problem", "answer", "id")


def _row(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": None if raw.get("id") is None else str(raw["id"]),
        "images": [image_entry(im, None) for im in raw.get("images") or []],
        "problem": strip_image_tokens(raw.get("problem") or ""),
        "answer": raw.get("answer"),
        "choices": raw.get("choices"),
        "source": "geo3k",
        "task": "math",
    }


def prepare_geo3k(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    splits = {
        split: [(str(f), read_parquet_rows(f, COLUMNS)) for f in find_split_files(src, split)]
        for split in SPLITS
    }
    return convert("geo3k", out, splits, _row, opts)
