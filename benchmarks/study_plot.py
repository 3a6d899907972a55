"""The study's figure (docs/study.md): training curves with bands and the final metrics.

Top row: the success rate of the training rollouts per step (all tiers, then each tier), mean
over the seeds with a 95 % percentile-bootstrap band (resampling the seeds), each seed's curve
smoothed by a centred rolling mean over SMOOTH steps. Bottom row: per method, the mean and
95 % bootstrap CI of the final metrics (the study table).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SMOOTH = 5  # steps in the rolling mean of a seed's success-rate curve
SHOWN = ("acc_tiers", "acc_hard", "acc_ood", "regression_rate", "gain_rate")


def run_curves(run_dir: Path, tiers: Sequence[str]) -> pd.DataFrame:
    """A run's success rate of its training rollouts per step: column ``all``, then one per tier
    of ``tiers`` (the records' ``source``), smoothed over SMOOTH steps."""
    from mapo.analysis.records import read_records

    df = read_records(run_dir)[["step", "source", "success"]]
    curves = df.groupby(["step", "source"])["success"].mean().unstack()
    curves = curves.reindex(columns=list(tiers))
    curves.insert(0, "all", df.groupby("step")["success"].mean())
    return curves.rolling(SMOOTH, center=True, min_periods=1).mean()


def band(curves: list[pd.DataFrame], column: str, resamples: int, seed: int = 0):
    """(steps, mean, low, high) of ``column`` over the seeds' curves (steps all seeds share)."""
    steps = sorted(set.intersection(*(set(c.index) for c in curves)))
    x = np.stack([c.loc[steps, column].to_numpy(dtype=float) for c in curves])  # [S, T]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # [R, T]
    low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
    return np.asarray(steps), np.nanmean(x, axis=0), low, high


def plot(
    table: dict,
    curves: dict[str, list[pd.DataFrame]],
    labels: dict[str, str],
    path: Path,
    resamples: int = 2000,
) -> None:
    """``curves``: method -> one run_curves frame per seed; ``labels``: method -> its name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    columns = list(next(iter(curves.values()))[0].columns)
    width = max(len(columns), len(SHOWN))
    fig = Figure(figsize=(3.4 * width, 7))
    axes = fig.subplots(2, width, squeeze=False)
    for ax, column in zip(axes[0], columns):
        for i, (method, runs) in enumerate(curves.items()):
            steps, mean, low, high = band(runs, column, resamples)
            ax.plot(steps, mean, color=f"C{i}", lw=1.2, label=labels[method])
            ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(f"training success rate: {column}", fontsize=9)
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    methods = list(table["methods"])
    for ax, metric in zip(axes[1], SHOWN):
        for i, method in enumerate(methods):
            mean, lo, hi = table["methods"][method][metric]
            ax.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], fmt="o", color=f"C{i}", capsize=4)
        ax.set_xticks(range(len(methods)), [labels[m] for m in methods], rotation=45, fontsize=8)
        ax.set_title(f"after RL: {metric}", fontsize=9)
    for ax in [*axes[0][len(columns) :], *axes[1][len(SHOWN) :]]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
