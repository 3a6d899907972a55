"""Turn schema rows into chat prompts for the rollout engines.

Templates are plain text files (``mapo/data/templates/{math,emotion}.txt``) with the
placeholders ``{question}`` (the row's problem) and, for emotion, ``{labels}`` (the row's
choices joined by ", "). They are filled with ``str.replace``, not ``str.format``, because the
templates and the problems contain LaTeX braces (``\\boxed{}``, ``\\frac{1}{2}``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mapo.data.schema import decode_image

if TYPE_CHECKING:  # mapo.types imports torch; templates alone should not need it
    from mapo.types import Prompt

TEMPLATE_DIR = Path(__file__).parent / "templates"


def load_template(name_or_path: str | Path) -> str:
    """Template text by name ("math", "emotion") or from a file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TEMPLATE_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise FileNotFoundError(
            f"Prompt template {str(name_or_path)!r} not found: use one of {known} or a path "
            "to a text file containing {question} (and {labels} for emotion tasks)."
        )
    return path.read_text(encoding="utf-8").rstrip("\n")


def fill_template(template: str, row: dict[str, Any]) -> str:
    """The user text for one row: the template with {question} and {labels} filled in."""
    if "{question}" not in template:
        raise ValueError(f"Prompt template has no {{question}} placeholder: {template[:80]!r}")
    text = template.replace("{question}", row["problem"].strip())
    if "{labels}" in text:
        if not row.get("choices"):
            raise ValueError(
                f"Row {row.get('id')!r}: the template lists {{labels}} but the row has no "
                "`choices`; emotion rows must carry their allowed labels."
            )
        text = text.replace("{labels}", ", ".join(row["choices"]))
    return text


def build_messages(row: dict[str, Any], template: str | None = None) -> list[dict[str, Any]]:
    """Qwen2.5-VL chat messages: one user turn, an image slot per image, then the text.

    ``template`` is template text; None picks the file named after the row's task.
    """
    template = load_template(row["task"]) if template is None else template
    content: list[dict[str, Any]] = [{"type": "image"} for _ in row["images"]]
    content.append({"type": "text", "text": fill_template(template, row)})
    return [{"role": "user", "content": content}]


def resize_image(
    image: Image.Image, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Scale ``image`` so that width*height lies in [min_pixels, max_pixels], keeping the
    aspect ratio (at least 1 px per side). Images already in range are returned as they are."""
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    w, h = image.size
    area = w * h
    if max_pixels is not None and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    elif min_pixels is not None and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
        size = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
    else:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def to_prompt(
    row: dict[str, Any],
    processor: Any,
    template: str | None = None,
    *,
    min_pixels: int | None,  # data.min_pixels / data.max_pixels (conf/data/*.yaml)
    max_pixels: int | None,
) -> Prompt:
    """One schema row as a ``Prompt``: chat-templated text ending with the assistant header,
    and the decoded RGB images resized into [min_pixels, max_pixels] (None: no bound)."""
    from mapo.types import Prompt

    text = processor.apply_chat_template(
        build_messages(row, template), add_generation_prompt=True, tokenize=False
    )
    images = tuple(
        resize_image(decode_image(im), min_pixels=min_pixels, max_pixels=max_pixels)
        for im in row["images"]
    )
    return Prompt(
        uid=row["id"],
        text=text,
        images=images,
        answer=row["answer"],
        task=row["task"],
        source=row.get("source") or "",
    )


def count_prompt_tokens(prompt: Prompt, processor: Any) -> int:
    """Prompt length in tokens as the model sees it (image placeholders expanded)."""
    enc = processor(text=[prompt.text], images=list(prompt.images) or None, return_tensors="pt")
    return int(enc["input_ids"].shape[-1])


def filter_prompts_by_tokens(
    items: Sequence[Any], processor: Any, max_prompt_tokens: int, prompt_of: Any = None
) -> tuple[list[Any], int]:
    """Drop (never truncate) items whose prompt is longer than ``max_prompt_tokens``; returns
    (kept items, number dropped) so the caller can log the count. ``prompt_of(item)`` gives the
    Prompt of an item (dataset rows); by default the items are Prompts."""
    prompt_of = prompt_of or (lambda p: p)
    kept = [x for x in items if count_prompt_tokens(prompt_of(x), processor) <= max_prompt_tokens]
    return kept, len(items) - len(kept)
