"""EmoSet-118K in its released layout (github.com/JingyuanYY/EmoSet):

    ROOT/info.json  train.json  val.json  test.json
    ROOT/image/<emotion>/<emotion>_NNNNN.jpg
    ROOT/annotation/<emotion>/<emotion>_NNNNN.json

Each split file is a list of ``[emotion, image_id, image_path, annotation_path]`` with paths
relative to ROOT; ``info.json`` maps every attribute's labels to indices, the emotions under
``info["emotion"]["label2idx"]`` (the release's README and its EmoSet.py loader). The paper trains on a 2.1K subset that is not public: we draw a seeded
uniform subset of train.json (default 2100 rows) and of test.json (default 2000 rows;
``--n-test 0`` keeps all of it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mapo.data.schema import EMOSET_LABELS, EMOTION_QUESTION
from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    RawFile,
    Record,
    convert,
    image_entry,
    subset,
)
from mapo.data.sources.registry import register_source

DEFAULT_N = {"train": 2100, "test": 2000}


def _labels(root: Path) -> tuple[list[str], str | None]:
    """The 8 labels in info.json's ``emotion.label2idx`` order, and a note when info.json is
    absent (then EmoSet's published order is used). A malformed info.json is an error."""
    info = root / "info.json"
    if not info.is_file():
        return list(EMOSET_LABELS), f"{info} not found: labels in EmoSet's published order"
    try:
        label2idx = json.loads(info.read_text(encoding="utf-8"))["emotion"]["label2idx"]
        return sorted(label2idx, key=label2idx.get), None
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{info}: expected EmoSet-118K's info.json with the emotion labels under "
            f'info["emotion"]["label2idx"] ({type(err).__name__}: {err}); restore the file '
            "from the release (docs/data.md)."
        ) from None


@register_source("emoset", help="EmoSet-118K root (train/test.json + image/)")
def prepare_emoset(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    root = Path(src)
    labels, note = _labels(root)
    notes = [note] if note else []
    splits: dict[str, list[RawFile]] = {}
    for split in ("train", "test"):
        path = root / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --src must be the EmoSet-118K root holding "
                "train.json, test.json, image/ and annotation/ (docs/data.md)."
            )
        n = opts.n_train if split == "train" else opts.n_test
        n = DEFAULT_N[split] if n is None else n
        entries = json.loads(path.read_text(encoding="utf-8"))
        splits[split] = [RawFile(str(path), subset(entries, n, opts.seed, split))]
        notes.append(
            f"{split}: {len(splits[split][0].records)} of the {len(entries)} entries "
            f"of {path.name} (seeded subset, --seed {opts.seed})"
        )

    def row(entry: list[Any]) -> Record:
        label, image_id, image_path = entry[0], entry[1], entry[2]
        answer = str(label).strip().lower()
        return Record(
            {
                "id": str(image_id),
                "images": [image_entry(image_path, root)],
                "problem": EMOTION_QUESTION,
                "answer": answer,
                "choices": labels,
                "source": "emoset",
                "task": "emotion",
            },
            ("label_normalized",) if answer != label else (),
        )

    result = convert("emoset", out, splits, row, opts)
    result.notes += notes
    return result
