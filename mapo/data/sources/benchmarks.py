"""Out-of-domain math benchmarks in their hub layouts (evaluation only).

MathVista (AI4Math/MathVista): ``data/testmini-*.parquet``; pid, query, choices, answer,
    question_type, decoded_image (or image: a path inside images.zip). ``query`` is the
    official prompt; for multiple choice it asks for the option letter, so the answer is
    stored as that letter (the raw answer is the choice text), or as every letter whose
    choice is that text, one per line, when the text is listed twice.
MathVerse (AI4Math/MathVerse): ``testmini.parquet``; sample_index, query_cot, answer
    (a letter for multiple choice; query_cot lists the options), image.
MathVision: the hub parquet (MathLLMs/MathVision, ``data/{test,testmini}-*.parquet``) or the
    GitHub release (mathllm/MATH-V: ``data/{test,testmini}.jsonl`` + ``images/``); id, question,
    options, image, answer (a letter when options exist), decoded_image (hub only). The problem
    text is rewritten as ``mathvision_problem`` says; each rewrite is counted by reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    RawFile,
    Record,
    convert,
    find_split_files,
    format_choices,
    image_entry,
    letter,
    placeholder_letters,
    read_parquet_rows,
    strip_image_tokens,
)
from mapo.data.sources.registry import register_source


def _images(raw: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """decoded_image when it carries bytes, else the image path relative to the download."""
    decoded = raw.get("decoded_image")
    if isinstance(decoded, dict) and decoded.get("bytes"):
        return [image_entry(decoded, None)]
    image = raw.get("image")
    return [image_entry(image, base_dir)] if image else []


def _mathvista_row(raw: dict[str, Any], base_dir: Path) -> Record:
    choices = raw.get("choices") or None
    answer, reasons = raw.get("answer"), ()
    if raw.get("question_type") == "multi_choice" and choices and answer in choices:
        # every letter whose choice is the answer text (testmini has ['9', '12', '18', '18'] with
        # answer '18'), one per line: the math reward accepts any of them (accepted_answers)
        letters = [letter(i) for i, c in enumerate(choices) if c == answer]
        answer = "\n".join(letters)
        reasons = ("answer_text_to_letter",) + (("several_letters",) if len(letters) > 1 else ())
    row = {
        "id": raw.get("pid"),
        "images": _images(raw, base_dir),
        "problem": raw.get("query"),
        "answer": answer,
        "choices": choices,
        "source": "mathvista",
        "task": "math",
    }
    return Record(row, reasons)


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


# A question that is only an image reference ("<image1>", one test row) asks what the image
# shows; the image itself is the question.
IMAGE_ONLY_QUESTION = "Answer the question shown in the image."
SEVERAL_FIGURES = "The figures this question refers to are all shown in the one image provided."
OPTIONS_IN_IMAGE = "The options {letters} are shown in the image; answer with the option's letter."


def mathvision_problem(question: str, options: list[str]) -> tuple[str, tuple[str, ...]]:
    """The problem text of one MathVision row, and the reasons it differs from the question.

    Image tokens are removed (their blanks collapsed); a question naming several ``<imageN>``
    gets a note that the one released image holds all of them; options that are only their own
    letters (``['A'..'E']``: the options are drawn in the image) are not listed as
    "(A) A (B) B" but named; an image-only question gets ``IMAGE_ONLY_QUESTION``."""
    text = strip_image_tokens(question)
    reasons = ["image_tokens_removed"] if text != question.strip() else []
    if not text:
        text, reasons = IMAGE_ONLY_QUESTION, [*reasons, "image_only_question"]
    figures = {int(n or 1) for n in re.findall(r"<image\s*(\d*)>", question, re.IGNORECASE)}
    if len(figures) > 1 or max(figures, default=1) > 1:
        text, reasons = f"{text}\n{SEVERAL_FIGURES}", [*reasons, "several_figures_one_image"]
    if options and placeholder_letters(options):
        text = f"{text}\n{OPTIONS_IN_IMAGE.format(letters=', '.join(options))}"
        reasons.append("options_in_image")
    elif options:
        text = f"{text}\n{format_choices(options)}"
    return text, tuple(reasons)


def _mathvision_row(raw: dict[str, Any], base_dir: Path) -> Record:
    options = list(raw.get("options") or [])
    problem, reasons = mathvision_problem(raw.get("question") or "", options)
    row = {
        "id": None if raw.get("id") is None else str(raw["id"]),
        "images": _images(raw, base_dir),
        "problem": problem,
        "answer": raw.get("answer"),
        "choices": options or None,
        "source": "mathvision",
        "task": "math",
    }
    return Record(row, reasons)


def _split_parts(src: Path, split: str, required, names=None, jsonl: bool = False) -> list:
    """RawFiles of one split: hub parquet shards, else (jsonl=True) ``**/{split}.jsonl``."""
    try:
        files = find_split_files(src, split, names)
        return [RawFile(str(f), read_parquet_rows(f, required)) for f in files]
    except FileNotFoundError:
        found = sorted(src.rglob(f"{split}.jsonl")) if jsonl else []
        if not found:
            raise
    return [RawFile(str(f), read_jsonl_rows(f, required)) for f in found]


def read_jsonl_rows(path: Path, required) -> list[dict[str, Any]]:
    """One JSON object per line (rows are numbered from 0, like parquet rows, in messages)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: row {n} is not a JSON object ({err})") from None
        missing = [c for c in required if c not in rows[-1]]
        if missing:
            raise ValueError(
                f"{path}: row {n} lacks field(s) {missing}; expected the "
                "mathllm/MATH-V layout described in docs/data.md."
            )
    return rows


def _prepare(name, src, out, opts, splits, row_fn, required, names=None, jsonl=False):
    """Convert every split found under src (at least one must exist)."""
    src = Path(src)
    parts, errors = {}, []
    for split in splits:
        try:
            parts[split] = _split_parts(src, split, required, names, jsonl)
        except FileNotFoundError as err:
            errors.append(err)
    if not parts:
        raise errors[0]
    return convert(name, out, parts, lambda raw: row_fn(raw, src), opts, base_dir=src)


@register_source("mathvista", help="MathVista testmini parquet (AI4Math/MathVista)")
def prepare_mathvista(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("pid", "query", "answer")
    return _prepare("mathvista", src, out, opts, ["testmini"], _mathvista_row, required)


@register_source("mathverse", help="MathVerse testmini parquet (AI4Math/MathVerse)")
def prepare_mathverse(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("sample_index", "query_cot", "answer", "image")
    names = ["testmini.parquet"]
    return _prepare("mathverse", src, out, opts, ["testmini"], _mathverse_row, required, names)


@register_source("mathvision", help="MathVision: hub parquet or MATH-V data/*.jsonl")
def prepare_mathvision(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    required = ("id", "question", "answer")
    splits = ["test", "testmini"]
    return _prepare("mathvision", src, out, opts, splits, _mathvision_row, required, jsonl=True)
