"""The loss settings, one dataclass under one name from the YAML to the loss functions.

Built by ``AlgorithmConfig.loss_config()`` from ``conf/algorithm/`` (their one home; no code
defaults here) and checked by mapo/pipeline/validate.py; every policy loss (policy_losses.py), the KL term and the
aggregation (losses.py) read the fields by the YAML's names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossConfig:
    clip_low: float  # eps_low: ratio floor 1 - clip_low (ppo_clip, gspo*)
    clip_high: float  # eps_high: ratio ceiling 1 + clip_high (ppo_clip, gspo*); cispo's cap
    dual_clip: float | None  # c > 1 caps -A * ratio for A < 0 at -A * c (ppo_clip only)
    kl_coef: float  # beta; 0 skips the reference model entirely
    kl_estimator: str  # k1 | k2 | k3 (losses.py KL_ESTIMATORS)
    loss_agg: str  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    policy_loss: str  # a name in policy_losses.POLICY_LOSSES
    sapo_tau_pos: float  # SAPO gate temperature, A > 0
    sapo_tau_neg: float  # SAPO gate temperature, A <= 0
