"""Mechanism telemetry: per-bucket advantages, reversion groups and mirrored pairs, on the
paper's own examples (r = [0.9, 1, 1, 1] and [0, .1, .1, .1] vs [.9, 1, 1, 1])."""

import math

import torch

from mapo.algorithm.advantages import compute_advantages_with_stats
from mapo.analysis.certainty import certainty_summary
from mapo.analysis.mechanism import mechanism_metrics


def _run(estimator, rewards, accuracy):
    r = torch.tensor(rewards, dtype=torch.float64)
    gids = torch.arange(len(rewards)) // 4
    adv = compute_advantages_with_stats(estimator, r, gids, eps=1e-6, std="population")
    return mechanism_metrics(
        adv, r, gids, torch.tensor(accuracy, dtype=torch.float64), eps=1e-6, std="population"
    )


REWARDS = [0.9, 1, 1, 1, 0, 0.1, 0.1, 0.1, 0.9, 1, 0, 0]  # reversion, near-failed, mixed
ACCURACY = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0]


def test_reversion_and_mirror_counts():
    m = _run("grpo", REWARDS, ACCURACY)
    assert m["certainty/reversion_groups"] == 1  # only the first group: its miss is format-only
    assert m["certainty/mirrored_pairs"] == 1  # group 0 mirrors group 1, not group 2


def test_reversion_needs_a_right_answer():
    acc = list(ACCURACY)
    acc[0] = 0  # the miss is wrong, not only badly formatted
    assert _run("grpo", REWARDS, acc)["certainty/reversion_groups"] == 0


def test_buckets_show_what_mapo_changes():
    grpo, mapo = _run("grpo", REWARDS, ACCURACY), _run("mapo", REWARDS, ACCURACY)
    # GRPO's advantages are the same under both logging prefixes
    assert grpo["mech/N3/adv_fail"] == grpo["mech_grpo/N3/adv_fail"]
    # GRPO reverses the near-solved group's format miss to -1.73 (the paper's number)
    assert math.isclose(grpo["mech/N3/adv_fail"], -math.sqrt(3), rel_tol=1e-4)
    # MAPO (certainty-weighted) pushes the same miss much less
    assert abs(mapo["mech/N3/adv_fail"]) < abs(mapo["mech_grpo/N3/adv_fail"])
    assert mapo["mech_grpo/N3/adv_fail"] == grpo["mech/N3/adv_fail"]
    assert all(math.isfinite(v) for v in mapo.values())


def test_certainty_summary_from_records():
    rows = []
    for i, (r, a) in enumerate(zip(REWARDS, ACCURACY)):
        rows.append(
            {
                "step": 0,
                "group_id": i // 4,
                "rollout_index": i % 4,
                "success": r == 1,
                "reward_accuracy": float(a),
                "reward_format": 1.0 if r in (0, 1) else 0.0,
                "advantage_grpo": 0.0,
                "mu": 0.0,
                "source": "s",
            }
        )
    s = certainty_summary(rows)
    assert s["n_hist"] == {0: 1, 1: 1, 3: 1}  # success is an overall reward of exactly 1
    assert s["reversion_groups"] == 1
    assert math.isclose(s["frac_n0"] + s["frac_nG"] + s["frac_mixed"], 1.0)
