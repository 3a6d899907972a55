"""The SynthMix analysis (mapo.analysis.testbed) on hand-made records with worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mapo.analysis.plots import plot_estimator_advantages, plot_regression, plot_tier_histograms
from mapo.analysis.testbed import estimator_advantages, regression_table, tier_histograms


def _records() -> pd.DataFrame:
    """Step 0: the reversion group [0.9, 1, 1, 1] (easy) and [0, 0, 0, 1] (hard); step 1: the
    easy prompt solved by all, a hard group with one rollout missing (incomplete)."""
    groups = [
        (0, 0, "easy", [0.9, 1.0, 1.0, 1.0]),
        (0, 1, "hard", [0.0, 0.0, 0.0, 1.0]),
        (1, 2, "easy", [1.0, 1.0, 1.0, 1.0]),
        (1, 3, "hard", [0.0, 1.0, 0.0]),
    ]
    rows = []
    for step, gid, source, rewards in groups:
        n = sum(r == 1.0 for r in rewards)
        for i, r in enumerate(rewards):
            rows.append(
                dict(
                    step=step,
                    group_id=gid,
                    source=source,
                    prompt_id=f"{source}-{gid}",
                    rollout_index=i,
                    reward_overall=r,
                    success=r == 1.0,
                    n_success=n if gid != 3 else 1,
                    group_size=4,
                    p=n / 4,
                    lam=0.0,
                    mu=0.0,
                    sigma=0.0,
                    estimator="mapo",
                )
            )
    return pd.DataFrame(rows)


def _cell(table, estimator, n, outcome, col="mean"):
    sel = (table.estimator == estimator) & (table.N == n) & (table.outcome == outcome)
    assert sel.sum() == 1
    return float(table.loc[sel, col].iloc[0])


def test_estimator_advantages_worked_numbers():
    table = estimator_advantages(_records(), ["grpo", "apd", "mapo"], eps=1e-6, std="unbiased")
    # [0.9, 1, 1, 1]: mean 0.975, unbiased std 0.05 -> z = -1.5 (miss) and +0.5 (hits)
    assert _cell(table, "grpo", 3, "failure") == pytest.approx(-1.5, rel=1e-4)
    assert _cell(table, "grpo", 3, "success") == pytest.approx(0.5, rel=1e-4)
    # APD (r - mu) / mu
    assert _cell(table, "apd", 3, "failure") == pytest.approx(-0.075 / 0.975, rel=1e-4)
    # MAPO: p = 3/4, lambda = 1 - 4 p (1 - p) = 0.25; (1 - lambda) z + lambda APD
    assert _cell(table, "mapo", 3, "failure") == pytest.approx(
        0.75 * -1.5 + 0.25 * (-0.075 / 0.975), rel=1e-4
    )
    # [0, 0, 0, 1]: mean 0.25, unbiased std 0.5 -> hit +1.5, misses -0.5 each
    assert _cell(table, "grpo", 1, "success") == pytest.approx(1.5, rel=1e-4)
    assert _cell(table, "grpo", 1, "failure", "count") == 3
    # all solved: zero advantage; the incomplete group is left out
    assert _cell(table, "grpo", 4, "success") == 0.0
    assert table[table.estimator == "grpo"]["count"].sum() == 12


def test_estimator_advantages_population_std_gives_the_papers_reversion():
    table = estimator_advantages(_records(), ["grpo"], eps=1e-6, std="population")
    assert _cell(table, "grpo", 3, "failure") == pytest.approx(-math.sqrt(3), rel=1e-4)


def test_estimator_advantages_needs_a_complete_group():
    df = _records()
    with pytest.raises(ValueError, match="no complete group"):
        estimator_advantages(df[df.group_id == 3], ["grpo"], eps=1e-6, std="unbiased")


def test_tier_histograms_share_columns():
    hists = tier_histograms(_records())
    assert list(hists) == ["easy", "hard"]
    assert list(hists["easy"].columns) == list(hists["hard"].columns) == [0, 1, 2, 3, 4]
    assert hists["easy"].loc[0, 3] == 1 and hists["easy"].loc[1, 4] == 1
    assert hists["hard"].loc[0, 1] == 1 and hists["hard"].loc[1, 1] == 1


METRICS = {
    "before": {"datasets": {"easy": 1.0, "hard": 0.25}},
    "after": {
        "datasets": {"easy": 0.75, "hard": 0.5},
        "regression": {
            "datasets": {
                "easy": dict(
                    prompts=4,
                    right_before=4,
                    regressed=1,
                    gained=0,
                    regression_rate=0.25,
                    gain_rate=0.0,
                ),
                "hard": dict(
                    prompts=4,
                    right_before=1,
                    regressed=0,
                    gained=1,
                    regression_rate=0.0,
                    gain_rate=0.25,
                ),
            },
            "all": dict(
                prompts=8,
                right_before=5,
                regressed=1,
                gained=1,
                regression_rate=0.125,
                gain_rate=0.125,
            ),
        },
    },
}


def test_regression_table_rows_and_refusal():
    table = regression_table(METRICS)
    assert list(table.index) == ["easy", "hard", "all"]
    assert table.loc["easy", "acc_before"] == 1.0 and table.loc["easy", "acc_after"] == 0.75
    assert table.loc["all", "regressed"] == 1 and table.loc["hard", "gain_rate"] == 0.25
    assert np.isnan(table.loc["all", "acc_before"])
    with pytest.raises(ValueError, match="eval.before=true"):
        regression_table({"before": {}, "after": {"datasets": {}}})


def test_testbed_figures_render(tmp_path):
    df = _records()
    figures = [
        plot_tier_histograms(tier_histograms(df)),
        plot_estimator_advantages(
            estimator_advantages(df, ["grpo", "mapo"], eps=1e-6, std="unbiased")
        ),
        plot_regression(regression_table(METRICS)),
    ]
    for i, fig in enumerate(figures):
        assert isinstance(fig, Figure) and fig.axes
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
