"""Matplotlib figures for the tables of `mapo.analysis.tables`; each returns a Figure.

Figures are built with `matplotlib.figure.Figure` (no pyplot global state), so they are
garbage-collected normally; Jupyter shows a returned Figure inline, `fig.savefig(path)` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from mapo.algorithm.advantages import gradient_ratio


def plot_success_histogram(
    hist: pd.DataFrame, keys: Sequence | None = None, normalize: bool = False
) -> Figure:
    """Fig. 1 style: groups per number of successes N, one bar series per selected step/epoch.

    hist: `analysis.success_histogram(...)`; keys: its index values to draw (default: the first
    and the last, i.e. the start and end of training)."""
    if hist.empty:
        raise ValueError("the success histogram is empty")
    if keys is None:
        keys = list(dict.fromkeys([hist.index[0], hist.index[-1]]))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    n = np.asarray(hist.columns, dtype=float)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        counts = hist.loc[key].to_numpy(dtype=float)
        if normalize:
            counts = counts / max(counts.sum(), 1.0)
        ax.bar(
            n + (i - (len(keys) - 1) / 2) * width, counts, width, label=f"{hist.index.name} {key}"
        )
    ax.set_xlabel("successful trajectories N")
    ax.set_ylabel("fraction of groups" if normalize else "groups")
    ax.set_xticks(n)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_success_heatmap(hist: pd.DataFrame, normalize: bool = True) -> Figure:
    """Drift of the Fig. 1 histogram over training: rows = step/epoch, columns = N."""
    values = hist.to_numpy(dtype=float)  # [T, G+1]
    if normalize:
        values = values / np.maximum(values.sum(1, keepdims=True), 1.0)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    g = values.shape[1] - 1
    t = np.asarray(hist.index, dtype=float)
    extent = (-0.5, g + 0.5, t.max() + 0.5, t.min() - 0.5) if len(t) else None
    im = ax.imshow(values, aspect="auto", interpolation="nearest", extent=extent, cmap="viridis")
    fig.colorbar(im, ax=ax, label="fraction of groups" if normalize else "groups")
    ax.set_xlabel("successful trajectories N")
    ax.set_ylabel(hist.index.name or "step")
    ax.set_xticks(range(g + 1))
    fig.tight_layout()
    return fig


def plot_certainty(dist: pd.DataFrame, bins: int = 20) -> Figure:
    """Histograms of lambda and p over groups (`analysis.certainty_distributions`)."""
    fig = Figure(figsize=(8, 3))
    ax_l, ax_p = fig.subplots(1, 2)
    ax_l.hist(dist["lam"], bins=bins, range=(0, 1))
    ax_l.set_xlabel("trajectory certainty lambda(p)")
    ax_l.set_ylabel("groups")
    ax_p.hist(dist["p"], bins=bins, range=(0, 1))
    ax_p.set_xlabel("success rate p = N / G")
    fig.tight_layout()
    return fig


def plot_gradient_ratio(table: pd.DataFrame | None = None, points: int = 199) -> Figure:
    """Eq. (7)'s rho(p) on (0, 1), with the empirical per-group ratios of
    `analysis.gradient_ratio_table` as points when given."""
    p = torch.linspace(0, 1, points + 2, dtype=torch.float64)[1:-1]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(p.numpy(), gradient_ratio(p).numpy(), label="rho(p), eq. (7)")
    if table is not None and not table.empty:
        ax.scatter(table["p"], table["rho_empirical"], s=12, c="C1", label="recorded groups")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("success rate p")
    ax.set_ylabel("MAPO / GRPO gradient ratio")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_tier_histograms(hists: dict[str, pd.DataFrame], normalize: bool = True) -> Figure:
    """The histogram drift of `plot_success_heatmap`, one panel per tier
    (`analysis.testbed.tier_histograms`)."""
    if not hists:
        raise ValueError("no tier histogram to draw")
    fig = Figure(figsize=(4 * len(hists), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(hists), sharey=True))
    for ax, (tier, hist) in zip(axes, hists.items()):
        values = hist.to_numpy(dtype=float)  # [T, G+1]
        if normalize:
            values = values / np.maximum(values.sum(1, keepdims=True), 1.0)
        t = np.asarray(hist.index, dtype=float)
        g = values.shape[1] - 1
        extent = (-0.5, g + 0.5, t.max() + 0.5, t.min() - 0.5)
        im = ax.imshow(values, aspect="auto", interpolation="nearest", extent=extent, vmin=0)
        ax.set_title(tier, fontsize=10)
        ax.set_xlabel("successful trajectories N")
        ax.set_xticks(range(g + 1))
    axes[0].set_ylabel(next(iter(hists.values())).index.name or "step")
    fig.colorbar(im, ax=list(axes), label="fraction of groups" if normalize else "groups")
    return fig


def plot_estimator_advantages(table: pd.DataFrame) -> Figure:
    """Mean advantage per certainty bucket N, successful and failed rollouts side by side, one
    line per estimator, with its min..max as a band (`analysis.testbed.estimator_advantages`)."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, outcome in zip(axes, ("success", "failure")):
        part = table[table["outcome"] == outcome]
        for i, (name, rows) in enumerate(part.groupby("estimator", sort=False)):
            rows = rows.sort_values("N")
            ax.plot(rows["N"], rows["mean"], "o-", color=f"C{i}", label=name)
            ax.fill_between(rows["N"], rows["min"], rows["max"], color=f"C{i}", alpha=0.15)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{outcome}ful rollouts" if outcome == "success" else "failed rollouts")
        ax.set_xlabel("successes in the group N")
    axes[0].set_ylabel("advantage (mean; band: min..max)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_regression(table: pd.DataFrame) -> Figure:
    """Per evaluation set: accuracy before / after RL, and the regression and gain rates
    (`analysis.testbed.regression_table`)."""
    sets = [name for name in table.index if name != "all"]
    x = np.arange(len(sets))
    fig = Figure(figsize=(10, 3.8))
    ax_acc, ax_rate = fig.subplots(1, 2)
    for ax, cols, labels in (
        (ax_acc, ("acc_before", "acc_after"), ("before RL", "after RL")),
        (ax_rate, ("regression_rate", "gain_rate"), ("regressed", "gained")),
    ):
        for i, (col, label) in enumerate(zip(cols, labels)):
            ax.bar(x + (i - 0.5) * 0.4, table.loc[sets, col].astype(float), 0.4, label=label)
        ax.set_xticks(x, sets, rotation=20, fontsize=8)
        ax.legend(fontsize=8)
    ax_acc.set_ylabel("greedy accuracy")
    ax_rate.set_ylabel("share of the set's prompts")
    if "all" in table.index:
        row = table.loc["all"]
        ax_rate.set_title(
            f"all sets: {row['regression_rate']:.1%} regressed, {row['gain_rate']:.1%} gained",
            fontsize=10,
        )
    fig.tight_layout()
    return fig
