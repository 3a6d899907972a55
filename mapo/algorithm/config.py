"""The algorithm's configuration type and the config error every check raises.

Hydra's `conf/algorithm/*.yaml` maps 1:1 onto `AlgorithmConfig` (`AlgorithmConfig.from_dict`);
its rules live with every other rule in mapo/pipeline/validate.py (`check_algorithm`), run
before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.rollout_correction import RolloutCorrection


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class AlgorithmConfig:
    """The ``algorithm`` block of the config, key for key (conf/algorithm/mapo.yaml documents
    each key and holds the defaults; there are none here). Checked by
    mapo/pipeline/validate.py check_algorithm."""

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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlgorithmConfig:
        """From the YAML block (unknown or missing keys fail, naming them); the rules are
        checked by mapo/pipeline/validate.py (check_algorithm)."""
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - known), sorted(known - set(d))
        if unknown:
            raise ConfigError(f"unknown algorithm keys {unknown}; known: {sorted(known)}")
        if missing:
            raise ConfigError(f"algorithm lacks {missing}; see conf/algorithm/mapo.yaml")
        values = dict(d)
        if not isinstance(values["rollout_correction"], RolloutCorrection):
            values["rollout_correction"] = _rollout_correction_of(values["rollout_correction"])
        return cls(**values)

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
