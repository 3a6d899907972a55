"""What the estimator does per certainty bucket, next to what GRPO would have done.

For every N = 0..G present in a step (N successes in a group of G), the mean advantage of the
successful and of the failed rollouts, for the estimator in use (``mech/N{n}/...``) and for
plain GRPO on the same rewards (``mech_grpo/N{n}/...``): the sign and size of what each
bucket is pushed by, so a MAPO run shows the difference it makes. Also per step the count of
reversion groups (every rollout but one succeeds and the one miss answered right with a wrong
format: r = [0.9, 1, 1, 1]) and of mirrored pairs (two groups with the same GRPO advantages
and different mean rewards: [0, .1, .1, .1] vs [.9, 1, 1, 1]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mapo.algorithm.advantages import AdvantageResult, compute_advantages, is_success

MIRROR_DIGITS = 9  # GRPO advantages equal to this many decimals count as the same


def _bucket_means(prefix: str, adv: Tensor, n_of_row: Tensor, success: Tensor) -> dict:
    out: dict[str, float] = {}
    for n in sorted(set(n_of_row.tolist())):
        rows = n_of_row == n
        for name, mask in (("adv_success", rows & success), ("adv_fail", rows & ~success)):
            if bool(mask.any()):
                out[f"{prefix}/N{n}/{name}"] = float(adv[mask].mean())
        out[f"{prefix}/N{n}/abs_mean"] = float(adv[rows].abs().mean())
    return out


def reversion_groups(index: Tensor, success: Tensor, accuracy: Tensor) -> int:
    """Groups of size > 1 with exactly one miss, a format-only one (right answer).
    ``index``: each rollout's group position 0..K-1 (GroupStats.index)."""
    k = int(index.max()) + 1 if index.numel() else 0
    size = torch.zeros(k, dtype=torch.float64).index_add_(
        0, index, torch.ones(len(index), dtype=torch.float64)
    )
    misses = ~success
    miss_count = torch.zeros(k, dtype=torch.float64).index_add_(0, index, misses.double())
    right_miss = (misses & (accuracy == 1)).double()
    right_count = torch.zeros(k, dtype=torch.float64).index_add_(0, index, right_miss)
    return int(((size > 1) & (miss_count == 1) & (right_count == 1)).sum())


def mirrored_pairs(index: Tensor, rewards: Tensor, grpo: Tensor) -> int:
    """Pairs of groups with the same multiset of GRPO advantages but different mean rewards."""
    buckets: dict[tuple, list[float]] = {}
    for k in sorted(set(index.tolist())):
        rows = index == k
        key = tuple(sorted(round(float(a), MIRROR_DIGITS) for a in grpo[rows]))
        if any(a != 0 for a in key):
            mu = round(float(rewards[rows].to(torch.float64).mean()), MIRROR_DIGITS)
            buckets.setdefault(key, []).append(mu)
    pairs = 0
    for mus in buckets.values():
        pairs += sum(mus[i] != mus[j] for i in range(len(mus)) for j in range(i + 1, len(mus)))
    return pairs


def mechanism_metrics(
    result: AdvantageResult,
    rewards: Tensor,
    group_ids: Tensor,
    accuracy: Tensor,
    *,
    eps: float,
    std: str,
) -> dict[str, float]:
    """Per-bucket advantages of the estimator and of GRPO, reversion and mirror counts."""
    s = result.stats
    r = rewards.detach().to(torch.float64).cpu()
    success = is_success(r)
    grpo = compute_advantages("grpo", r, group_ids.cpu(), eps=eps, std=std).to(torch.float64)
    index = s.index.cpu()
    n_of_row = s.n_success.round().to(torch.int64).cpu()[index]
    out = _bucket_means(
        "mech", result.advantages.detach().to(torch.float64).cpu(), n_of_row, success
    )
    out.update(_bucket_means("mech_grpo", grpo, n_of_row, success))
    out["certainty/reversion_groups"] = float(reversion_groups(index, success, accuracy.cpu()))
    out["certainty/mirrored_pairs"] = float(mirrored_pairs(index, r, grpo))
    return out
