"""`<run dir>/report.png`: one image that says how a run went.

Written at the end of every training run (and logged to TensorBoard as the image `report`);
`python -m mapo.analysis.report RUN_DIR --plot` regenerates it from the run directory alone. Panels:

  reward and accuracy per RL step          | Fig. 1: successes per group, start vs end
  drift of that histogram over the steps   | p = N/G per group, start vs end
  lambda(p) per group, start vs end        | A^S / A^T / average before and after RL

Every panel comes from files of the run directory: `records/` (one parquet per step, see
`mapo.analysis.records`) and `metrics.json` (the before/after blocks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mapo.analysis.records import read_records
from mapo.analysis.tables import certainty_distributions, success_histogram

log = logging.getLogger(__name__)
REPORT_NAME = "report.png"
START, END = "#4C72B0", "#DD8452"  # start / before (blue), end / after (orange)


def _phases(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Masks and labels of the first and last fifth of the recorded steps (one step each
    when there are fewer than five)."""
    uniq = np.unique(steps)
    k = max(1, len(uniq) // 5)
    first, last = uniq[:k], uniq[-k:]
    label = lambda s: f"step {s[0]}" if len(s) == 1 else f"steps {s[0]}-{s[-1]}"  # noqa: E731
    return np.isin(steps, first), np.isin(steps, last), label(first), label(last)


def _empty(ax: Axes, title: str, why: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _curves(ax: Axes, df: pd.DataFrame) -> None:
    per_step = df.groupby("step")[["reward_overall", "reward_accuracy", "reward_format"]].mean()
    window = max(1, len(per_step) // 20)
    for col, label, color in (
        ("reward_overall", "reward (overall)", "C0"),
        ("reward_accuracy", "accuracy", "C2"),
        ("reward_format", "format", "C7"),
    ):
        raw = per_step[col]
        ax.plot(raw.index, raw, color=color, alpha=0.25, lw=1)
        smooth = raw.rolling(window, min_periods=1).mean()
        ax.plot(raw.index, smooth, color=color, lw=2, label=label)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean over rollouts")
    smoothing = f"mean of {window} steps" if window > 1 else "per step"
    ax.set_title(f"Training rollouts ({smoothing})", loc="left", fontweight="bold")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)


def _fig1(ax: Axes, hist: pd.DataFrame, first: np.ndarray, last: np.ndarray, labels) -> None:
    n = np.asarray(hist.columns, dtype=int)
    width = 0.4
    for offset, mask, label, color in (
        (-width / 2, first, labels[0], START),
        (width / 2, last, labels[1], END),
    ):
        counts = hist.loc[hist.index[mask]].sum(0).to_numpy(dtype=float)
        ax.bar(n + offset, counts / max(counts.sum(), 1.0), width, color=color, label=label)
    ax.set_xticks(n)
    ax.set_xlabel("successful rollouts N in a group of G")
    ax.set_ylabel("fraction of groups")
    ax.set_title("Successes per group (paper's Fig. 1)", loc="left", fontweight="bold")
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _drift(fig: Figure, ax: Axes, hist: pd.DataFrame) -> None:
    values = hist.to_numpy(dtype=float)
    values = values / np.maximum(values.sum(1, keepdims=True), 1.0)
    steps = np.asarray(hist.index, dtype=float)
    g = values.shape[1] - 1
    extent = (steps.min() - 0.5, steps.max() + 0.5, -0.5, g + 0.5)
    im = ax.imshow(
        values.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=extent,
        cmap="viridis",
        vmin=0,
        vmax=1,
    )
    fig.colorbar(im, ax=ax, label="fraction of groups", pad=0.01)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel("successful rollouts N")
    ax.set_yticks(range(g + 1))
    ax.set_title("Drift of the Fig. 1 histogram", loc="left", fontweight="bold")


def _distribution(ax: Axes, values: pd.Series, first, last, labels, what: str, title: str):
    """Side-by-side bars of 10 bins on [0, 1] (overlaid translucent bars blur into one)."""
    edges = np.linspace(0, 1, 11)
    width = 0.04
    for offset, mask, label, color in (
        (-width / 2, first, labels[0], START),
        (width / 2, last, labels[1], END),
    ):
        sel = values[mask].to_numpy(dtype=float)
        counts, _ = np.histogram(sel, bins=edges)
        centers = (edges[:-1] + edges[1:]) / 2
        ax.bar(
            centers + offset,
            counts / max(counts.sum(), 1),
            width,
            color=color,
            label=f"{label} (mean {sel.mean():.2f})",
        )
    ax.set_xlim(0, 1)
    ax.set_xticks(edges)
    ax.set_xlabel(what)
    ax.set_ylabel("fraction of groups")
    ax.set_title(title, loc="left", fontweight="bold")
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _accuracy(ax: Axes, metrics: dict[str, Any]) -> None:
    blocks = [(tag, metrics[tag]) for tag in ("before", "after") if tag in metrics]
    if not blocks:
        _empty(ax, "Evaluation", "no before/after evaluation in metrics.json")
        return
    ref = blocks[-1][1]
    names = [ref["in_domain"], *ref["out_of_domain"]]
    cols = ["A^S", "A^T", "Avg", *names]
    keys = [("A_S",), ("A_T",), ("A_avg",), *[("datasets", n) for n in names]]
    x = np.arange(len(cols), dtype=float)
    x[3:] += 0.6  # a gap between the summary columns and the per-dataset ones
    width = 0.8 / len(blocks)
    for i, (tag, block) in enumerate(blocks):
        vals = []
        for key in keys:
            v = block.get(key[0]) if len(key) == 1 else (block.get("datasets") or {}).get(key[1])
            vals.append(np.nan if v is None else 100 * v)
        pos = x + (i - (len(blocks) - 1) / 2) * width
        bars = ax.bar(pos, vals, width, color=START if tag == "before" else END, label=f"{tag} RL")
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=1)
    ax.set_xticks(x, cols, rotation=20, ha="right")
    ax.set_ylim(0, 112)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Evaluation: A^S in-domain, A^T out-of-domain", loc="left", fontweight="bold")
    ax.legend(fontsize=9, loc="upper right", ncols=2)
    ax.grid(axis="y", alpha=0.3)


def _title(run_dir: Path, metrics: dict[str, Any], df: pd.DataFrame | None) -> str:
    cfg = metrics.get("config") or {}
    name = cfg.get("experiment_name") or run_dir.name
    estimator = cfg.get("estimator") or (df["estimator"].iloc[0] if df is not None else "?")
    steps = f", {df['step'].nunique()} RL steps recorded" if df is not None else ""
    return f"{name} (advantage: {estimator}){steps}   {run_dir}"


def report_figure(run_dir: str | Path) -> Figure:
    """The report of one run directory as a Figure (no file written)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    try:
        df = read_records(run_dir)
    except FileNotFoundError:
        df = None
    df = None if df is None or df.empty else df
    fig = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    axes = fig.subplots(2, 3)
    if df is None:
        why = f"no rollout records in {run_dir / 'records'}"
        for ax, title in zip(
            axes.flat[:5],
            ("Training rollouts", "Successes per group", "Drift", "p = N/G", "lambda(p)"),
        ):
            _empty(ax, title, why)
    else:
        hist = success_histogram(df, by="step")
        steps_h = np.asarray(hist.index)
        first_h, last_h, *labels = _phases(steps_h)
        dist = certainty_distributions(df)
        first_d, last_d, *_ = _phases(dist["step"].to_numpy())
        _curves(axes[0, 0], df)
        _fig1(axes[0, 1], hist, first_h, last_h, labels)
        _drift(fig, axes[0, 2], hist)
        _distribution(
            axes[1, 0],
            dist["p"],
            first_d,
            last_d,
            labels,
            "success rate p = N / G",
            "Success rate p per group",
        )
        _distribution(
            axes[1, 1],
            dist["lam"],
            first_d,
            last_d,
            labels,
            "trajectory certainty lambda(p) = 1 - 4p(1-p)",
            "Certainty weight lambda per group",
        )
    _accuracy(axes[1, 2], metrics)
    fig.suptitle(_title(run_dir, metrics, df), fontsize=13, fontweight="bold")
    return fig


def write_report_image(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw `report_figure(run_dir)` into `out` (default `<run dir>/report.png`)."""
    out = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    fig = report_figure(run_dir)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)
    return out


def finish_report(run_dir: str | Path, loggers: Sequence[Any] = (), step: int = 0) -> Path | None:
    """End of a training run: write report.png and log it to every TensorBoard logger.

    A failure here must not cost the run that just finished: it is logged as a warning with
    the command that retries it, and None is returned."""
    try:
        out = write_report_image(run_dir)
        from PIL import Image

        image = np.asarray(Image.open(out).convert("RGB"))
        for logger in loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_image"):
                writer.add_image("report", image, step, dataformats="HWC")
                writer.flush()
        return out
    except Exception as err:  # noqa: BLE001 - reported, never silently dropped
        log.warning(
            "could not write %s (%s: %s); retry with `python -m mapo.analysis.report %s --plot`",
            Path(run_dir) / REPORT_NAME,
            type(err).__name__,
            err,
            run_dir,
        )
        return None
