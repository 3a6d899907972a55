"""Regression and gain rates between the greedy evaluations before and after RL."""

import math

from mapo.analysis.regression import correctness, regression_block


def _preds(dataset, right):
    return [{"dataset": dataset, "id": str(i), "accuracy": float(r)} for i, r in enumerate(right)]


def test_regressed_and_gained_per_dataset_and_over_all():
    before = correctness(_preds("a", [1, 1, 0, 0]) + _preds("b", [1, 0]))
    after = correctness(_preds("a", [1, 0, 1, 1]) + _preds("b", [0, 0]))
    block = regression_block(before, after)
    a, b, total = block["datasets"]["a"], block["datasets"]["b"], block["all"]
    assert (a["regressed"], a["gained"], a["right_before"]) == (1, 2, 2)
    assert (b["regressed"], b["gained"]) == (1, 0)
    assert (total["prompts"], total["regressed"], total["gained"]) == (6, 2, 2)
    assert math.isclose(total["regression_rate"], 2 / 6)
    assert math.isclose(a["gain_rate"], 2 / 4)


def test_only_prompts_seen_by_both_count():
    block = regression_block(correctness(_preds("a", [1, 1])), correctness(_preds("a", [0])))
    assert block["all"]["prompts"] == 1 and block["all"]["regressed"] == 1
