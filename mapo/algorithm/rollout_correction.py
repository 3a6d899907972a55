"""Sampler/trainer mismatch: the per-step metrics and `algorithm.rollout_correction`.

The rollout engine samples y ~ mu (vLLM in bf16 with its own kernels, or HF generate) and
reports log mu(y_t) for each sampled token; the trainer's own log-prob of the same token at the
start of the step is log pi_old(y_t). Per token the log-ratio is

    delta_t = log pi_old(y_t) - log mu(y_t),     rho_t = exp(delta_t).

Metrics (namespace `mismatch/`, all over valid tokens of the step):
    k1 = mean(-delta_t), k3 = mean(rho_t - 1 - delta_t)   estimates of KL(mu || pi_old)
    abs_log_ratio_mean / _max = mean / max |delta_t|
    ratio_outside_2x = fraction of tokens with rho_t outside [1/2, 2]
    seq_log_ratio_mean / _abs_max = mean / max |.| over sequences of sum_t delta_t
    histogram `mismatch/log_ratio` of delta_t.

Correction (docs/rollout_correction.md; each mode computes what the named peer's mode computes):
    token_tis     w_t = min(rho_t, C)                                   verl token IS, TRL token_truncate
    seq_tis       w_i = min(exp(clamp(sum_t delta_t, +-20)), C)         verl sequence IS, TRL sequence_truncate
    seq_geo_tis   w_i = min(exp(mean_t delta_t), C)                     ours (a departure: no peer truncates it)
    token_mask    token t leaves the loss mask unless lo <= rho_t <= C  verl rejection, level token
    seq_mask      sequence i leaves it unless lo <= P_i <= C,           verl rejection, level sequence
                  P_i = exp(clamp(sum_t delta_t, +-20))
    seq_geo_mask  the same on exp(clamp(mean_t delta_t, +-20))          verl rejection, level geometric
    token_mis     w_t = rho_t 1[lo <= rho_t <= C]                       TRL token_mask
    seq_mis       w_i = R_i 1[lo <= R_i <= C], R_i = exp(sum_t delta_t) TRL sequence_mask
The rejection modes change the loss mask (rejected tokens leave the normaliser and the KL
term, as verl's modified response mask does); the others weight the policy-gradient term only.
lo = cap_lower, or the peer's default when null: 1/C for verl's rejection, none for TRL's.
Only torch is imported, so this module sits below every other one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TRUNCATE = ("token_tis", "seq_tis", "seq_geo_tis")
REJECT = ("token_mask", "seq_mask", "seq_geo_mask")  # verl: rejected tokens leave the mask
MASKED_IS = ("token_mis", "seq_mis")  # TRL: accepted tokens keep their ratio as the weight
MODES = ("none", *TRUNCATE, *REJECT, *MASKED_IS)
_MAX_LOG_RATIO = 20.0  # verl's SAFETY_BOUND: exp() beyond this is meaningless; clamp before exp


@dataclass(frozen=True)
class RolloutCorrection:
    # Checked by mapo/pipeline/validate.py (check_algorithm), the one home of the rules.
    mode: str  # MODES; the module docstring says what each computes
    cap: float  # C > 1: truncation cap (tis) or the band's upper end (mask, mis)
    cap_lower: float | None  # the band's lower end; null: 1/C (mask) or none (mis)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def sequence_level(self) -> bool:
        return self.mode.startswith("seq_")

    @property
    def rejects(self) -> bool:
        """Whether the mode removes tokens from the loss mask instead of weighting them."""
        return self.mode in REJECT

    def lower(self) -> float:
        """The band's lower end: cap_lower, or the peer's default (1/C verl, 0 TRL)."""
        if self.cap_lower is not None:
            return float(self.cap_lower)
        return 1.0 / self.cap if self.rejects else 0.0


def sampler_logprobs(rows: Sequence[Sequence[float]] | None, mask: Tensor) -> Tensor | None:
    """The engine's per-token log-probs as [N, L] aligned with `mask` (0 past each end), or
    None when the engine gave none. A row whose length differs from its completion is an
    error: the tokens and their log-probs would be misaligned."""
    if rows is None:
        return None
    lengths = mask.sum(-1).tolist()
    if len(rows) != len(lengths):
        raise ValueError(f"{len(rows)} rows of sampler log-probs for {len(lengths)} completions")
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        if len(row) != n:
            raise ValueError(
                f"completion {i}: {len(row)} sampler log-probs for {n} tokens; the engine must "
                "report one log-prob per sampled token (mapo/types.py Completions)"
            )
        out[i, :n] = torch.as_tensor(list(row), dtype=torch.float32)
    return out.to(mask.device)


def log_ratio(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """delta_t = log pi_old - log mu, [N, L], 0 on padding."""
    delta = (trainer_logp.detach().float() - sampler_logp.float()).clamp(
        -_MAX_LOG_RATIO, _MAX_LOG_RATIO
    )
    return delta * mask.to(delta.dtype)


def _seq_stat(raw: Tensor, mask: Tensor, how: str) -> Tensor:
    """[N, L] -> [N, 1]: the sum or the mean over each sequence's valid tokens."""
    total = raw.sum(-1, keepdim=True)
    if how == "sum":
        return total
    return total / mask.sum(-1, keepdim=True).clamp_min(1).to(raw.dtype)


