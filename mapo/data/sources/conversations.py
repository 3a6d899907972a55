"""WEBEmo and Emotion6 as LLaVA-style ``conversations`` JSON (the form of the MAPO authors'
evaluation files; the published releases are read by ``emotion6.py`` and ``webemo.py``)

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
    RawFile,
    Record,
    convert,
    image_entry,
    strip_image_tokens,
)

log = logging.getLogger(__name__)
DEFAULT_LABELS: dict[str, tuple[str, ...] | None] = {"emotion6": EMOTION6_LABELS, "webemo": None}


def _json_file(src: Path, name: str) -> Path:
    src = Path(src)
    if src.is_file():
        return src
    found = sorted(src.glob("*.json")) if src.is_dir() else []
    if len(found) != 1:
        where = "does not exist" if not src.exists() else f"holds {[p.name for p in found]}"
        raise FileNotFoundError(
            f"--src {src} {where}: pass the {name} release folder as published, or a "
            "conversations JSON file (or a folder holding exactly one *.json); see docs/data.md."
        )
    return found[0]


def _turn(entry: dict[str, Any], speaker: str) -> str | None:
    for turn in entry.get("conversations") or []:
        if turn.get("from") == speaker:
            return turn.get("value")
    return None


def _label(value: str | None) -> str | None:
    return None if value is None else value.strip().rstrip(".").strip().lower()


def _entries(path: Path, name: str) -> list:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a conversations JSON file ({err}). {name} accepts the published "
            f"release folder or a LLaVA-style conversations JSON (docs/data.md, {name})."
        ) from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of conversation entries (docs/data.md)")
    return entries


def prepare_conversations(name: str, src: Path, out: Path, opts: PrepareOptions) -> Converted:
    path = _json_file(src, name)
    entries = _entries(path, name)
    images_root = Path(opts.images_root) if opts.images_root else path.parent
    labels = list(opts.labels or DEFAULT_LABELS[name] or [])
    if not labels:
        labels = sorted({a for a in (_label(_turn(e, "gpt")) for e in entries) if a})
        log.warning("%s: no --labels given; using the answers found in %s: %s", name, path, labels)
    labels = [lab.strip().lower() for lab in labels]

    def row(entry: dict[str, Any]) -> Record:
        human, gpt = _turn(entry, "human") or "", _turn(entry, "gpt")
        question, answer = strip_image_tokens(human), _label(gpt)
        reasons = [
            r
            for r, changed in (
                ("image_tokens_removed", question != human.strip()),
                ("question_supplied", not question),
                ("label_normalized", answer != gpt),
            )
            if changed
        ]
        return Record(
            {
                "id": None if entry.get("id") is None else str(entry["id"]),
                "images": [image_entry(entry["image"], images_root)] if entry.get("image") else [],
                "problem": question or EMOTION_QUESTION,
                "answer": answer,
                "choices": labels,
                "source": name,
                "task": "emotion",
            },
            tuple(reasons),
        )

    splits = {"test": [RawFile(str(path), entries)]}
    return convert(name, out, splits, row, opts, base_dir=images_root)
