"""Analysis of rollout records on synthetic records with known answers; plot smoke checks."""

import math

import matplotlib
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mapo.algorithm.advantages import compute_advantages_with_stats, gradient_ratio
from mapo.analysis.plots import (
    plot_certainty,
    plot_gradient_ratio,
    plot_success_heatmap,
    plot_success_histogram,
)
from mapo.analysis.records import records_table
from mapo.analysis.tables import (
    certainty_distributions,
    gradient_ratio_table,
    group_table,
    reversion_mirror_counts,
    success_histogram,
)

matplotlib.use("Agg")
torch.set_num_threads(1)

HIGH = [0.9, 1.0, 1.0, 1.0]  # high certainty, near-perfect (paper section 3.2)
LOW_MIRROR = [0.0, 0.1, 0.1, 0.1]  # its "mirror": the same rewards shifted by -0.9
LOW_CERT = [0.1, 0.1, 1.0, 1.0]  # low certainty: GRPO gives [-1, -1, 1, 1]


def records(steps, estimator="mapo", std="population"):
    """Synthetic records: steps = {step: [reward list per group]}; group ids unique per step."""
    frames = []
    for step, groups in steps.items():
        r = torch.tensor([x for g in groups for x in g], dtype=torch.float64)
        gids = torch.tensor([100 * step + k for k, g in enumerate(groups) for _ in g])
        result = compute_advantages_with_stats(estimator, r, gids, std=std, eps=1e-6)
        n = len(r)
        table = records_table(
            step=step,
            group_ids=gids,
            prompt_ids=[f"q{int(g)}" for g in gids],
            sources=["geo3k"] * n,
            rewards={"overall": r, "format": torch.ones(n), "accuracy": (r == 1).double()},
            result=result,
            estimator=estimator,
            response_lengths=torch.full((n,), 7),
            truncated=torch.zeros(n, dtype=torch.bool),
            std=std,
            eps=1e-6,
        )
        frames.append(pd.DataFrame(table))
    return pd.concat(frames, ignore_index=True)


def test_reversion_and_mirror_on_paper_groups_grpo_vs_mapo():
    df = records({0: [HIGH, LOW_MIRROR, LOW_CERT]}, estimator="mapo")
    out = reversion_mirror_counts(df)  # defaults: reward >= 0.9, advantage < -1
    assert list(out.index) == ["grpo", "mapo"]
    assert (out["groups"] == 3).all() and (out["rollouts"] == 12).all()
    # Reversion: the 0.9 answer of HIGH gets -sqrt(3) under GRPO.
    grpo, mapo = out.loc["grpo"], out.loc["mapo"]
    assert grpo["near_perfect_min_adv"] == pytest.approx(-math.sqrt(3), abs=1e-4)
    # MAPO: lambda(3/4) = 1/4 -> 0.75 * (-sqrt 3) + 0.25 * (-0.075 / 0.975) = -1.318
    expected_mapo = 0.75 * -math.sqrt(3) + 0.25 * (-0.075 / 0.975)
    assert mapo["near_perfect_min_adv"] == pytest.approx(expected_mapo, abs=1e-4)
    assert grpo["reversion_rollouts"] == 1 and grpo["reversion_groups"] == 1
    assert mapo["reversion_rollouts"] == 1  # softened, still below -1 at G = 4
    harsh = reversion_mirror_counts(df, penalty=1.5)
    assert harsh.loc["grpo", "reversion_rollouts"] == 1
    assert harsh.loc["mapo", "reversion_rollouts"] == 0
    # Mirror: HIGH and LOW_MIRROR get the same sorted GRPO advantages, not the same MAPO ones;
    # LOW_CERT pairs with neither.
    assert grpo["mirror_pairs"] == 1
    assert mapo["mirror_pairs"] == 0


def test_mirror_needs_same_step_and_distinct_means():
    split = records({0: [HIGH], 1: [LOW_MIRROR]}, estimator="grpo")
    out = reversion_mirror_counts(split)
    assert list(out.index) == ["grpo"]  # a GRPO run: one row
    assert out.loc["grpo", "mirror_pairs"] == 0
    # Two identical prompts are not a mirror; the mean-gap parameter decides.
    same = records({0: [HIGH, HIGH, LOW_MIRROR]}, estimator="grpo")
    assert reversion_mirror_counts(same).loc["grpo", "mirror_pairs"] == 2
    assert reversion_mirror_counts(same, min_mean_gap=0.95).loc["grpo", "mirror_pairs"] == 0
    # Constant groups (all-zero advantages) are never counted.
    flat = records({0: [[1.0] * 4, [0.0] * 4]}, estimator="grpo")
    assert reversion_mirror_counts(flat).loc["grpo", "mirror_pairs"] == 0


