"""Validated algorithm configuration: every rule checked at construction, before any model loads.

Hydra's `conf/algorithm/*.yaml` maps 1:1 onto `AlgorithmConfig` (`AlgorithmConfig.from_dict`),
so a typo'd key or an impossible batch split fails in the first second of a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS
from mapo.algorithm.losses import LossConfig
from mapo.algorithm.rollout_correction import RolloutCorrection


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class AlgorithmConfig:
    estimator: str = (
        "mapo"  # advantage estimator: grpo, dr_grpo, gpg, treerpo, apd, mapo, mapo_random
    )
    std: str = (
        "unbiased"  # group std: "population" (paper eq. 2) or "unbiased" (EasyR1, authors' code)
    )
    eps: float = 1e-6  # added to the std / mean denominators
    # Defaults equal conf/algorithm/mapo.yaml, the source of truth (tests/test_configs.py checks)
    group_size: int = 12  # G: rollouts per prompt (paper: 12, also 8)
    rollout_batch_size: int = 512  # prompts per RL step (paper: 512)
    mini_batch_size: int = 128  # prompts per optimizer step (paper: 128 -> 4 updates per rollout)
    micro_batch_size: int = 8  # rollouts per forward/backward (memory knob; no effect on math)
    # token budget per forward/backward instead of a fixed row count (mapo/models/micro_batching.py);
    # null keeps micro_batch_size
    max_tokens_per_micro_batch: int | None = None
    ppo_epochs: int = 1  # passes over the rollout batch
    shuffle: bool = True  # shuffle rollouts across mini-batches (groups stay keyed by id)
    clip_low: float = 0.2  # eps_low
    clip_high: float = 0.3  # eps_high (the authors' code; DAPO: 0.28)
    dual_clip: float | None = 3.0  # verl's clip_ratio_c (the authors' code), null disables
    kl_coef: float = 1e-2  # beta; 0 skips the reference model (DAPO)
    kl_estimator: str = "k3"  # k1 | k2 | k3 (low-variance, the paper's)
    loss_agg: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    policy_loss: str = "ppo_clip"  # ppo_clip | gspo | gspo_token | cispo | sapo (policy_losses.py)
    sapo_tau_pos: float = 1.0  # SAPO gate temperatures by the advantage's sign
    sapo_tau_neg: float = 1.05
    # sampler/trainer mismatch correction (mapo/algorithm/rollout_correction.py); a mapping in YAML
    rollout_correction: RolloutCorrection = field(default_factory=RolloutCorrection)
    # DAPO dynamic sampling: keep groups whose mean overall reward lies in (filter_low, filter_high)
    # and sample more prompts until the batch is full, at most `filter_max_tries` generations.
    filter_groups: bool = False
    filter_low: float = 0.01
    filter_high: float = 0.99
    filter_max_tries: int = 3

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
            try:
                rc = RolloutCorrection.from_dict(self.rollout_correction)
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from None
            object.__setattr__(self, "rollout_correction", rc)
        try:
            self.loss_config()
        except ValueError as err:
            raise ConfigError(f"algorithm: {err}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlgorithmConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown algorithm keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def loss_config(self) -> LossConfig:
        return LossConfig(
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            dual_clip=self.dual_clip,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            aggregation=self.loss_agg,
            policy_loss=self.policy_loss,
            sapo_tau_pos=self.sapo_tau_pos,
            sapo_tau_neg=self.sapo_tau_neg,
        )

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps per RL step: (rollout / mini) batches x PPO epochs."""
        return self.rollout_batch_size // self.mini_batch_size * self.ppo_epochs

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0
