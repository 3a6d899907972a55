"""Group-relative advantage estimators, keyed by group id.

Every estimator sees the same per-group statistics (mu, sigma, N, p, lambda) computed once by
scatter ops over the group ids, so groups may arrive in any order and with unequal sizes (after
DAPO filtering, or uneven across ranks). There is no Python loop over groups here; the tests keep
a plain loop as the oracle.

Notation (MAPO paper, arXiv 2509.18849, section 3):
    mu, sigma   group mean / std of the overall reward                  eq. (2)
    N, p        successes in the group (success = overall == 1), N / G eq. (3)
    lambda(p)   1 - 4 p (1 - p): trajectory certainty                  eq. (5)
    MAPO        (1 - lambda) * (r - mu) / sigma + lambda * (r - mu) / mu   eq. (6)

To change a formula, edit its registered function below. There is one code path:
`compute_advantages_with_stats` (the trainer calls it, for the group stats it logs and records);
`compute_advantages(name, ...)` is its thin wrapper that returns the advantages only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from mapo.registry import Registry

StdMode = Literal["population", "unbiased"]


@dataclass
class GroupStats:
    """Per-group statistics; index K is the dense group index, N the number of rollouts."""

    index: Tensor  # [N] int64, dense group index of each rollout (0..K-1)
    keys: Tensor  # [K] the original group ids, sorted
    size: Tensor  # [K] G_k, rollouts in the group
    mu: Tensor  # [K] mean overall reward
    sigma: Tensor  # [K] std of the overall reward (population or unbiased)
    n_success: Tensor  # [K] N_k = #(success)
    p: Tensor  # [K] N_k / G_k
    lam: Tensor  # [K] lambda(p) = 1 - 4 p (1 - p); mapo_random replaces it with U(0, 1) draws
    constant: Tensor  # [K] bool, every reward of the group is equal

    def centered(self, r: Tensor) -> Tensor:
        """r - mu [N], exactly 0 in constant groups (the float mean can be one ulp off, which
        eps = 0 would turn into advantages of +-1)."""
        return torch.where(
            self.expand(self.constant), torch.zeros_like(r), r - self.expand(self.mu)
        )

    def expand(self, per_group: Tensor) -> Tensor:
        """[K] -> [N]: each rollout gets its own group's value (by id, never by position)."""
        return per_group[self.index]


@dataclass
class AdvantageResult:
    advantages: Tensor  # [N]
    stats: GroupStats
    # Per-rollout extras for logging, e.g. "apd" (the APD term, whose magnitude explodes as mu -> 0).
    extras: dict[str, Tensor] = field(default_factory=dict)


