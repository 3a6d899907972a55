"""Analysis of rollout records (`mapo.records.read_records`): pure functions over the DataFrame.

A group is identified by (step, group_id). Per-group columns (mu, sigma, p, lam, n_success,
group_size) are repeated on each of its rows; the functions here take them from the first row.
Plots of these tables live in `mapo.plots`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mapo.advantages import gradient_ratio

GROUP_KEY = ["step", "group_id"]
GROUP_COLUMNS = ["source", "prompt_id", "group_size", "n_success", "p", "lam", "mu", "sigma"]


def group_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group: step, group_id, source, prompt_id, group_size, n_success, p, lam, mu,
    sigma, estimator, and n_rows (rollouts actually recorded)."""
    if df.empty:
        raise ValueError("the rollout records are empty")
    grouped = df.groupby(GROUP_KEY, sort=True)
    out = grouped[[*GROUP_COLUMNS, "estimator"]].first()
    out["n_rows"] = grouped.size()
    return out.reset_index()


def success_histogram(
    df: pd.DataFrame, by: str = "step", steps_per_epoch: int | None = None
) -> pd.DataFrame:
    """Counts of groups per number of successes N = 0..G (the paper's Fig. 1), per step or epoch.

    Returns a DataFrame indexed by step (or epoch = step // steps_per_epoch, steps 0-based) with
    integer columns N = 0..G_max (the largest group size); empty bins are 0.
    """
    groups = group_table(df)
    if by == "step":
        key = groups["step"]
    elif by == "epoch":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ValueError("success_histogram(by='epoch') needs steps_per_epoch >= 1")
        key = groups["step"] // steps_per_epoch
    else:
        raise ValueError(f"by must be 'step' or 'epoch', got {by!r}")
    g_max = int(groups["group_size"].max())
    hist = pd.crosstab(key.rename(by), groups["n_success"].rename("N"))
    hist = hist.reindex(columns=range(g_max + 1), fill_value=0)
    hist.columns.name = "N"
    return hist.astype(np.int64)


def certainty_distributions(df: pd.DataFrame) -> pd.DataFrame:
    """Per-group trajectory certainty: step, group_id, source, group_size, n_success, p (= N/G)
    and lam (lambda(p) = 1 - 4p(1-p); for the mapo_random ablation the recorded U(0,1) draw)."""
    cols = ["step", "group_id", "source", "group_size", "n_success", "p", "lam"]
    return group_table(df)[cols]


def _reversion(df: pd.DataFrame, col: str, high_reward: float, penalty: float) -> dict:
    near = df["reward_overall"] >= high_reward
    rev = near & (df[col] < -penalty)
    return {
        "reversion_rollouts": int(rev.sum()),
        "reversion_groups": int(df.loc[rev, GROUP_KEY].drop_duplicates().shape[0]),
        "near_perfect_min_adv": float(df.loc[near, col].min()) if near.any() else np.nan,
    }


def _mirror_pairs(df: pd.DataFrame, col: str, min_mean_gap: float, tol: float) -> int:
    """Group pairs of the same step and size, both with non-constant rewards, whose mean rewards
    differ by >= min_mean_gap, yet whose sorted advantages agree within tol."""
    rows = df.sort_values([*GROUP_KEY, col], kind="stable")
    sizes = rows.groupby(GROUP_KEY, sort=False)["reward_overall"].transform("size")
    pairs = 0
    for (_, g), part in rows.groupby([rows["step"], sizes], sort=False):
        adv = part[col].to_numpy().reshape(-1, g)  # [K, G] sorted advantages per group
        r = part["reward_overall"].to_numpy().reshape(-1, g)  # [K, G]
        varied = (r.max(1) - r.min(1)) > 0  # constant groups carry no signal: skip them
        adv, mean = adv[varied], r[varied].mean(1)
        same = np.abs(adv[:, None, :] - adv[None, :, :]).max(-1) <= tol  # [K, K]
        apart = np.abs(mean[:, None] - mean[None, :]) >= min_mean_gap  # [K, K]
        pairs += int(np.triu(same & apart, k=1).sum())
    return pairs


