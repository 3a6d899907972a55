"""Emotion6 (Peng et al., CVPR 2015) as published (Emotion6.zip, its ReadMe.txt):

    ROOT/images/<emotion>/<n>.jpg        330 images in each of the 6 emotion folders
    ROOT/ground_truth.txt                 tab-separated, first line a header, then per image
        [image_filename] [valence] [arousal] [prob. anger] [prob. disgust] [prob. fear]
        [prob. joy] [prob. sadness] [prob. surprise] [prob. neutral]
    e.g. "disgust/1.jpg	2.5	3.8	0.133333	0.7	0	0.0666667	0.1	0	0" (image images/disgust/1.jpg)

The folder is the keyword the image was searched with; the probabilities are the votes of
the user study. Which one is the gold label is ``--label-source``:
  folder  the image's folder (6 labels, 330 each; the default)
  argmax  the most voted of the 7 columns, so ``neutral`` is a label too (choices: the 6 and
          neutral); a tie for the most votes drops the row (``tied_votes``), rows whose
          argmax is not their folder are counted as ``label_argmax_not_folder``.
A LLaVA-style conversations JSON (the authors' evaluation file) is read by conversations.py.
"""

from __future__ import annotations

from pathlib import Path

from mapo.data.schema import EMOTION6_LABELS, EMOTION_QUESTION
from mapo.data.sources.common import (
    Converted,
    PrepareOptions,
    RawFile,
    Record,
    bad_record,
    convert,
    dropped,
    image_entry,
)
from mapo.data.sources.conversations import prepare_conversations
from mapo.data.sources.registry import register_source

GROUND_TRUTH = "ground_truth.txt"
VOTE_COLUMNS = (*EMOTION6_LABELS, "neutral")  # the order of the [prob. *] columns
LABEL_SOURCES = ("folder", "argmax")
N_FIELDS = 1 + 2 + len(VOTE_COLUMNS)  # file name, valence, arousal, 7 probabilities


def find_release(src: Path) -> Path | None:
    """ground_truth.txt when src is it, or a folder holding it (at most two levels down)."""
    src = Path(src)
    if src.is_file():
        return src if src.name == GROUND_TRUTH or src.suffix == ".txt" else None
    for pattern in (GROUND_TRUTH, f"*/{GROUND_TRUTH}", f"*/*/{GROUND_TRUTH}"):
        found = sorted(src.glob(pattern)) if src.is_dir() else []
        if found:
            return found[0]
    return None


def _fields(line: str) -> list[str]:
    """Tab-separated as released; whitespace-separated copies are read as well."""
    parts = line.rstrip("\r\n").split("\t")
    return parts if len(parts) == N_FIELDS else line.split()


def _is_data(fields: list[str]) -> bool:
    return len(fields) == N_FIELDS and all(map(_is_number, fields[1:]))


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the data lines. The first line is the header (its exact text
    is not relied on); a first line that parses as data is kept as data."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    records = [(n, _fields(line)) for n, line in enumerate(lines, 1) if line.strip()]
    if records and records[0][0] == 1 and not _is_data(records[0][1]):
        records = records[1:]
    if not records or not any(_is_data(f) for _, f in records[:20]):
        raise ValueError(
            f"{path}: not Emotion6's ground_truth.txt: expected a header line, then per image "
            "[image_filename] [valence] [arousal] [prob. anger] ... [prob. neutral], tab-"
            "separated (docs/data.md, Emotion6)."
        )
    return records


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@register_source("emotion6", help="Emotion6 release (ground_truth.txt) or conversations JSON")
def prepare_emotion6(src: Path, out: Path, opts: PrepareOptions) -> Converted:
    path = find_release(src)
    if path is None:
        return prepare_conversations("emotion6", src, out, opts)
    if opts.label_source not in LABEL_SOURCES:
        raise ValueError(f"--label-source must be one of {LABEL_SOURCES}: {opts.label_source!r}")
    images = Path(opts.images_root) if opts.images_root else path.parent / "images"
    default = VOTE_COLUMNS if opts.label_source == "argmax" else EMOTION6_LABELS
    labels = [lab.strip().lower() for lab in (opts.labels or default)]

    def row(record: tuple[int, list[str]]) -> Record:
        n, fields = record
        name = fields[0].strip()
        if not _is_data(fields):
            return bad_record(
                opts,
                str(path),
                n,
                name,
                "malformed_line",
                f"expected 10 tab-separated fields, got {fields!r}",
            )
        folder = name.split("/")[0].strip().lower()
        votes = [float(v) for v in fields[3:]]
        top = [VOTE_COLUMNS[i] for i, v in enumerate(votes) if v == max(votes)]
        reasons: tuple[str, ...] = ()
        if opts.label_source == "folder":
            label = folder
        elif len(top) > 1:
            return dropped("tied_votes", n)
        else:
            label = top[0]
            reasons = ("label_argmax_not_folder",) if label != folder else ()
        return Record(
            {
                "id": name,
                "images": [image_entry(name, images)],
                "problem": EMOTION_QUESTION,
                "answer": label,
                "choices": labels,
                "source": "emotion6",
                "task": "emotion",
            },
            reasons,
            n,
        )

    result = convert(
        "emotion6", out, {"test": [RawFile(str(path), _lines(path), unit="line")]}, row, opts
    )
    how = "its folder" if opts.label_source == "folder" else "the most voted of the 7 columns"
    result.notes.append(f"gold label = {how} (--label-source {opts.label_source})")
    return result
