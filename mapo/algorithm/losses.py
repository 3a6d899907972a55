"""The policy loss (registry in mapo/algorithm/policy_losses.py), KL estimators and loss aggregation.

Shapes: N rollouts in the micro-batch, L completion tokens (right-padded, `mask` marks real
tokens). Aggregation normalisers are those of the whole *mini-batch* (one optimizer step), so
that the micro-batch losses sum exactly to the mini-batch loss however it is split:

    token-mean           sum_{i,t} l_it / T_mb           (T_mb: valid tokens in the mini-batch)
    seq-mean-token-sum   sum_i (sum_t l_it) / S_mb       (S_mb: sequences in the mini-batch)
    seq-mean-token-mean  sum_i (sum_t l_it / T_i) / S_mb (T_i: valid tokens of sequence i)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.policy_losses import ALL_AGGREGATIONS as LOSS_AGGREGATIONS
from mapo.algorithm.policy_losses import MAX_LOG_RATIO as _MAX_LOG_RATIO
from mapo.algorithm.policy_losses import POLICY_LOSSES


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref: unbiased, high variance, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 (log pi - log pi_ref)^2: low variance, biased."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1 >= 0: unbiased and low-variance (Schulman's
    "Approximating KL divergence"; verl/EasyR1 `low_var_kl`). Clamped to [-10, 10] as verl
    does, so one very unlikely token cannot dominate the step."""
    log_r = (ref_logp - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return (log_r.exp() - log_r - 1.0).clamp(-10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


@dataclass(frozen=True)
class Normalizer:
    """Mini-batch totals that every micro-batch divides by (see module docstring)."""

    tokens: float  # T_mb: valid completion tokens in the mini-batch (summed over ranks / world)
    seqs: float  # S_mb: sequences in the mini-batch

    @staticmethod
    def of(mask: Tensor) -> Normalizer:
        seqs = int((mask.sum(-1) > 0).sum())  # verl's agg_loss: empty rows leave the count
        return Normalizer(tokens=float(mask.sum().clamp_min(1)), seqs=float(max(seqs, 1)))


def aggregate(values: Tensor, mask: Tensor, mode: str, norm: Normalizer) -> Tensor:
    """Reduce per-token values [N, L] to a scalar that sums across micro-batches."""
    m = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * m).sum() / norm.tokens
    if mode == "seq-mean-token-sum":
        return (values * m).sum() / norm.seqs
    if mode == "seq-mean-token-mean":
        per_seq = (values * m).sum(-1) / m.sum(-1).clamp_min(1)  # [N]
        return per_seq.sum() / norm.seqs
    raise ValueError(f"unknown loss aggregation {mode!r}; known: {list(LOSS_AGGREGATIONS)}")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    m = mask.to(x.dtype)
    return float((x * m).sum() / m.sum().clamp_min(1))


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    *,
    ref_logp: Tensor | None = None,
    norm: Normalizer | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The policy loss `cfg.policy_loss` (mapo/algorithm/policy_losses.py; ppo_clip is GRPO's clipped
    surrogate, MAPO eq. 1) plus beta * KL(pi || pi_ref), aggregated.

    logp, old_logp, ref_logp, mask: [N, L]; advantages: [N] (one per sequence).
    weights: optional detached [N, L] rollout-correction weights (mapo/algorithm/rollout_correction.py)
    multiplying the policy-gradient term only; the KL term and the normaliser are unchanged
    (a rejection mode instead passes a `mask` with the rejected tokens removed).
    Returns the loss to minimise (already divided by the mini-batch normaliser) and metrics.
    """
    norm = norm or Normalizer.of(mask)
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [N, 1], broadcast over tokens
    pg, flags = POLICY_LOSSES[cfg.policy_loss].fn(logp, old_logp, adv, mask, cfg)
    if weights is not None:
        pg = pg * weights.detach().to(pg.dtype)
    loss = aggregate(pg, mask, cfg.loss_agg, norm)

    with torch.no_grad():
        ratio = (logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()  # [N, L]
        metrics = {k: _masked_mean(v.float(), mask) for k, v in flags.items()}
        metrics.update(
            {
                "approx_kl_old": _masked_mean(kl_k3(logp, old_logp), mask),
                "ratio_mean": _masked_mean(ratio, mask),
                "ratio_max": float(ratio.masked_fill(~mask.bool(), 0).max()) if mask.any() else 1.0,
                "ratio_min": float(ratio.masked_fill(~mask.bool(), 1e9).min())
                if mask.any()
                else 1.0,
                "pg_loss": float(loss.detach()),
            }
        )

    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (the frozen reference's log-probs)")
        kl = KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp)  # [N, L]
        kl_loss = aggregate(kl, mask, cfg.loss_agg, norm)
        loss = loss + cfg.kl_coef * kl_loss
        metrics["kl_ref"] = _masked_mean(kl.detach(), mask)
        metrics["kl_loss"] = float(kl_loss.detach())  # float() of a grad tensor warns
    return loss, metrics
