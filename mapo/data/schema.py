"""The one on-disk schema every dataset uses, synthetic or real, and its row validator.

A split is a parquet file (or an HF ``save_to_disk`` folder) with the columns

    id       str              unique within the split; rollout groups are keyed by it
    images   list[{bytes, path}]  encoded images (PNG for synthetic data, the original
                              JPEG/PNG bytes for real data), like HF's ``List(Image())``
    problem  str              the question, without image placeholders
    answer   str              the gold answer (for multiple choice: what the prompt asks for;
                              several accepted answers are listed one per line)
    choices  list[str] | null optional; required for emotion rows (the allowed labels)
    source   str              dataset name, for per-dataset metrics
    task     str              the data's kind, "math" or "emotion" (the reward is data.task)

``write_rows`` writes that schema (with HF feature metadata, so ``datasets`` decodes the
images); ``validate_rows`` checks rows and either raises ``BadRowError`` naming the file, row
index, id and fix, or drops and counts them (``on_bad_row="skip"``).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mapo.data.coerce import text_field
from mapo.types import MAX_ANSWER_CHARS

log = logging.getLogger(__name__)

TASKS = ("math", "emotion")
REQUIRED_COLUMNS = ("id", "images", "problem", "answer", "source", "task")
OPTIONAL_COLUMNS = ("choices",)
COLUMNS = REQUIRED_COLUMNS[:4] + OPTIONAL_COLUMNS + REQUIRED_COLUMNS[4:]
ON_BAD_ROW = ("error", "skip")

# EmoSet-118K's 8 labels in its info.json order (label2idx).
EMOSET_LABELS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
)
EMOTION6_LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
# The question of emotion rows whose source has none (EmoSet, SynthEmo).
EMOTION_QUESTION = "Which emotion does this image evoke?"

ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("source", pa.string()),
        ("task", pa.string()),
    ]
)
# What `datasets` reads back from parquet metadata: images decode to PIL with load_dataset.
_STR = {"dtype": "string", "_type": "Value"}
HF_FEATURES = {
    "id": _STR,
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "problem": _STR,
    "answer": _STR,
    "choices": {"feature": _STR, "_type": "List"},
    "source": _STR,
    "task": _STR,
}

# Wrong column names we have seen in raw datasets -> the schema name to use instead.
COLUMN_HINTS = {
    "image": "images",
    "decoded_image": "images",
    "question": "problem",
    "query": "problem",
    "query_cot": "problem",
    "options": "choices",
    "label": "answer",
    "emotion": "answer",
    "pid": "id",
}

# The Qwen2-VL processor's smart_resize refuses an image whose long side is over 200 times its
# short side, with its own error in the middle of a step.
MAX_ASPECT_RATIO = 200
# A special token of the chat template (`<|im_end|>`, `<|image_pad|>`, `<|vision_start|>`, ...):
# in a row's text the tokenizer reads it as that token, not as characters.
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")

# reason -> how to fix it (the tail of every BadRowError message).
FIXES = {
    "missing_id": "give every row a non-empty string `id`",
    "duplicate_id": "ids must be unique within a split (rollout groups are keyed by them)",
    "missing_image": "store encoded image bytes in images[*].bytes (or a readable images[*].path)",
    "corrupt_image": "re-encode the image as PNG/JPEG or re-run `python -m mapo.data.prepare`",
    "empty_problem": "`problem` must be a non-empty string",
    "missing_answer": "`answer` must be a non-empty string",
    "bad_task": f"`task` must be one of {list(TASKS)}",
    "missing_choices": "emotion rows must list their allowed labels in `choices`",
    "unknown_label": "the answer of an emotion row must be one of its `choices`",
    "malformed_line": "the line must have the columns of the published layout (docs/data.md)",
    "unknown_label_index": "the label index must name a line of the release's category file",
    "bad_type": "store id/problem/answer/source/task as UTF-8 strings and choices as a list of "
    "strings (decode binary columns, unwrap list-valued answers) and re-write the parquet",
    "answer_too_long": f"the reward grades at most {MAX_ANSWER_CHARS} characters of an answer; "
    "shorten the gold answer",
    "control_token": "remove the chat/vision control token from the text: the prompt template "
    "adds those itself, and inside a problem they are read as control tokens (a turn ends there, "
    "or an image placeholder has no image)",
    "bad_aspect_ratio": f"crop or pad the image to a width/height ratio of at most {MAX_ASPECT_RATIO}"
    " (the Qwen2-VL processor refuses larger ones)",
    "image_too_large": "downscale the image (data.max_pixels resizes it for the model anyway) "
    "or raise data.max_image_pixels",
}
SKIP_HINT = "set data.on_bad_row=skip to drop such rows"


class SchemaError(ValueError):
    """A split whose columns do not follow the schema."""


class BadRowError(ValueError):
    """One row that breaks the schema; the message names file, row index, id and the fix."""

    def __init__(
        self, origin: str, index: int, row_id: Any, reason: str, detail: str, unit: str = "row"
    ):
        self.origin, self.index, self.row_id, self.reason = origin, index, row_id, reason
        super().__init__(
            f"{origin}: {unit} {index} (id={row_id!r}): {detail}. "
            f"Fix: {FIXES[reason]}, or {SKIP_HINT}."
        )


def encode_image(image: Image.Image, fmt: str = "PNG", **save_kwargs: Any) -> dict[str, Any]:
    """A PIL image as a schema image entry ``{"bytes", "path"}``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return {"bytes": buf.getvalue(), "path": None}


