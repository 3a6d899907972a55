"""EmoSet-118K in its released layout (github.com/JingyuanYY/EmoSet):

    ROOT/info.json  train.json  val.json  test.json
    ROOT/image/<emotion>/<emotion>_NNNNN.jpg
    ROOT/annotation/<emotion>/<emotion>_NNNNN.json

Each split file is a list of ``[emotion, image_id, image_path, annotation_path]`` with paths
relative to ROOT. The paper trains on a 2.1K subset that is not public: we draw a seeded
uniform subset of train.json (default 2100 rows) and of test.json (default 2000 rows;
``--n-test 0`` keeps all of it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mapo.data.schema import EMOSET_LABELS, EMOTION_QUESTION
from mapo.data.sources.common import Converted, PrepareOptions, convert, image_entry

DEFAULT_N = {"train": 2100, "test": 2000}


def _labels(root: Path) -> list[str]:
    """The 8 labels in info.json's label2idx order when present, else EmoSet's known order."""
    info = root / "info.json"
    if info.is_file():
        label2idx = json.loads(info.read_text()).get("label2idx", {}).get("emotion")
        if label2idx:
            return sorted(label2idx, key=label2idx.get)
    return list(EMOSET_LABELS)


def _subset(entries: list, n: int, seed: int, split: str) -> list:
    """A seeded uniform sample of n entries (all of them for n == 0), in file order."""
    if n == 0 or n >= len(entries):
        return entries
    rng = random.Random(f"{seed}-{split}")  # string seeds hash deterministically
    return [entries[i] for i in sorted(rng.sample(range(len(entries)), n))]


def prepare_emoset(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    root = Path(src)
    labels = _labels(root)
    splits: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    for split in ("train", "test"):
        path = root / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --src must be the EmoSet-118K root holding "
                "train.json, test.json, image/ and annotation/ (docs/data.md)."
            )
        n = opts.n_train if split == "train" else opts.n_test
        n = DEFAULT_N[split] if n is None else n
        splits[split] = [(str(path), _subset(json.loads(path.read_text()), n, opts.seed, split))]

    def row(entry: list[Any]) -> dict[str, Any]:
        label, image_id, image_path = entry[0], entry[1], entry[2]
        return {
            "id": str(image_id),
            "images": [image_entry(image_path, root)],
            "problem": EMOTION_QUESTION,
            "answer": str(label).strip().lower(),
            "choices": labels,
            "source": "emoset",
            "task": "emotion",
        }

    return convert("emoset", out, splits, row, opts)
