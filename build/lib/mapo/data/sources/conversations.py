"""WEBEmo and Emotion6 as the authors evaluated them: LLaVA-style ``conversations`` JSON

    [{"id": "...", "image": "relative/path.jpg",
      "conversations": [{"from": "human", "value": "<image>\\n<question>"},
                        {"from": "gpt", "value": "<label>"}]}, ...]

Image paths resolve against --images-root (default: the JSON file's folder). The human turn,
without its "<image>" placeholder, becomes the problem (EMOTION_QUESTION when it is empty);
the gpt turn, lower-cased, is the answer. The allowed labels (the rows' ``choices``) are
--labels, else Emotion6's six classes for emotion6; WEBEmo's label set is not pinned by a
public release, so for webemo without --labels it is the sorted set of answers in the file
(logged), and unknown labels can then not be detected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mapo.data.schema import EMOTION6_LABELS, EMOTION_QUESTION
from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    convert,
    image_entry,
    strip_image_tokens,
)

log = logging.getLogger(__name__)
DEFAULT_LABELS: dict[str, tuple[str, ...] | None] = {"emotion6": EMOTION6_LABELS, "webemo": None}


def _json_file(src: Path) -> Path:
    src = Path(src)
    if src.is_file():
        return src
    found = sorted(src.glob("*.json")) if src.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(
            f"--src {src} must be the conversations JSON file (or a folder holding exactly one "
            f"*.json; found {[p.name for p in found]})."
        )
    return found[0]


def _turn(entry: dict[str, Any], speaker: str) -> str | None:
    for turn in entry.get("conversations") or []:
        if turn.get("from") == speaker:
            return turn.get("value")
    return None


def _label(value: str | None) -> str | None:
    return None if value is None else value.strip().rstrip(".").strip().lower()


def prepare_conversations(name: str, src: Path, out: Path, opts: PrepareOptions) -> Converted:
    path = _json_file(src)
    entries = json.loads(path.read_text())
    images_root = Path(opts.images_root) if opts.images_root else path.parent
    labels = list(opts.labels or DEFAULT_LABELS[name] or [])
    if not labels:
        labels = sorted({a for a in (_label(_turn(e, "gpt")) for e in entries) if a})
        log.warning("%s: no --labels given; using the answers found in %s: %s", name, path, labels)
    labels = [lab.strip().lower() for lab in labels]

    def row(entry: dict[str, Any]) -> dict[str, Any]:
        question = strip_image_tokens(_turn(entry, "human") or "")
        return {
            "id": None if entry.get("id") is None else str(entry["id"]),
            "images": [image_entry(entry["image"], images_root)] if entry.get("image") else [],
            "problem": question or EMOTION_QUESTION,
            "answer": _label(_turn(entry, "gpt")),
            "choices": labels,
            "source": name,
            "task": "emotion",
        }

    return convert(name, out, {"test": [(str(path), entries)]}, row, opts, base_dir=images_root)


def prepare_webemo(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    return prepare_conversations("webemo", src, out, opts)


def prepare_emotion6(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    return prepare_conversations("emotion6", src, out, opts)