def decode_image(entry: dict[str, Any] | Image.Image) -> Image.Image:
    """A schema image entry (or a PIL image) as a loaded RGB PIL image."""
    if isinstance(entry, Image.Image):
        return _to_rgb(entry)
    with Image.open(io.BytesIO(entry["bytes"])) as im:
        return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with 16-bit and 32-bit grayscale scaled down: Pillow's own convert("RGB") clips
    every value over 255, so a 16-bit grayscale PNG became an all-white image."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im.convert("RGB")
    import numpy as np

    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or (a.size and a.max() > 255):  # 16-bit data: 0..65535
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")


def check_columns(names: Iterable[str], origin: str) -> None:
    """Raise SchemaError naming the missing columns and the likely renames."""
    names = list(names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if not missing:
        return
    renames = [f"{n!r} -> {COLUMN_HINTS[n]!r}" for n in names if COLUMN_HINTS.get(n) in missing]
    hint = f" Rename {', '.join(renames)}." if renames else ""
    raise SchemaError(
        f"{origin}: missing column(s) {missing}; found {names}. Expected the schema "
        f"{list(COLUMNS)} (see mapo/data/schema.py).{hint} Raw datasets must be converted "
        "first: `python -m mapo.data.prepare NAME --src RAW --out DIR` (docs/data.md)."
    )


def _image_bytes(entry: Any, base_dir: Path | None) -> bytes | None:
    """The encoded bytes of one image entry, read from its path when bytes are absent. An
    entry may also be a plain path string (how some datasets store images)."""
    if isinstance(entry, Image.Image):
        return encode_image(entry)["bytes"]
    if isinstance(entry, str):
        entry = {"bytes": None, "path": entry}
    if not isinstance(entry, dict):
        return None
    if entry.get("bytes"):
        return entry["bytes"]
    path = entry.get("path")
    if not path:
        return None
    candidate = Path(path)
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    return candidate.read_bytes() if candidate.is_file() else None


def _image_problem(data: bytes, max_image_pixels: int | None) -> tuple[str, str]:
    """("", "") for an image that decodes within the pixel cap, else (reason, detail)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header, before any pixel is decoded
            if max(w, h) > MAX_ASPECT_RATIO * max(1, min(w, h)):
                return "bad_aspect_ratio", f"{w}x{h}, a ratio over {MAX_ASPECT_RATIO}"
            if max_image_pixels is not None and w * h > max_image_pixels:
                return "image_too_large", (
                    f"{w}x{h} = {w * h / 1e6:.0f} M pixels, over data.max_image_pixels="
                    f"{max_image_pixels} (a decompression bomb, or a scan far larger than needed)"
                )
            # JPEG draft mode decodes at 1/8 scale: ~10x cheaper, still reads the whole stream,
            # so truncated files fail here instead of in the middle of a training step.
            im.draft("RGB", (64, 64))
            im.load()
        return "", ""
    except Image.DecompressionBombError as err:  # Pillow's own cap, hit before ours can be
        return "image_too_large", f"a decompression bomb ({err})"
    except Exception as err:
        return "corrupt_image", f"cannot be decoded ({type(err).__name__}: {err})"


def _text_fields(row: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The text fields of a row, strictly (mapo/data/coerce.py); the first problem found."""
    out: dict[str, Any] = {}
    problem = ""
    for name in ("id", "problem", "answer", "source", "task"):
        out[name], why = text_field(row, name)
        problem = problem or why
    choices = row.get("choices")
    out["choices"] = None
    if choices is not None:
        if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
            problem = problem or f"`choices` must be a list of strings, got {choices!r:.60}"
        else:
            out["choices"] = list(choices)
    out["source"] = out["source"] or ""
    return out, problem


def _check_row(
    row: dict[str, Any], base_dir: Path | None, max_image_pixels: int | None = None
) -> tuple[dict[str, Any], str, str]:
    """Normalise one row; returns (row, reason, detail) with reason "" when the row is fine."""
    out, problem = _text_fields(row)
    out["images"] = []
    if problem:
        return out, "bad_type", problem
    if not out["id"]:
        return out, "missing_id", "empty id"
    if out["task"] not in TASKS:
        return out, "bad_task", f"task {out['task']!r} is not one of {list(TASKS)}"
    if not out["problem"] or not out["problem"].strip():
        return out, "empty_problem", "empty problem"
    if out["answer"] is None or not out["answer"].strip():
        return out, "missing_answer", "missing answer"
    for name in ("problem", "answer"):
        if token := CONTROL_TOKEN.search(out[name]):
            return out, "control_token", f"`{name}` holds the control token {token.group()}"
    if len(out["answer"]) > MAX_ANSWER_CHARS:
        return (
            out,
            "answer_too_long",
            (
                f"answer of {len(out['answer'])} characters, over the grader's cap of "
                f"{MAX_ANSWER_CHARS}: no completion could ever score on it"
            ),
        )
    if out["task"] == "emotion":
        if not out["choices"]:
            return out, "missing_choices", "emotion row without `choices`"
        allowed = {c.strip().lower() for c in out["choices"]}
        if out["answer"].strip().lower() not in allowed:
            return out, "unknown_label", f"label {out['answer']!r} not in {out['choices']}"
    images = row.get("images")
    if isinstance(images, str):  # one path instead of a list of entries
        images = [images]
    if not images:
        return out, "missing_image", "no image"
    for k, entry in enumerate(images):
        data = _image_bytes(entry, base_dir)
        if data is None:
            return out, "missing_image", f"image {k} has no bytes and no readable path"
        reason, detail = _image_problem(data, max_image_pixels)
        if reason:
            return out, reason, f"image {k}: {detail}"
        path = (
            entry.get("path")
            if isinstance(entry, dict)
            else entry
            if isinstance(entry, str)
            else None
        )
        out["images"].append({"bytes": data, "path": path})
    return out, "", ""


def validate_rows(
    rows: Iterable[dict[str, Any]],
    *,
    origin: str,
    on_bad_row: str,  # data.on_bad_row, or the prepare CLI's --on-bad-row
    max_prompt_chars: int | None = None,
    base_dir: str | Path | None = None,
    indices: list[int] | None = None,
    unit: str = "row",
    max_image_pixels: int | None = None,
) -> tuple[list[dict[str, Any]], Counter]:
    """Check and normalise rows; returns (kept rows, Counter of dropped rows by reason).

    ``origin`` names the file in error messages, ``indices[k]`` the position of row k in that
    file (default k; converters pass it when rows were dropped before validation) and ``unit``
    what the position counts ("row", or "line" for text files). Rows whose problem is longer
    than ``max_prompt_chars`` are always dropped and counted as "too_long" (never truncated).
    Relative image paths are resolved against ``base_dir``. Images over ``max_image_pixels``
    (width x height, read from the header) are bad rows ("image_too_large").
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    base = Path(base_dir) if base_dir is not None else None
    kept: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    seen: set[str] = set()
    for index, row in enumerate(rows):
        out, reason, detail = _check_row(row, base, max_image_pixels)
        if not reason and out["id"] in seen:
            reason, detail = "duplicate_id", f"id {out['id']!r} appears more than once"
        if reason:
            if on_bad_row == "error":
                where = indices[index] if indices is not None else index
                raise BadRowError(origin, where, out["id"], reason, detail, unit)
            skipped[reason] += 1
            continue
        if max_prompt_chars is not None and len(out["problem"]) > max_prompt_chars:
            skipped["too_long"] += 1
            continue
        seen.add(out["id"])
        kept.append(out)
    if skipped:
        log.warning("%s: dropped %d row(s): %s", origin, sum(skipped.values()), dict(skipped))
    return kept, skipped


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (schema dicts) as an arrow table carrying the HF feature metadata."""
    columns = {name: [row.get(name) for row in rows] for name in ARROW_SCHEMA.names}
    columns["images"] = [
        [{"bytes": im.get("bytes"), "path": im.get("path")} for im in imgs]
        for imgs in columns["images"]
    ]
    meta = {b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()}
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA.with_metadata(meta))


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write schema rows to a parquet file (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), path)
    return path
