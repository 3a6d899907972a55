"""Validated algorithm configuration: every rule checked at construction, before any model loads.

Hydra's `conf/algorithm/*.yaml` maps 1:1 onto `AlgorithmConfig` (`AlgorithmConfig.from_dict`),
so a typo'd key or an impossible batch split fails in the first second of a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS
from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.losses import KL_ESTIMATORS, LOSS_AGGREGATIONS
from mapo.algorithm.policy_losses import POLICY_LOSSES, policy_loss_error
from mapo.algorithm.rollout_correction import MASKED_IS, MODES, REJECT, TRUNCATE, RolloutCorrection


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class AlgorithmConfig:
    """The ``algorithm`` block of the config, key for key (conf/algorithm/mapo.yaml documents
    each key and holds the defaults; there are none here). Every rule is checked at
    construction."""

    estimator: str  # advantage estimator: grpo, dr_grpo, gpg, treerpo, apd, mapo, mapo_random
    std: str  # group std: "population" (paper eq. 2) or "unbiased" (EasyR1, authors' code)
    eps: float  # added to the std / mean denominators
    group_size: int  # G: rollouts per prompt
    rollout_batch_size: int  # prompts per RL step
    mini_batch_size: int  # prompts per optimizer step
    micro_batch_size: int  # rollouts per forward/backward (memory knob; no effect on math)
    max_tokens_per_micro_batch: int | None  # a token budget per forward instead; null: rows
    ppo_epochs: int  # passes over the rollout batch
    shuffle: bool  # shuffle rollouts across mini-batches (groups stay keyed by id)
    clip_low: float  # eps_low
    clip_high: float  # eps_high
    dual_clip: float | None  # verl's clip_ratio_c, null disables
    kl_coef: float  # beta; 0 skips the reference model
    kl_estimator: str  # k1 | k2 | k3
    loss_agg: str  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    policy_loss: str  # ppo_clip | gspo | gspo_token | cispo | sapo (policy_losses.py)
    sapo_tau_pos: float  # SAPO gate temperatures by the advantage's sign
    sapo_tau_neg: float
    # sampler/trainer mismatch correction (rollout_correction.py); a mapping in YAML
    rollout_correction: RolloutCorrection
    # DAPO dynamic sampling: keep groups whose mean overall reward lies in (filter_low, filter_high)
    # and sample more prompts until the batch is full, at most `filter_max_tries` generations.
    filter_groups: bool
    filter_low: float
    filter_high: float
    filter_max_tries: int

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(
                f"algorithm.estimator={self.estimator!r} is unknown; known: {sorted(ADVANTAGE_ESTIMATORS)}"
            )
        if self.std not in ("population", "unbiased"):
            raise ConfigError(f"algorithm.std={self.std!r}; use 'population' or 'unbiased'")
        if self.group_size < 2:
            raise ConfigError(
                f"algorithm.group_size={self.group_size}: group-relative advantages need at least "
                "2 rollouts per prompt (one rollout has nothing to be relative to); the paper uses 12"
            )
        for name in ("rollout_batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"algorithm.{name}={getattr(self, name)} must be >= 1")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError(
                f"algorithm.rollout_batch_size={self.rollout_batch_size} is not a multiple of "
                f"mini_batch_size={self.mini_batch_size}: each optimizer step must see whole "
                "prompts' groups; e.g. the paper uses 512 and 128"
            )
        if (self.mini_batch_size * self.group_size) % self.micro_batch_size:
            raise ConfigError(
                f"algorithm.micro_batch_size={self.micro_batch_size} must divide mini_batch_size x "
                f"group_size = {self.mini_batch_size * self.group_size} rollouts so every "
                "micro-batch has the same size"
            )
        budget = self.max_tokens_per_micro_batch
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ConfigError(
                f"algorithm.max_tokens_per_micro_batch={budget!r} must be a positive integer "
                "(tokens per forward, at least the longest prompt + rollout.max_new_tokens) or null"
            )
        if not 0 <= self.filter_low < self.filter_high <= 1:
            raise ConfigError(
                f"algorithm.filter_low/high = {self.filter_low}/{self.filter_high} must satisfy "
                "0 <= low < high <= 1 (DAPO keeps groups with mean reward in (0.01, 0.99))"
            )
        if self.filter_max_tries < 1:
            raise ConfigError("algorithm.filter_max_tries must be >= 1")
        if not isinstance(self.rollout_correction, RolloutCorrection):
            rc = _rollout_correction_of(self.rollout_correction)
            object.__setattr__(self, "rollout_correction", rc)
        check_rollout_correction(self.rollout_correction)
        check_loss(self.loss_config())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlgorithmConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown algorithm keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def loss_config(self) -> LossConfig:
        """The loss settings under their YAML names (mapo/algorithm/loss_config.py)."""
        return LossConfig(**{f.name: getattr(self, f.name) for f in fields(LossConfig)})

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps per RL step: (rollout / mini) batches x PPO epochs."""
        return self.rollout_batch_size // self.mini_batch_size * self.ppo_epochs

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0


