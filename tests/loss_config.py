"""`plain_loss(**changes)`: a LossConfig for the loss tests.

LossConfig has no defaults of its own (conf/algorithm/ is their home); the tests spell out the
plain clipped surrogate here once: eps 0.2 / 0.2, no dual clip, no KL, token-mean, ppo_clip,
SAPO's published temperatures.
"""

from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.rollout_correction import RolloutCorrection

PLAIN = dict(
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    kl_coef=0.0,
    kl_estimator="k3",
    loss_agg="token-mean",
    policy_loss="ppo_clip",
    sapo_tau_pos=1.0,
    sapo_tau_neg=1.05,
)


def plain_loss(**changes) -> LossConfig:
    return LossConfig(**{**PLAIN, **changes})


def rc(mode: str, cap: float = 2.0, cap_lower: float | None = None) -> RolloutCorrection:
    """A RolloutCorrection for the tests: verl's default cap 2.0 unless a test says."""
    return RolloutCorrection(mode, cap, cap_lower)
