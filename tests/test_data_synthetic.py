"""SynthEmo / SynthMath: deterministic, fast, in the schema, and decided by colour."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from mapo.data.loader import load_split
from mapo.data.schema import EMOSET_LABELS, decode_image, validate_rows
from mapo.data.synthetic import (
    EMO_COLOURS,
    EMOTION6_MAPPING,
    EMOTION6_SUBSET,
    SPLITS,
    _count_colour,
    _tint,
    generate,
    tokenizer_corpus,
    write_synthetic,
)


def pixels(row, box=None) -> np.ndarray:
    image = decode_image(row["images"][0])
    return np.asarray(image.crop(box) if box else image, dtype=np.float32).reshape(-1, 3)


def nearest(colour, palette: dict):
    return min(palette, key=lambda k: float(np.sum((np.asarray(palette[k]) - colour) ** 2)))


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_split_is_valid_schema(name):
    import yaml

    conf = Path(__file__).resolve().parents[1] / "conf" / "data" / f"{name}.yaml"
    options = yaml.safe_load(conf.read_text())["synthetic"].get("options")  # SynthMix's tiers
    for split in SPLITS[name]:
        rows = generate(name, split, 20, seed=3, options=options)
        kept, skipped = validate_rows(rows, origin=f"{name}/{split}", on_bad_row="error")
        assert len(kept) == 20 and not skipped
        assert all(r["task"] == ("math" if name == "synth_math" else "emotion") for r in kept)


def test_deterministic_seeded_and_prefix_stable():
    a = generate("synth_emo", "train", 30, seed=1)
    b = generate("synth_emo", "train", 30, seed=1)
    c = generate("synth_emo", "train", 30, seed=2)
    longer = generate("synth_emo", "train", 40, seed=1)
    assert [r["images"][0]["bytes"] for r in a] == [r["images"][0]["bytes"] for r in b]
    assert [r["answer"] for r in a] != [r["answer"] for r in c]
    assert longer[:30] == a
    test = generate("synth_emo", "test", 30, seed=1)
    assert {r["images"][0]["bytes"] for r in a}.isdisjoint(r["images"][0]["bytes"] for r in test)
    assert len({r["id"] for r in a + test}) == 60


@pytest.mark.parametrize("split", ["train", "test", "ood_webemo"])
def test_synth_emo_label_is_decided_by_background_colour(split):
    rows = generate("synth_emo", split, 120, seed=0)
    predicted = [nearest(np.median(pixels(r), axis=0), EMO_COLOURS) for r in rows]
    accuracy = np.mean([p == r["answer"] for p, r in zip(predicted, rows)])
    assert accuracy >= 0.97
    assert {r["answer"] for r in rows} == set(EMOSET_LABELS)


def test_ood_emotion6_uses_a_six_label_subset_in_a_central_disk():
    rows = generate("synth_emo", "ood_emotion6", 120, seed=0)
    assert {r["answer"] for r in rows} == set(EMOTION6_SUBSET)
    assert all(r["choices"] == list(EMOTION6_SUBSET) for r in rows)
    assert set(EMOTION6_MAPPING.values()) == set(EMOTION6_SUBSET)
    palette = {k: EMO_COLOURS[k] for k in EMOTION6_SUBSET}
    centre = [nearest(np.median(pixels(r, (20, 20, 36, 36)), axis=0), palette) for r in rows]
    assert np.mean([p == r["answer"] for p, r in zip(centre, rows)]) >= 0.97
    # the layout shift: corners are grey, not the class colour
    corner = np.stack([np.median(pixels(r, (0, 0, 6, 6)), axis=0) for r in rows])
    assert np.all(np.ptp(corner, axis=1) < 40)


# ood_shift jitters the palette, so colour alone is a weaker cue there (by design).
@pytest.mark.parametrize("split,floor", [("train", 0.95), ("test", 0.95), ("ood_shift", 0.7)])
def test_synth_math_answer_is_count_plus_k_and_count_is_coloured(split, floor):
    rows = generate("synth_math", split, 120, seed=0)
    tints = {n: _tint(_count_colour(n), 0.7) for n in range(1, 10)}
    hits = 0
    for r in rows:
        k = re.search(r"Add (\d) to the count", r["problem"])
        count = int(r["answer"]) - (int(k.group(1)) if k else 0)
        assert 1 <= count <= 9 and r["choices"] is None
        hits += nearest(np.median(pixels(r), axis=0), tints) == count
    assert hits / len(rows) >= floor
    assert any("Add" in r["problem"] for r in rows) and any("Add" not in r["problem"] for r in rows)


def test_generation_is_fast():
    start = time.perf_counter()
    generate("synth_emo", "train", 150, seed=0)
    generate("synth_math", "train", 150, seed=0)
    assert time.perf_counter() - start < 2.0


def test_write_synthetic_writes_all_splits_and_reuses_the_cache(tmp_path):
    paths = write_synthetic("synth_emo", tmp_path, seed=0, n_train=40, n_test=10, n_ood=6)
    assert sorted(paths) == ["ood_emotion6", "ood_webemo", "test", "train"]
    sizes = {s: len(load_split(p, on_bad_row="error")) for s, p in paths.items()}
    assert sizes == {"train": 40, "test": 10, "ood_webemo": 6, "ood_emotion6": 6}
    mtime = paths["train"].stat().st_mtime_ns
    write_synthetic("synth_emo", tmp_path, seed=0, n_train=40, n_test=10, n_ood=6)
    assert paths["train"].stat().st_mtime_ns == mtime  # cached: not rewritten
    write_synthetic("synth_emo", tmp_path, seed=1, n_train=40, n_test=10, n_ood=6)
    assert paths["train"].stat().st_mtime_ns != mtime  # other seed: regenerated


def test_unknown_names():
    with pytest.raises(ValueError, match="synth_emo"):
        generate("synth_nope", "train", 1, seed=0)
    with pytest.raises(ValueError, match="ood_webemo"):
        generate("synth_emo", "validation", 1, seed=0)


def test_tokenizer_corpus_covers_prompts_labels_numbers_and_think():
    corpus = tokenizer_corpus()
    text = "\n".join(corpus)
    for label in EMOSET_LABELS:
        assert f"\\boxed{{{label}}}" in text
    for n in range(13):  # every SynthMath answer: 1..9 plus up to 3
        assert f"\\boxed{{{n}}}" in text
    assert "<think>I see the image.</think> \\boxed{awe}" in corpus
    emo = generate("synth_emo", "train", 5, seed=0)
    emo += generate("synth_emo", "ood_emotion6", 5, seed=0)
    math = generate("synth_math", "train", 30, seed=0)
    for r in emo + math:
        assert r["problem"] in text
        assert r["answer"] in corpus
    assert "The reasoning process MUST BE enclosed within <think> </think> tags." in text
