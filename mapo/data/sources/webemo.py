"""WEBEmo (Panda et al., ECCV 2018, "Contemplating Visual Emotions") as published: URL lists.

    ROOT/category.txt   the 25 fine labels in index order, each as (fine, level-2, sentiment),
                        e.g. ('affection', 'love', '+'); the release's spellings
                        ("cheerfullness", "irritabilty") are kept in the file
    ROOT/train25.txt    "<url> <index>" per line (213,952 lines)
    ROOT/test25.txt     "<url> <index>" per line (53,489 lines); index 0 = affection

The release has no images: download test25.txt's URLs yourself, keeping each URL's file name,
anywhere under ``--images-root`` (default ROOT/images); they are found by file name. Only
test25.txt is converted (WEBEmo is an out-of-domain evaluation set here).

``--label-level`` picks the gold label: 1 (positive / negative), 2 (category.txt's level 2;
the default, the MAPO paper's high-level categories) or 3 (the 25 fine labels, respelled as
``SPELLING`` says and counted as ``label_respelled``). A URL listed more than once keeps one
row when all its labels agree at that level (the others are dropped as ``duplicate_url``)
and is dropped entirely when they disagree (``conflicting_labels``): no label is picked.
A LLaVA-style conversations JSON (the authors' evaluation file) is read by conversations.py.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from mapo.data.schema import EMOTION_QUESTION
from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    RawFile,
    Record,
    bad_record,
    convert,
    dropped,
    image_entry,
    subset,
)
from mapo.data.sources.conversations import prepare_conversations
from mapo.data.sources.registry import register_source

CATEGORIES, TEST_LIST = "category.txt", "test25.txt"
SPELLING = {"cheerfullness": "cheerfulness", "irritabilty": "irritability"}  # release -> English
SENTIMENT = {"+": "positive", "-": "negative"}
LEVELS = (1, 2, 3)
_TUPLE = re.compile(r"\(\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*\)")


def find_release(src: Path) -> Path | None:
    """The folder holding category.txt and test25.txt (src, or one level below)."""
    src = Path(src)
    for root in [src, *sorted(p for p in src.iterdir() if p.is_dir())] if src.is_dir() else []:
        if (root / CATEGORIES).is_file() and (root / TEST_LIST).is_file():
            return root
    return None


def read_categories(path: Path) -> list[tuple[str, str, str]]:
    """(fine, level-2, sentiment) per label index, in file order. Lines are read as
    "('affection', 'love', '+')" tuples, or as three whitespace/comma-separated words."""
    text = path.read_text(encoding="utf-8-sig")
    found = [tuple(m) for m in _TUPLE.findall(text)]
    if not found:
        rows = [re.split(r"[\s,]+", line.strip()) for line in text.splitlines() if line.strip()]
        found = [tuple(r[-3:]) for r in rows if len(r) >= 3]
    if not found or any(s not in SENTIMENT for _, _, s in found):
        raise ValueError(
            f"{path}: expected WEBEmo's category.txt, one (fine, level-2, '+' or '-') triple per "
            f"label index, e.g. ('affection', 'love', '+'); read {found[:3]} (docs/data.md)."
        )
    return [(fine.strip(), mid.strip(), s) for fine, mid, s in found]


def _label(category: tuple[str, str, str], level: int) -> tuple[str, tuple[str, ...]]:
    fine, mid, sign = category
    if level == 1:
        return SENTIMENT[sign], ()
    if level == 2:
        return mid.lower(), ()
    fine = fine.lower()
    return SPELLING.get(fine, fine), ("label_respelled",) if fine in SPELLING else ()


def _parse(path: Path, categories, opts: PrepareOptions) -> list[Record | tuple]:
    """Per line: (line number, url, label, reasons), or a Record dropping the line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            out.append(
                bad_record(
                    opts,
                    str(path),
                    n,
                    parts[0],
                    "malformed_line",
                    f"expected '<url> <label index>', got {line[:200]!r}",
                )
            )
        elif int(parts[1]) >= len(categories):
            out.append(
                bad_record(
                    opts,
                    str(path),
                    n,
                    parts[0],
                    "unknown_label_index",
                    f"index {parts[1]} but category.txt has {len(categories)}",
                )
            )
        else:
            out.append((n, parts[0], *_label(categories[int(parts[1])], opts.label_level)))
    return out


def _resolve_duplicates(entries: list) -> list:
    """Keep one line per URL whose labels agree; drop every line of a URL whose labels differ."""
    labels = defaultdict(set)
    for e in entries:
        if not isinstance(e, Record):
            labels[e[1]].add(e[2])
    seen, out = set(), []
    for e in entries:
        if isinstance(e, Record):
            out.append(e)
        elif len(labels[e[1]]) > 1:
            out.append(dropped("conflicting_labels", e[0]))
        elif e[1] in seen:
            out.append(dropped("duplicate_url", e[0]))
        else:
            seen.add(e[1])
            out.append(e)
    return out


def _image_index(root: Path) -> dict[str, list[Path]]:
    index = defaultdict(list)
    for p in sorted(root.rglob("*")) if root.is_dir() else []:
        if p.is_file():
            index[p.name].append(p)
    return index


@register_source("webemo", help="WEBEmo release (category.txt, test25.txt) or conversations JSON")
def prepare_webemo(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    root = find_release(src)
    if root is None:
        return prepare_conversations("webemo", src, out, opts)
    if opts.label_level not in LEVELS:
        raise ValueError(f"--label-level must be one of {LEVELS}, got {opts.label_level!r}")
    categories = read_categories(root / CATEGORIES)
    test = root / TEST_LIST
    entries = _resolve_duplicates(_parse(test, categories, opts))
    if opts.n_test:  # a seeded subset of the usable lines; dropped lines stay counted
        usable = [e for e in entries if not isinstance(e, Record)]
        entries = [e for e in entries if isinstance(e, Record)]
        entries += subset(usable, opts.n_test, opts.seed, "test")
    images = _image_index(Path(opts.images_root) if opts.images_root else root / "images")
    labels = list(opts.labels or dict.fromkeys(_label(c, opts.label_level)[0] for c in categories))

    def row(entry) -> Record:
        if isinstance(entry, Record):
            return entry
        n, url, label, reasons = entry
        name = url.rstrip("/").rsplit("/", 1)[-1]
        found = images.get(name, [])
        if len(found) > 1:
            reasons = (*reasons, "image_name_ambiguous")  # the first in path order is used
        # not downloaded: a missing_image bad row naming the file name that was looked for
        image = image_entry(str(found[0]), None) if found else {"bytes": None, "path": name}
        return Record(
            {
                "id": name,
                "images": [image],
                "problem": EMOTION_QUESTION,
                "answer": label,
                "choices": [lab.strip().lower() for lab in labels],
                "source": "webemo",
                "task": "emotion",
            },
            reasons,
            n,
        )

    result = convert("webemo", out, {"test": [RawFile(str(test), entries, unit="line")]}, row, opts)
    result.notes.append(
        f"gold label = category.txt level {opts.label_level} "
        f"(--label-level {opts.label_level}): {len(labels)} labels"
    )
    return result