def reversion_mirror_counts(
    df: pd.DataFrame,
    *,
    high_reward: float = 0.9,
    penalty: float = 1.0,
    min_mean_gap: float = 0.5,
    tol: float = 1e-6,
) -> pd.DataFrame:
    """How often advantage reversion and advantage mirror (paper sections 1 and 3.2) occur in
    the recorded groups, under plain GRPO (`advantage_grpo`) and the run's estimator
    (`advantage`). Returns one row per advantage ("grpo" and the run's estimator name).

    Precise definitions used here (the paper gives only examples):

    Reversion: a rollout whose overall reward is high in absolute terms
    (reward_overall >= high_reward) yet whose advantage is below -penalty, i.e. a harsh penalty
    for a near-perfect answer, which only a tiny group std can produce. The paper's example
    [0.9, 1, 1, 1] gets -1.73 under GRPO, harsher than the -1 that the low-certainty
    [0.1, 0.1, 1, 1] gives its 0.1 answers. MAPO softens it (-1.32 at G = 4, about -1.08 at
    G = 12, population std) but does not remove it at penalty = 1; `near_perfect_min_adv`
    (the most negative advantage of any near-perfect rollout) shows the severity.
    Columns: reversion_rollouts, reversion_groups (groups with >= 1 such rollout),
    near_perfect_min_adv.

    Mirror: a pair of groups of the same step and size, neither with constant rewards, whose
    mean rewards differ by at least min_mean_gap (an easy and a hard prompt), yet whose sorted
    advantage vectors agree within tol: semantically distinct cases normalised identically.
    The paper's pair [0, 0.1, 0.1, 0.1] / [0.9, 1, 1, 1] is a shift by 0.9, not a reflection,
    and the z-score is shift invariant, so GRPO gives both [-1.73, 0.58, 0.58, 0.58]; MAPO
    does not (lambda = 1 vs 0.25). (A reflection r -> 1 - r would negate and reverse the
    advantages instead, so we define the mirror by its outcome.) Column: mirror_pairs.
    """
    if df.empty:
        raise ValueError("the rollout records are empty")
    estimator = "+".join(sorted(df["estimator"].unique()))
    rows = {}
    for label, col in (("grpo", "advantage_grpo"), (estimator, "advantage")):
        if label in rows:  # a GRPO run: both columns hold the same advantages
            continue
        rows[label] = {
            "groups": int(df[GROUP_KEY].drop_duplicates().shape[0]),
            "rollouts": len(df),
            **_reversion(df, col, high_reward, penalty),
            "mirror_pairs": _mirror_pairs(df, col, min_mean_gap, tol),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "advantage"
    return out


def gradient_ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Eq. (7)'s MAPO/GRPO gradient ratio rho(p) against the recorded advantages, per group.

    Only groups with binary rewards (every reward_overall in {0, 1}) and 0 < N < G qualify
    (appendix C's setting; elsewhere both advantages vanish or the theory does not apply).
    Columns: step, group_id, estimator, group_size, n_success, p, lam, sigma,
      rho_theory    (1 - lambda(p)) + lambda(p) sqrt((1 - p) / p), eq. (7);
      rho_recorded  (1 - lam) + lam * sigma / mu with the recorded lam and sigma: eq. (6)'s
                    exact ratio; it differs from rho_theory with the unbiased std
                    (sigma * sqrt(G / (G - 1))) or the mapo_random lambda draws;
      rho_empirical mean over the group's rows of |advantage| / |advantage_grpo|.
    The theory columns describe MAPO's mixing; for a GRPO run rho_empirical is 1.
    """
    binary = df["reward_overall"].isin([0.0, 1.0])
    groups = group_table(df)
    all_binary = binary.groupby([df["step"], df["group_id"]]).all().to_numpy()
    keep = all_binary & (groups["n_success"] > 0).to_numpy()
    keep &= (groups["n_success"] < groups["group_size"]).to_numpy()
    groups = groups[keep]
    if groups.empty:
        return pd.DataFrame(
            columns=["step", "group_id", "estimator", "group_size", "n_success", "p", "lam"]
            + ["sigma", "rho_theory", "rho_recorded", "rho_empirical"]
        )
    nonzero = df[df["advantage_grpo"] != 0]
    ratio = (nonzero["advantage"].abs() / nonzero["advantage_grpo"].abs()).groupby(
        [nonzero["step"], nonzero["group_id"]]
    )
    emp = ratio.mean().rename("rho_empirical").reset_index()
    out = groups.merge(emp, on=GROUP_KEY, how="left")
    p = torch.tensor(out["p"].to_numpy(), dtype=torch.float64)
    out["rho_theory"] = gradient_ratio(p).numpy()
    out["rho_recorded"] = (1 - out["lam"]) + out["lam"] * out["sigma"] / out["mu"]
    cols = ["step", "group_id", "estimator", "group_size", "n_success", "p", "lam", "sigma"]
    return out[[*cols, "rho_theory", "rho_recorded", "rho_empirical"]].reset_index(drop=True)