def _ratio(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: str) -> Tensor:
    """The ratio each mode compares with its cap, [N, L] (sequence modes: one value per row,
    broadcast). The clamps are the peers' own: verl clamps the token log-ratio, the log-sum and
    the log-mean at +-20 before exp; TRL exponentiates the raw sum."""
    valid = mask.bool()
    raw = torch.where(valid, trainer_logp.detach().float() - sampler_logp.float(), 0.0)
    bound = _MAX_LOG_RATIO
    if mode in ("token_tis", "token_mask"):
        log_r = raw.clamp(-bound, bound)
    elif mode == "token_mis":
        log_r = raw
    elif mode in ("seq_tis", "seq_mask"):
        log_r = _seq_stat(raw, mask, "sum").clamp(-bound, bound)
    elif mode == "seq_mis":
        log_r = _seq_stat(raw, mask, "sum")
    elif mode == "seq_geo_tis":
        log_r = _seq_stat(raw, mask, "mean")
    else:  # seq_geo_mask
        log_r = _seq_stat(raw, mask, "mean").clamp(-bound, bound)
    return log_r.exp().expand_as(raw)


def correction(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cfg: RolloutCorrection
) -> tuple[Tensor, Tensor]:
    """(w, affected), both [N, L]: the detached weight on each token's policy-gradient term and
    whether the rule changed it (truncated or masked). For the rejection modes (`cfg.rejects`)
    w is the 0/1 acceptance, which the step multiplies into the loss mask instead."""
    valid = mask.bool()
    ratio = _ratio(trainer_logp, sampler_logp, mask, cfg.mode)
    if cfg.mode in TRUNCATE:
        affected = ratio > cfg.cap
        weight = ratio.clamp(max=cfg.cap)
    else:
        affected = (ratio > cfg.cap) | (ratio < cfg.lower())
        keep = ratio if cfg.mode in MASKED_IS else torch.ones_like(ratio)
        weight = keep.masked_fill(affected, 0.0)
    return weight.masked_fill(~valid, 0.0).detach(), affected & valid


def correction_metrics(weight: Tensor, affected: Tensor, mask: Tensor) -> dict[str, float]:
    """Fractions of tokens / sequences the rule changed and the mean weight (valid tokens)."""
    m = mask.to(weight.dtype)
    tokens = float(m.sum().clamp_min(1))
    return {
        "rollout_correction/affected_token_frac": float(affected.sum()) / tokens,
        "rollout_correction/affected_seq_frac": float(affected.any(-1).float().mean()),
        "rollout_correction/weight_mean": float((weight * m).sum()) / tokens,
    }


def mismatch_metrics(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor
) -> tuple[dict[str, float], Tensor]:
    """The `mismatch/*` scalars (module docstring) and the per-token log-ratios (histogram)."""
    delta = log_ratio(trainer_logp, sampler_logp, mask)
    valid = mask.bool()
    d = delta[valid].double()
    if d.numel() == 0:
        return {}, d
    seq = delta.double().sum(-1)
    out = {
        "mismatch/k1": float((-d).mean()),
        "mismatch/k3": float((d.exp() - 1 - d).mean()),
        "mismatch/abs_log_ratio_mean": float(d.abs().mean()),
        "mismatch/abs_log_ratio_max": float(d.abs().max()),
        "mismatch/ratio_outside_2x": float((d.abs() > math.log(2.0)).double().mean()),
        "mismatch/seq_log_ratio_mean": float(seq.mean()),
        "mismatch/seq_log_ratio_abs_max": float(seq.abs().max()),
    }
    return out, d.float()


@dataclass
class StepMismatch:
    """What one step logs about the mismatch (module docstring), and per-rollout sums."""

    scalars: dict[str, float]  # mismatch/* and, with a correction, rollout_correction/*
    log_ratio: Tensor  # delta_t of the valid tokens, for the histogram
    trainer_seq_logp: Tensor  # [N] sum_t log pi_old(y_t)
    sampler_seq_logp: Tensor  # [N] sum_t log mu(y_t)

    def seq_logprobs(self) -> dict[str, Tensor]:
        """The rollout-record columns (mapo/analysis/records.py)."""
        return {
            "trainer_logprob_sum": self.trainer_seq_logp,
            "sampler_logprob_sum": self.sampler_seq_logp,
        }


def step_mismatch(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cfg: RolloutCorrection
) -> StepMismatch:
    """Everything the step logs from pi_old's and the sampler's log-probs, [N, L] each."""
    scalars, delta = mismatch_metrics(trainer_logp, sampler_logp, mask)
    if cfg.enabled:
        weight, affected = correction(trainer_logp, sampler_logp, mask, cfg)
        scalars.update(correction_metrics(weight, affected, mask))
    m = mask.to(torch.float64)
    return StepMismatch(
        scalars,
        delta.cpu(),
        (trainer_logp.detach().double() * m).sum(-1).cpu(),
        (sampler_logp.double() * m).sum(-1).cpu(),
    )
