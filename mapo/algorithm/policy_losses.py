"""Policy losses behind one registry: `algorithm.policy_loss` picks the per-token objective.

Every loss takes the current log-probs `logp` [N, L] (with gradient), the frozen `old_logp`
[N, L] (pi_old), the advantages `adv` [N, 1] (one per sequence, any estimator) and the mask
[N, L], and returns the per-token loss to *minimise* [N, L] plus boolean [N, L] maps for the
clip-fraction metrics. Aggregation (mapo/algorithm/losses.py `aggregate`) and the KL term are common to
all of them; each loss lists the aggregation modes its paper defines, and any other mode is
rejected at config time (`policy_loss_error`, checked by mapo/pipeline/validate.py). Formulas and references: docs/policy_losses.md
(papers cited by section; equation numbers are given only where checked).

Notation: r_t = pi_theta / pi_old per token, sg[.] = stop-gradient (detach), |y_i| = valid
tokens of sequence i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mapo.algorithm.loss_config import LossConfig
from mapo.registry import Registry

# exp() of a log-ratio beyond this overflows fp32 or is meaningless; clamp before exp.
MAX_LOG_RATIO = 20.0
ALL_AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, LossConfig], tuple[Tensor, dict]]


@dataclass(frozen=True)
class PolicyLoss:
    fn: PolicyLossFn
    aggregations: tuple[str, ...]  # the modes the loss's paper defines
    dual_clip: bool = False  # whether algorithm.dual_clip means anything to it


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy_loss")


def register_policy_loss(name: str, aggregations: tuple[str, ...], dual_clip: bool = False):
    """Decorator: register ``fn`` as ``algorithm.policy_loss=name``, defined (by its paper) for
    the loss aggregations ``aggregations``; a taken name fails."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES.add(name, PolicyLoss(fn, aggregations, dual_clip))
        return fn

    return decorator


def policy_loss_error(name: str, aggregation: str, dual_clip: float | None) -> str | None:
    """What is wrong with this loss / aggregation / dual clip combination, or None: an
    aggregation its paper does not define, dual clip where it does not apply. (The name must
    be registered; an unknown one fails, listing the known ones.)"""
    spec = POLICY_LOSSES[name]
    if aggregation not in spec.aggregations:
        return (
            f"policy_loss={name} is defined with loss_agg in {list(spec.aggregations)}, got "
            f"{aggregation!r}; set algorithm.loss_agg={spec.aggregations[0]}"
        )
    if dual_clip is not None and not spec.dual_clip:
        return (
            f"dual_clip={dual_clip} applies to policy_loss=ppo_clip only; set "
            f"algorithm.dual_clip=null for policy_loss={name}"
        )
    return None


def _log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    return (logp - old_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _seq_mean_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """[N, L] -> [N, 1]: log s_i, the mean of the raw token log-ratios over each sequence's
    valid tokens (no per-token clamp: verl and TRL average the raw values). Padding is
    selected out, not multiplied, so a non-finite value there cannot leak in."""
    valid = mask.bool()
    x = torch.where(valid, logp - old_logp, 0.0)
    return x.sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)


@register_policy_loss("ppo_clip", ALL_AGGREGATIONS, dual_clip=True)
def ppo_clip(logp, old_logp, adv, mask, p: LossConfig):
    """GRPO's clipped surrogate (MAPO paper eq. 1; PPO, Schulman et al. 2017, arXiv
    1707.06347, eq. 7 L^CLIP), with clip-higher (DAPO, arXiv 2503.14476: separate eps_low /
    eps_high) and dual clip (Ye et al. 2020, arXiv 1912.09729):
        l_t = max(-r_t A, -clip(r_t, 1 - eps_low, 1 + eps_high) A);  A < 0: min(l_t, -c A)."""
    ratio = _log_ratio(logp, old_logp).exp()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high))
    flags = {
        "clip_frac_high": (ratio > 1 + p.clip_high) & (adv > 0),
        "clip_frac_low": (ratio < 1 - p.clip_low) & (adv < 0),
    }
    if p.dual_clip is not None:
        # for A < 0 a huge ratio would give an unbounded loss; cap it at -A * c
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * p.dual_clip), loss)
        flags["clip_frac_dual"] = (ratio > p.dual_clip) & (adv < 0)
    return loss, flags


