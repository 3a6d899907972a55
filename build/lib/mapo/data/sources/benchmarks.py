"""Out-of-domain math benchmarks in their hub layouts (evaluation only).

MathVista (AI4Math/MathVista): ``data/testmini-*.parquet``; pid, query, choices, answer,
    question_type, decoded_image (or image: a path inside images.zip). ``query`` is the
    official prompt; for multiple choice it asks for the option letter, so the answer is
    stored as that letter (the raw answer is the choice text).
MathVerse (AI4Math/MathVerse): ``testmini.parquet``; sample_index, query_cot, answer
    (a letter for multiple choice; query_cot lists the options), image.
MathVision (MathLLMs/MathVision): ``data/{test,testmini}-*.parquet``; id, question, options,
    answer (a letter when options exist), decoded_image (or image path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    convert,
    find_split_files,
    format_choices,
    image_entry,
    letter,
    read_parquet_rows,
    strip_image_tokens,
)


def _images(raw: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """decoded_image when it carries bytes, else the image path relative to the download."""
    decoded = raw.get("decoded_image")
    if isinstance(decoded, dict) and decoded.get("bytes"):
        return [image_entry(decoded, None)]
    image = raw.get("image")
    return [image_entry(image, base_dir)] if image else []


def _mathvista_row(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    choices = raw.get("choices") or None
    answer = raw.get("answer")
    if raw.get("question_type") == "multi_choice" and choices and answer in choices:
        answer = letter(choices.index(answer))
    return {
        "id": raw.get("pid"),
        "images": _images(raw, base_dir),
        "problem": raw.get("query"),
        "answer": answer,
        "choices": choices,
        "source": "mathvista",
        "task": "math",
    }


def _mathverse_row(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    return {
        "id": None if raw.get("sample_index") is None else str(raw["sample_index"]),
        "images": _images(raw, base_dir),
        "problem": raw.get("query_cot"),
        "answer": raw.get("answer"),
        "choices": None,
        "source": "mathverse",
        "task": "math",
    }


def _mathvision_row(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    options = raw.get("options") or None
    problem = strip_image_tokens(raw.get("question") or "")
    if options:
        problem = f"{problem}\n{format_choices(options)}"
    return {
        "id": None if raw.get("id") is None else str(raw["id"]),
        "images": _images(raw, base_dir),
        "problem": problem,
        "answer": raw.get("answer"),
        "choices": options,
        "source": "mathvision",
        "task": "math",
    }


def _prepare(name, src, out, opts, splits, row_fn, required, names=None) -> Converted:
    """Convert every split found under src (at least one must exist)."""
    src = Path(src)
    parts, errors = {}, []
    for split in splits:
        try:
            files = find_split_files(src, split, names)
        except FileNotFoundError as err:
            errors.append(err)
            continue
        parts[split] = [(str(f), read_parquet_rows(f, required)) for f in files]
    if not parts:
        raise errors[0]
    return convert(name, out, parts, lambda raw: row_fn(raw, src), opts, base_dir=src)


def prepare_mathvista(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("pid", "query", "answer")
    return _prepare("mathvista", src, out, opts, ["testmini"], _mathvista_row, required)


def prepare_mathverse(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("sample_index", "query_cot", "answer", "image")
    names = ["testmini.parquet"]
    return _prepare("mathverse", src, out, opts, ["testmini"], _mathverse_row, required, names)


def prepare_mathvision(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("id", "question", "answer")
    return _prepare("mathvision", src, out, opts, ["test", "testmini"], _mathvision_row, required)