def check_loss(loss: LossConfig) -> None:
    """The loss settings' rules (each message names the value to set)."""
    if loss.clip_low <= 0 or loss.clip_high <= 0:
        raise ConfigError(
            f"algorithm.clip_low={loss.clip_low} and clip_high={loss.clip_high} must be "
            "positive; the paper uses 0.2 / 0.2, DAPO 0.2 / 0.28"
        )
    if loss.clip_low >= 1:
        raise ConfigError(f"algorithm.clip_low={loss.clip_low} must be < 1 (the floor is 1 - it)")
    if loss.dual_clip is not None and loss.dual_clip <= 1:
        raise ConfigError(f"algorithm.dual_clip={loss.dual_clip} must be > 1 (verl: 3.0) or null")
    if loss.kl_coef < 0:
        raise ConfigError(f"algorithm.kl_coef={loss.kl_coef} must be >= 0 (0: no KL term)")
    if loss.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(
            f"algorithm.kl_estimator={loss.kl_estimator!r} is unknown; known: {sorted(KL_ESTIMATORS)}"
        )
    if loss.loss_agg not in LOSS_AGGREGATIONS:
        raise ConfigError(
            f"algorithm.loss_agg={loss.loss_agg!r} is unknown; known: {list(LOSS_AGGREGATIONS)}"
        )
    if loss.sapo_tau_pos <= 0 or loss.sapo_tau_neg <= 0:
        raise ConfigError(
            f"algorithm.sapo_tau_pos={loss.sapo_tau_pos} and sapo_tau_neg={loss.sapo_tau_neg} "
            "must be > 0 (the SAPO paper uses 1.0 and 1.05)"
        )
    if loss.policy_loss not in POLICY_LOSSES:
        raise ConfigError(
            f"algorithm: unknown policy_loss {loss.policy_loss!r}; known: {sorted(POLICY_LOSSES)}"
        )
    problem = policy_loss_error(loss.policy_loss, loss.loss_agg, loss.dual_clip)
    if problem is not None:
        raise ConfigError(f"algorithm: {problem}")


def _rollout_correction_of(block: Mapping[str, Any] | None) -> RolloutCorrection:
    """From the YAML block; unknown keys are an error naming the known ones."""
    d = dict(block or {})
    known = {f.name for f in fields(RolloutCorrection)}
    if set(d) - known:
        raise ConfigError(
            f"unknown algorithm.rollout_correction keys {sorted(set(d) - known)}; "
            f"known: {sorted(known)}"
        )
    missing = sorted(known - set(d))
    if missing:
        raise ConfigError(
            f"algorithm.rollout_correction lacks {missing}; see conf/algorithm/mapo.yaml"
        )
    return RolloutCorrection(**d)


def check_rollout_correction(rc: RolloutCorrection) -> None:
    """algorithm.rollout_correction's rules (docs/rollout_correction.md)."""
    name = "algorithm.rollout_correction"
    if rc.mode not in MODES:
        raise ConfigError(
            f"{name}.mode={rc.mode!r} is unknown; use one of {list(MODES)} "
            "(none disables the correction)"
        )
    if isinstance(rc.cap, bool) or not isinstance(rc.cap, (int, float)) or not rc.cap > 1:
        raise ConfigError(
            f"{name}.cap={rc.cap!r} must be > 1: the weights are min(ratio, C) or the band "
            "[lo, C], and C <= 1 would cut on-policy tokens; verl's default is 2.0, TRL's 3.0"
        )
    if rc.cap_lower is None:
        return
    if rc.mode in TRUNCATE:
        raise ConfigError(
            f"{name}.cap_lower={rc.cap_lower!r} applies to the mask modes "
            f"{list(REJECT + MASKED_IS)}; {rc.mode} truncates from above only (as verl's and "
            "TRL's do): set cap_lower=null"
        )
    low = rc.cap_lower
    if isinstance(low, bool) or not isinstance(low, (int, float)) or not 0 <= low < rc.cap:
        raise ConfigError(
            f"{name}.cap_lower={low!r} must be in [0, cap={rc.cap}) or null (the peer's "
            "default: 1/cap for the verl rejection modes, no lower bound for token_mis / "
            "seq_mis as in TRL)"
        )