def _gspo_clipped(s: Tensor, adv: Tensor, p: LossConfig) -> tuple[Tensor, dict]:
    loss = torch.maximum(-adv * s, -adv * s.clamp(1.0 - p.clip_low, 1.0 + p.clip_high))
    flags = {
        "clip_frac_high": (s > 1 + p.clip_high) & (adv > 0),
        "clip_frac_low": (s < 1 - p.clip_low) & (adv < 0),
    }
    return loss, flags


@register_policy_loss("gspo", ("seq-mean-token-mean",))
def gspo(logp, old_logp, adv, mask, p: LossConfig):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, section "GSPO"): the length-normalised
    sequence ratio s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t log r_t), clipped per
    sequence:  J = 1/G sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i).
    The sequence loss is returned on every token of the sequence, so seq-mean-token-mean
    aggregation is exactly the paper's mean over sequences. Gradient flows through s_i.
    log s_i is clamped at 10 (value and gradient) as verl's `compute_policy_loss_gspo` does;
    TRL (`importance_sampling_level="sequence"`) does not clamp, and equals this below 10."""
    s = _seq_mean_log_ratio(logp, old_logp, mask).clamp(max=10.0).exp()  # [N, 1]
    loss, flags = _gspo_clipped(s, adv, p)
    return loss.expand_as(logp), {k: v.expand_as(logp) for k, v in flags.items()}


@register_policy_loss("gspo_token", ("seq-mean-token-mean",))
def gspo_token(logp, old_logp, adv, mask, p: LossConfig):
    """GSPO-token (arXiv 2507.18071, section "GSPO-token"): s_i,t = sg[s_i] pi_t / sg[pi_t]
    (value s_i, gradient s_i grad log pi_t), per-token clipping, 1/|y_i| sum_t then 1/G sum_i.
    With one advantage per sequence (every estimator here) it equals GSPO in value and
    gradient, as the paper notes; it exists so token-level advantages can use it later."""
    log_s = _seq_mean_log_ratio(logp, old_logp, mask).detach()  # sg[log s_i], [N, 1]
    s_t = (logp - logp.detach() + log_s).clamp(max=10.0).exp()  # [N, L], verl's clamp
    return _gspo_clipped(s_t, adv, p)


@register_policy_loss("cispo", ("token-mean",))
def cispo(logp, old_logp, adv, mask, p: LossConfig):
    """CISPO (MiniMax-M1, arXiv 2506.13585, section "CISPO"): clip the importance weight,
    not the update, and keep every token's gradient:
        J = 1/sum_i|o_i| sum_i sum_t sg[r_hat_t] A_i log pi_t,  r_hat_t = min(r_t, 1 + eps_high).
    The paper sets eps_low^IS large (no lower bound) and tunes eps_high only; here
    eps_high = algorithm.clip_high, so the cap is 1 + clip_high. The loss value is
    -r_hat A log pi (a gradient carrier, not a surrogate of the objective's value)."""
    ratio = _log_ratio(logp, old_logp).exp().detach()
    weight = ratio.clamp(max=1.0 + p.clip_high)
    return -weight * adv * logp, {"clip_frac_high": ratio > 1 + p.clip_high}


@register_policy_loss("sapo", ("seq-mean-token-mean",))
def sapo(logp, old_logp, adv, mask, p: LossConfig):
    """SAPO (Gao et al. 2025, arXiv 2511.20347, section "SAPO"): a soft gate instead of the
    hard clip, J = 1/G sum_i 1/|y_i| sum_t f_t(r_t) A_i with
        f_t(r) = sigmoid(tau_t (r - 1)) * 4 / tau_t,  tau_t = tau_pos if A_i > 0 else tau_neg.
    f(1) = 2 / tau and f'(1) = 1: on-policy the gradient is the plain policy gradient; away
    from r = 1 the gate's slope 4 sigma (1 - sigma) decays smoothly."""
    ratio = _log_ratio(logp, old_logp).exp()
    tau = torch.full_like(adv, p.sapo_tau_neg).masked_fill(adv > 0, p.sapo_tau_pos)  # [N, 1]
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return -gate * adv, {}
