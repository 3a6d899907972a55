"""SynthMix: tiers are a property of each prompt, deterministic from the seed and the knobs."""

from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from mapo.data.schema import decode_image, validate_rows
from mapo.data.synthetic import EMO_COLOURS, generate

CONF = Path(__file__).resolve().parents[1] / "conf" / "data" / "synth_mix.yaml"
OPTIONS = yaml.safe_load(CONF.read_text())["synthetic"]["options"]


def centre(row) -> np.ndarray:  # the mean colour of a background patch (no frame, no noise)
    arr = np.asarray(decode_image(row["images"][0]), dtype=np.float32)
    return arr[4:12, 4:12].reshape(-1, 3).mean(axis=0)


def test_deterministic_and_in_the_schema():
    a = generate("synth_mix", "train", 40, seed=3, options=OPTIONS)
    b = generate("synth_mix", "train", 40, seed=3, options=OPTIONS)
    assert a == b
    assert generate("synth_mix", "train", 40, seed=4, options=OPTIONS) != a
    kept, skipped = validate_rows(a, origin="synth_mix/train", on_bad_row="error")
    assert len(kept) == 40 and not skipped


def test_train_mixes_tiers_by_weight_and_test_splits_keep_theirs():
    rows = generate("synth_mix", "train", 400, seed=0, options=OPTIONS)
    share = Counter(r["source"] for r in rows)
    for tier, spec in OPTIONS["tiers"].items():
        assert abs(share[f"synth_mix_{tier}"] / 400 - spec["weight"]) < 0.08
    for tier in OPTIONS["tiers"]:
        test = generate("synth_mix", f"test_{tier}", 20, seed=0, options=OPTIONS)
        assert {r["source"] for r in test} == {f"synth_mix_{tier}"}
    ood = generate("synth_mix", "ood_shift", 20, seed=0, options=OPTIONS)
    assert {r["source"] for r in ood} == {"synth_mix_shift"}


def test_knobs_set_the_rendering():
    quiet = {"weight": 1.0, "cue": 1.0, "noise": 0.0, "distractors": 0, "flip": False}
    plain = generate("synth_mix", "test_easy", 8, options={"tiers": {"easy": quiet}}, seed=0)
    grey = generate(
        "synth_mix", "test_easy", 8, options={"tiers": {"easy": {**quiet, "cue": 0.0}}}, seed=0
    )
    flip = generate(
        "synth_mix", "test_easy", 8, options={"tiers": {"easy": {**quiet, "flip": True}}}, seed=0
    )
    for p, g, f in zip(plain, grey, flip):
        assert np.allclose(centre(p), EMO_COLOURS[p["answer"]], atol=1)
        assert np.allclose(centre(g), 128, atol=1)  # no cue left
        assert p["answer"] == f["answer"] and not np.allclose(centre(f), centre(p), atol=20)