class Estimator(Protocol):
    def __call__(
        self, r: Tensor, s: GroupStats, *, eps: float, generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def register_advantage(name: str) -> Callable[[Estimator], Estimator]:
    """Register an estimator under `name` (the YAML value `algorithm.estimator: name`)."""
    return ADVANTAGE_ESTIMATORS.register(name)


def is_success(overall: Tensor) -> Tensor:
    """A rollout counts toward N (p = N / G) when its overall reward is exactly 1: correct
    answer AND correct format. The one definition of success, used everywhere."""
    return overall == 1


def certainty_weight(p: Tensor) -> Tensor:
    """lambda(p) = 1 - 4 p (1 - p), eq. (5): 1 when every rollout agrees, 0 at p = 1/2."""
    return 1.0 - 4.0 * p * (1.0 - p)


def gradient_ratio(p: Tensor) -> Tensor:
    """rho(p) = (1 - lambda) + lambda * sqrt((1 - p) / p), eq. (7): MAPO/GRPO gradient ratio
    for Bernoulli rewards (appendix C)."""
    lam = certainty_weight(p)
    return (1.0 - lam) + lam * torch.sqrt((1.0 - p) / p)


def group_stats(rewards: Tensor, group_ids: Tensor, success: Tensor, *, std: StdMode) -> GroupStats:
    """Scatter-reduce rewards into per-group statistics (float64 for exactness)."""
    keys, index = torch.unique(group_ids, sorted=True, return_inverse=True)  # [K], [N]
    k = keys.numel()
    r = rewards.to(torch.float64)
    size = torch.zeros(k, dtype=torch.float64, device=r.device).index_add_(
        0, index, torch.ones_like(r)
    )
    mu = torch.zeros_like(size).index_add_(0, index, r) / size
    sq = torch.zeros_like(size).index_add_(0, index, (r - mu[index]) ** 2)
    if std == "population":  # the paper's eq. (2): 1/G
        var = sq / size
    elif std == "unbiased":  # torch.std's default, EasyR1/verl and the authors' code: 1/(G-1)
        # A group of one has no spread; define its variance as 0 rather than 0/0.
        var = torch.where(size > 1, sq / (size - 1).clamp_min(1), torch.zeros_like(sq))
    else:
        raise ValueError(f"std must be 'population' or 'unbiased', got {std!r}")
    n_success = torch.zeros_like(size).index_add_(0, index, success.to(torch.float64))
    p = n_success / size
    lo = torch.full_like(size, float("inf")).scatter_reduce_(0, index, r, "amin")
    hi = torch.full_like(size, float("-inf")).scatter_reduce_(0, index, r, "amax")
    constant = lo == hi
    return GroupStats(
        index=index,
        keys=keys,
        size=size,
        mu=mu,
        sigma=torch.where(constant, 0.0, var.sqrt()),
        n_success=n_success,
        p=p,
        lam=certainty_weight(p),
        constant=constant,
    )


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (only reached by constant groups, whose num is 0)."""
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, 1.0, den))


def _require_nonnegative_mean(name: str, s: GroupStats) -> None:
    if bool((s.mu < 0).any()):
        worst = float(s.mu.min())
        raise ValueError(
            f"advantage estimator {name!r} divides by the group mean reward (APD, eq. 4) and "
            f"needs non-negative rewards, but a group has mean {worst:.4g}. Use a reward "
            "configuration with rewards in [0, 1] (reward.format_weight in [0, 1], no negative "
            "penalties) or choose algorithm.estimator=grpo."
        )


@register_advantage("grpo")
def grpo(r, s, *, eps, generator):
    """GRPO z-score (r - mu) / (sigma + eps). Shao et al. 2024, DeepSeekMath (arXiv 2402.03300)."""
    return _safe_div(s.centered(r), s.expand(s.sigma) + eps), {}


@register_advantage("dr_grpo")
def dr_grpo(r, s, *, eps, generator):
    """Dr. GRPO: r - mu, no std normalisation. Liu et al. 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective" (arXiv 2503.20783)."""
    return s.centered(r), {}


@register_advantage("gpg")
def gpg(r, s, *, eps, generator):
    """GPG: alpha * (r - mu). Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning
    Baseline for Model Reasoning" (arXiv 2504.02546).

    alpha is GPG's valid-sample rescale B / (B - M): B rollouts in the batch, M of them in groups
    whose rewards are all equal (zero advantage, "invalid"). It is computed over the batch passed
    in, so alpha >= 1; with no valid group alpha is 1 (all advantages are 0 anyway). (The MAPO
    paper's Fig. 3 quotes alpha = 0.6, which is GPG's validity threshold for resampling, not a
    scale; we implement the scale.)
    """
    valid = s.expand(s.sigma) > 0  # [N]
    n_valid = valid.sum()
    alpha = r.numel() / n_valid if n_valid > 0 else torch.tensor(1.0, dtype=r.dtype)
    return alpha * s.centered(r), {"gpg_alpha": torch.full_like(r, float(alpha))}


@register_advantage("treerpo")
def treerpo(r, s, *, eps, generator):
    """TreeRPO: (r - mu) / (mu (1 - mu) + eps), the Bernoulli variance in place of sigma.
    Yang et al. 2025, "TreeRPO: Tree Relative Policy Optimization" (arXiv 2506.05183)."""
    mu = s.expand(s.mu)
    return _safe_div(s.centered(r), mu * (1.0 - mu) + eps), {}


def _apd(r: Tensor, s: GroupStats, eps: float) -> Tensor:
    """Advantage Percent Deviation (r - mu) / (mu + eps), eq. (4).

    Near mu = 0 it is large by design: with G = 12 and a single format-only success
    (r = 0.1, the rest 0) that rollout gets (0.1 - 0.1/12) / (0.1/12) = 11. The trainer logs its
    magnitude (`advantage/apd_abs_max`). An all-zero group gives 0, not 0/0.
    """
    return _safe_div(s.centered(r), s.expand(s.mu) + eps)


@register_advantage("apd")
def apd(r, s, *, eps, generator):
    """APD alone (the paper's Tab. 2 ablation "APD without TCR"). MAPO paper, eq. (4)."""
    _require_nonnegative_mean("apd", s)
    a = _apd(r, s, eps)
    return a, {"apd": a}


def _mix(r: Tensor, s: GroupStats, eps: float, lam: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    z, _ = grpo(r, s, eps=eps, generator=None)
    a = _apd(r, s, eps)
    lam_n = s.expand(lam)  # [N], keyed by group id
    return (1.0 - lam_n) * z + lam_n * a, {"apd": a, "grpo": z}


@register_advantage("mapo")
def mapo(r, s, *, eps, generator):
    """MAPO, eq. (6): (1 - lambda(p)) * GRPO + lambda(p) * APD, lambda(p) = 1 - 4p(1-p).
    Zhang et al. 2025, "MAPO: Mixed Advantage Policy Optimization" (arXiv 2509.18849)."""
    _require_nonnegative_mean("mapo", s)
    return _mix(r, s, eps, s.lam)


@register_advantage("mapo_random")
def mapo_random(r, s, *, eps, generator):
    """The paper's Tab. 2 "Rand" ablation: eq. (6) with lambda ~ U(0, 1) drawn per group
    (from `generator` when given, for reproducibility) instead of lambda(p)."""
    _require_nonnegative_mean("mapo_random", s)
    s.lam = torch.rand(s.keys.numel(), generator=generator, dtype=torch.float64).to(s.mu.device)
    return _mix(r, s, eps, s.lam)


def compute_advantages_with_stats(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    success: Tensor | None = None,
    eps: float,
    std: StdMode,
    generator: torch.Generator | None = None,
) -> AdvantageResult:
    """Like `compute_advantages`, also returning the per-group stats and logging extras."""
    estimator = ADVANTAGE_ESTIMATORS[name]  # an unknown name fails, listing the known ones
    if rewards.ndim != 1 or group_ids.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            "rewards and group_ids must be flat 1-D tensors of equal length, got shapes "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if success is None:
        success = is_success(rewards)
    elif success.shape != rewards.shape:
        raise ValueError(
            f"success has shape {tuple(success.shape)}, rewards {tuple(rewards.shape)}"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; check the reward function's output")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    stats = group_stats(rewards, group_ids, success, std=std)
    adv, extras = estimator(rewards.to(torch.float64), stats, eps=eps, generator=generator)
    return AdvantageResult(
        advantages=adv.to(out_dtype),
        stats=stats,
        extras={k: v.to(out_dtype) for k, v in extras.items()},
    )


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    success: Tensor | None = None,
    eps: float,
    std: StdMode,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-rollout advantages [N] for flat `rewards` [N] grouped by `group_ids` [N].

    name: a registered estimator (grpo, dr_grpo, gpg, treerpo, apd, mapo, mapo_random).
    success: which rollouts count toward N in p = N / G; defaults to `rewards == 1`.
    std: "population" (1/G, the paper's eq. 2) or "unbiased" (1/(G-1), EasyR1/verl).
    """
    return compute_advantages_with_stats(
        name, rewards, group_ids, success=success, eps=eps, std=std, generator=generator
    ).advantages