def test_success_histogram_per_step_and_epoch():
    df = records(
        {
            0: [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],
            1: [[1, 1, 1, 0], [1, 1, 0.1, 0]],
            2: [[1, 1, 1, 1]],
            3: [[1, 1, 1, 1], [0.1, 0.1, 0.1, 0.1]],
        }
    )
    hist = success_histogram(df)
    assert list(hist.columns) == [0, 1, 2, 3, 4]
    assert hist.loc[0].tolist() == [1, 1, 1, 0, 0]
    assert hist.loc[1].tolist() == [0, 0, 1, 1, 0]
    assert hist.loc[3].tolist() == [1, 0, 0, 0, 1]
    assert hist.to_numpy().sum() == len(group_table(df))
    by_epoch = success_histogram(df, by="epoch", steps_per_epoch=2)
    assert by_epoch.index.name == "epoch"
    assert by_epoch.loc[0].tolist() == [1, 1, 2, 1, 0]
    assert by_epoch.loc[1].tolist() == [1, 0, 0, 0, 2]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        success_histogram(df, by="epoch")
    with pytest.raises(ValueError, match="'step' or 'epoch'"):
        success_histogram(df, by="group")


def test_certainty_distributions_per_group():
    df = records({0: [HIGH, LOW_MIRROR, LOW_CERT, [1, 0, 0, 0]]})
    dist = certainty_distributions(df)
    assert len(dist) == 4
    assert dist["p"].tolist() == [0.75, 0.0, 0.5, 0.25]
    assert dist["lam"].tolist() == pytest.approx([0.25, 1.0, 0.0, 0.25])
    assert dist["n_success"].tolist() == [3, 0, 2, 1]


@pytest.mark.parametrize("std", ["population", "unbiased"])
def test_gradient_ratio_matches_eq7_for_binary_groups(std):
    groups = [[1] * n + [0] * (8 - n) for n in range(9)] + [HIGH + [1] * 4]  # N = 0..8, + 1 not
    df = records({0: groups}, estimator="mapo", std=std)
    table = gradient_ratio_table(df)
    assert table["n_success"].tolist() == list(range(1, 8))  # p in {0, 1} and non-binary dropped
    p = torch.tensor(table["p"].to_numpy())
    theory = gradient_ratio(p).numpy()
    assert table["rho_theory"].to_numpy() == pytest.approx(theory, rel=1e-12)
    # eq. (6)'s exact ratio with the recorded sigma always matches the advantages (eps 1e-6)
    assert table["rho_empirical"].to_numpy() == pytest.approx(table["rho_recorded"], rel=1e-4)
    if std == "population":  # eq. (7) assumes sigma = sqrt(p (1 - p)), the population std
        assert table["rho_empirical"].to_numpy() == pytest.approx(theory, rel=1e-4)
        assert (table.loc[table.p < 0.5, "rho_empirical"] > 1).all()
        assert (table.loc[table.p > 0.5, "rho_empirical"] < 1).all()
    else:  # the unbiased std inflates the APD share by sqrt(G / (G - 1)) away from p = 1/2
        off = table.p != 0.5
        assert (table.loc[off, "rho_empirical"] > table.loc[off, "rho_theory"] + 1e-3).all()


def test_gradient_ratio_table_of_grpo_run_is_one_and_empty_case():
    df = records({0: [[1, 0, 0, 1], [1, 1, 1, 0]]}, estimator="grpo")
    assert gradient_ratio_table(df)["rho_empirical"].tolist() == pytest.approx([1.0, 1.0])
    empty = gradient_ratio_table(records({0: [HIGH, LOW_MIRROR]}))
    assert empty.empty and "rho_empirical" in empty.columns


def test_plots_return_figures():
    df = records({0: [HIGH, LOW_CERT, [1, 0, 0, 0]], 1: [[1, 1, 0, 0], LOW_MIRROR]})
    hist = success_histogram(df)
    figs = [
        plot_success_histogram(hist, normalize=True),
        plot_success_heatmap(hist),
        plot_certainty(certainty_distributions(df)),
        plot_gradient_ratio(gradient_ratio_table(df)),
    ]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.axes
    bars = figs[0].axes[0].patches
    assert len(bars) == 2 * 5  # steps 0 and 1, N = 0..4
    image = figs[1].axes[0].images[0].get_array()
    assert image.shape == (2, 5) and image.sum() == pytest.approx(2.0)  # rows normalised
    assert len(figs[3].axes[0].collections) == 1  # the empirical points
