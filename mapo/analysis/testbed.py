"""The SynthMix testbed's analysis (docs/synth_mix.md): pure functions over a run's rollout
records (`mapo.analysis.records.read_records`) and its metrics.json.

- `tier_histograms`: the paper's Fig. 1 (successes per group N) for each tier over training;
- `estimator_advantages`: the advantage every estimator assigns, recomputed on the run's own
  rewards, per certainty bucket N and outcome (the paper's Fig. 3 drawn from data);
- `regression_table`: per evaluation set, accuracy before and after RL and the prompts RL broke
  (right before, wrong after) or fixed (the paper's Fig. 7 claim).
Their figures are in `mapo.analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mapo.algorithm.advantages import compute_advantages
from mapo.analysis.tables import GROUP_KEY, success_histogram

REGRESSION_COLUMNS = [
    "acc_before",
    "acc_after",
    "prompts",
    "right_before",
    "regressed",
    "gained",
    "regression_rate",
    "gain_rate",
]


def tier_histograms(df: pd.DataFrame, by: str = "step") -> dict[str, pd.DataFrame]:
    """``success_histogram`` of each tier (the records' ``source``), keyed by tier name; every
    histogram has the same N columns 0..G."""
    g_max = int(df["group_size"].max())
    return {
        str(tier): success_histogram(part, by=by).reindex(columns=range(g_max + 1), fill_value=0)
        for tier, part in df.groupby("source", sort=True)
    }


def estimator_advantages(
    df: pd.DataFrame, estimators: Sequence[str], *, eps: float, std: str, seed: int = 0
) -> pd.DataFrame:
    """Per estimator, bucket N (successes in the group) and outcome ("success" / "failure"):
    the mean, min and max advantage it assigns on the recorded rewards, and the rollout count.

    Only complete groups (all G rollouts recorded) are used, with the run's own success flag;
    ``eps`` and ``std`` should be the run's ``algorithm.eps`` / ``algorithm.std``. ``seed``
    seeds the draw of lambda for ``mapo_random``."""
    rows = df.sort_values([*GROUP_KEY, "rollout_index"], kind="stable")
    size = rows.groupby(GROUP_KEY, sort=False)["reward_overall"].transform("size")
    rows = rows[size == rows["group_size"]]
    if rows.empty:
        raise ValueError("no complete group in the records (every group lacks rollouts)")
    group_ids = torch.tensor(rows.groupby(GROUP_KEY, sort=False).ngroup().to_numpy())
    rewards = torch.tensor(rows["reward_overall"].to_numpy(), dtype=torch.float64)
    success = torch.tensor(rows["success"].to_numpy(dtype=bool))
    outcome = np.where(rows["success"].to_numpy(dtype=bool), "success", "failure")
    parts = []
    for name in estimators:
        generator = torch.Generator().manual_seed(seed)
        adv = compute_advantages(
            name, rewards, group_ids, success=success, eps=eps, std=std, generator=generator
        )
        parts.append(
            pd.DataFrame(
                {
                    "estimator": name,
                    "N": rows["n_success"].to_numpy(),
                    "outcome": outcome,
                    "advantage": adv.numpy(),
                }
            )
        )
    table = pd.concat(parts).groupby(["estimator", "N", "outcome"], sort=False)["advantage"]
    return table.agg(["mean", "min", "max", "count"]).reset_index()


def regression_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per evaluation set and one for all of them (``all``): greedy accuracy before and
    after RL, prompts, right before, regressed, gained and the two rates, from metrics.json
    (which needs both evaluations: ``eval.before`` and ``eval.after`` on)."""
    after = metrics.get("after") or {}
    block = after.get("regression")
    if not block or not metrics.get("before"):
        raise ValueError(
            "metrics.json has no regression block: the run needs eval.before=true and "
            "eval.after=true"
        )
    acc_before, acc_after = metrics["before"]["datasets"], after["datasets"]
    rows = {}
    for name, rates in block["datasets"].items():
        rows[name] = {"acc_before": acc_before.get(name), "acc_after": acc_after.get(name), **rates}
    rows["all"] = {"acc_before": np.nan, "acc_after": np.nan, **block["all"]}
    table = pd.DataFrame.from_dict(rows, orient="index")[REGRESSION_COLUMNS]
    table.index.name = "dataset"
    return table
