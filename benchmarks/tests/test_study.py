"""The study's quick variant end to end: 2 methods x 2 seeds x 2 steps on tiny SynthMix sets.
Checks the table's structure, that every metric is finite, and that finished runs are reused."""

import json
import math

import pytest

from benchmarks import study

pytestmark = pytest.mark.slow


def test_quick_study(tmp_path):
    args = [
        "--quick",
        "--methods",
        "mapo",
        "grpo",
        "--seeds",
        "0",
        "1",
        "--steps",
        "2",
        "--resamples",
        "200",
        "--out",
        str(tmp_path),
    ]
    result = study.main(args)
    table = result["table"]
    assert set(table["methods"]) == {"mapo", "grpo"}
    assert set(table["paired_vs_grpo"]) == {"mapo"}
    for block in (
        table["methods"]["mapo"],
        table["methods"]["grpo"],
        table["paired_vs_grpo"]["mapo"],
    ):
        assert set(block) == set(study.METRICS)
        for mean, lo, hi in block.values():
            assert all(math.isfinite(v) for v in (mean, lo, hi))
            assert lo <= mean + 1e-12 and mean <= hi + 1e-12
    for method in ("mapo", "grpo"):
        for seed in (0, 1):
            record = json.loads((tmp_path / method / f"seed{seed}" / "study_run.json").read_text())
            assert record["seed"] == seed and len(record["commit"]) == 40
    md = (tmp_path / "study.md").read_text()
    assert "| MAPO - GRPO |" in md and (tmp_path / "study.png").stat().st_size > 0
    # a second call reuses every finished run: no run folder is written again
    stamp = (tmp_path / "mapo" / "seed0" / "metrics.json").stat().st_mtime_ns
    study.main(args)
    assert (tmp_path / "mapo" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp


def test_bootstrap_ci_brackets_the_mean_and_pairs_by_seed():
    runs = {
        "grpo": {0: dict.fromkeys(study.METRICS, 0.5), 1: dict.fromkeys(study.METRICS, 0.7)},
        "mapo": {0: dict.fromkeys(study.METRICS, 0.6), 1: dict.fromkeys(study.METRICS, 0.8)},
    }
    table = study.aggregate(runs, resamples=500)
    diff = table["paired_vs_grpo"]["mapo"]["acc_tiers"]
    assert diff == pytest.approx((0.1, 0.1, 0.1))  # the same +0.1 on both seeds: no spread
    mean, lo, hi = table["methods"]["grpo"]["acc_tiers"]
    assert mean == pytest.approx(0.6) and lo == pytest.approx(0.5) and hi == pytest.approx(0.7)
