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

Correction (a detached weight w on the policy-gradient term; docs/rollout_correction.md):
    token_tis   w_t = min(rho_t, C)
    token_mask  w_t = 1[1/C <= rho_t <= C]
    seq_tis     w_i = min(g_i, C)                 g_i = exp(mean_t delta_t) (geometric mean)
    seq_mask    w_i = 1[1/C <= g_i <= C]
Only torch is imported, so this module sits below every other one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

MODES = ("none", "token_tis", "token_mask", "seq_tis", "seq_mask")
_MAX_LOG_RATIO = 20.0  # exp() beyond this is meaningless; clamp before exp


@dataclass(frozen=True)
class RolloutCorrection:
    mode: str = "none"  # none | token_tis | token_mask | seq_tis | seq_mask
    cap: float = 2.0  # C > 1: truncation cap (tis) or acceptance band [1/C, C] (mask)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"algorithm.rollout_correction.mode={self.mode!r} is unknown; use one of "
                f"{list(MODES)} (none disables the correction)"
            )
        if not isinstance(self.cap, (int, float)) or not self.cap > 1:
            raise ValueError(
                f"algorithm.rollout_correction.cap={self.cap!r} must be > 1: the weights are "
                "min(ratio, C) or the band [1/C, C], and C <= 1 would cut on-policy tokens; "
                "verl's default is 2.0, TRL's 3.0"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def sequence_level(self) -> bool:
        return self.mode.startswith("seq_")

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None) -> RolloutCorrection:
        """From the YAML block; unknown keys are an error naming the known ones."""
        d = dict(d or {})
        known = {f.name for f in fields(RolloutCorrection)}
        if set(d) - known:
            raise ValueError(
                f"unknown algorithm.rollout_correction keys {sorted(set(d) - known)}; "
                f"known: {sorted(known)}"
            )
        return RolloutCorrection(**d)


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


def _seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp_min(1)


def correction(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cfg: RolloutCorrection
) -> tuple[Tensor, Tensor]:
    """(w, affected), both [N, L]: the detached weight on each token's policy-gradient term and
    whether the rule changed it (truncated or masked). Sequence modes broadcast per sequence."""
    delta = log_ratio(trainer_logp, sampler_logp, mask)
    valid = mask.bool()
    if cfg.sequence_level:
        stat = _seq_mean(delta, mask).exp().unsqueeze(-1).expand_as(delta)  # g_i on every token
    else:
        stat = delta.exp()
    if cfg.mode.endswith("_tis"):
        affected = stat > cfg.cap
        weight = stat.clamp(max=cfg.cap)
    else:
        affected = (stat > cfg.cap) | (stat < 1.0 / cfg.cap)
        weight = (~affected).to(delta.dtype)
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
        return {"trainer_logprob_sum": self.trainer_seq_logp,
                "sampler_logprob_sum": self.sampler_seq_logp}  # fmt: skip


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
