"""Sampler/trainer mismatch metrics and algorithm.rollout_correction (mapo/algorithm/rollout_correction.py),
against hand computations; the corrected loss against the formula of docs/rollout_correction.md."""

import math

import pytest
import torch
from loss_config import plain_loss, rc

from mapo.algorithm.config import ConfigError
from mapo.algorithm.losses import policy_loss
from mapo.algorithm.rollout_correction import (
    MODES,
    RolloutCorrection,
    correction,
    mismatch_metrics,
    sampler_logprobs,
    step_mismatch,
)
from mapo.pipeline.quickrun import algorithm_config

# two sequences: 3 tokens and 2 tokens (one pad); log-ratios delta = log pi_old - log mu
DELTA = torch.tensor([[math.log(3.0), 0.0, math.log(0.25)], [math.log(1.5), math.log(1.2), 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
SAMPLER = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -0.3, -9.0]])
TRAINER = SAMPLER + DELTA


def test_token_tis_by_hand():
    w, hit = correction(TRAINER, SAMPLER, MASK, rc("token_tis", cap=2.0))
    # rho = 3, 1, 0.25 | 1.5, 1.2 -> min(rho, 2)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.25], [1.5, 1.2, 0.0]]))
    assert hit.tolist() == [[True, False, False], [False, False, False]]


def test_token_mask_by_hand():
    w, hit = correction(TRAINER, SAMPLER, MASK, rc("token_mask", cap=2.0))
    # band [0.5, 2]: 3 and 0.25 are outside
    assert w.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert hit.tolist() == [[True, False, True], [False, False, False]]


def test_geometric_modes_by_hand():
    # g_1 = (3 * 1 * 0.25)^(1/3) = 0.75^(1/3) = 0.908560;  g_2 = (1.5 * 1.2)^(1/2) = 1.341641
    g1, g2 = 0.75 ** (1 / 3), 1.8**0.5
    assert g1 < 1.3 < g2  # only the second sequence is truncated at C = 1.3
    w, hit = correction(TRAINER, SAMPLER, MASK, rc("seq_geo_tis", cap=1.3))
    torch.testing.assert_close(w, torch.tensor([[g1, g1, g1], [1.3, 1.3, 0.0]]))
    assert hit.tolist() == [[False] * 3, [True, True, False]]
    w, hit = correction(TRAINER, SAMPLER, MASK, rc("seq_geo_mask", cap=1.3))
    assert w.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    w, _ = correction(TRAINER, SAMPLER, MASK, rc("seq_geo_mask", cap=1.05))
    assert w.tolist() == [[0.0] * 3, [0.0] * 3]  # 0.9086 < 1/1.05 = 0.952 as well


def test_corrected_loss_is_the_weighted_surrogate_by_hand():
    # one update (old == current): ppo_clip per-token loss -A * 1, token-mean over 5 tokens.
    # token_tis cap 2: weights 2, 1, 0.25 | 1.5, 1.2 -> loss = -(A1 (2 + 1 + 0.25) + A2 (2.7)) / 5
    adv = torch.tensor([1.0, -2.0])
    logp = torch.tensor([[-1.2, -0.4, -2.0], [-0.9, -1.1, 0.0]], requires_grad=True)
    w, _ = correction(logp.detach(), logp.detach() - DELTA, MASK, rc("token_tis"))
    loss, _ = policy_loss(logp, logp.detach(), adv, MASK, plain_loss(), weights=w)
    want = -(1.0 * 3.25 + (-2.0) * 2.7) / 5
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    # the weight is a constant: the gradient is w_t times the uncorrected one
    (grad,) = torch.autograd.grad(loss, logp)
    base = -adv[:, None] * MASK.float() / 5
    torch.testing.assert_close(grad, w * base)


def test_correction_leaves_the_kl_term_alone():
    logp = torch.tensor([[-1.2, -0.4, -2.0], [-0.9, -1.1, 0.0]])
    ref = logp - 0.3
    cfg = plain_loss(kl_coef=0.5)
    adv = torch.zeros(2)  # no policy-gradient term: only the KL remains
    zero_w = torch.zeros(2, 3)
    plain, _ = policy_loss(logp, logp, adv, MASK, cfg, ref_logp=ref)
    masked, _ = policy_loss(logp, logp, adv, MASK, cfg, ref_logp=ref, weights=zero_w)
    assert float(masked) == pytest.approx(float(plain)) and float(plain) > 0


def test_mismatch_metrics_by_hand():
    m, hist = mismatch_metrics(TRAINER, SAMPLER, MASK)
    d = [math.log(3.0), 0.0, math.log(0.25), math.log(1.5), math.log(1.2)]
    assert m["mismatch/k1"] == pytest.approx(-sum(d) / 5)
    assert m["mismatch/k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in d) / 5)
    assert m["mismatch/abs_log_ratio_mean"] == pytest.approx(sum(abs(x) for x in d) / 5)
    assert m["mismatch/abs_log_ratio_max"] == pytest.approx(math.log(4.0))
    assert m["mismatch/ratio_outside_2x"] == pytest.approx(2 / 5)  # 3 and 0.25
    seq = [math.log(0.75), math.log(1.8)]
    assert m["mismatch/seq_log_ratio_mean"] == pytest.approx(sum(seq) / 2)
    assert m["mismatch/seq_log_ratio_abs_max"] == pytest.approx(math.log(1.8))
    torch.testing.assert_close(hist, torch.tensor(d))


def test_step_mismatch_adds_correction_metrics_and_record_sums():
    out = step_mismatch(TRAINER, SAMPLER, MASK, rc("token_mask", cap=2.0))
    assert out.scalars["rollout_correction/affected_token_frac"] == pytest.approx(2 / 5)
    assert out.scalars["rollout_correction/affected_seq_frac"] == pytest.approx(1 / 2)
    assert out.scalars["rollout_correction/weight_mean"] == pytest.approx(3 / 5)
    sums = out.seq_logprobs()
    torch.testing.assert_close(sums["sampler_logprob_sum"], torch.tensor([-3.5, -1.0]).double())
    want = torch.tensor([-3.5 + math.log(0.75), -1.0 + math.log(1.8)]).double()
    torch.testing.assert_close(sums["trainer_logprob_sum"], want)
    off = step_mismatch(TRAINER, SAMPLER, MASK, rc("none"))
    assert not any(k.startswith("rollout_correction/") for k in off.scalars)


def test_matched_log_probs_give_unit_weights():
    for mode in MODES[1:]:
        w, hit = correction(SAMPLER, SAMPLER, MASK, rc(mode))
        assert (w[MASK] == 1).all() and not hit.any()


def test_sampler_logprobs_pads_and_checks_lengths():
    out = sampler_logprobs([[-1.0, -2.0, -0.5], [-0.7, -0.3]], MASK)
    torch.testing.assert_close(out, SAMPLER * MASK)
    assert sampler_logprobs(None, MASK) is None
    with pytest.raises(ValueError, match="completion 1: 1 sampler log-probs for 2 tokens"):
        sampler_logprobs([[-1.0, -2.0, -0.5], [-0.7]], MASK)


@pytest.mark.parametrize(
    "block, msg",
    [
        ({"mode": "token_tis", "cap": 1.0}, "cap=1.0 must be > 1"),
        ({"mode": "seq_mask", "cap": 0.5}, "cap=0.5 must be > 1"),
        ({"mode": "sequence"}, "mode='sequence' is unknown; use one of"),
        ({"mode": "token_tis", "threshold": 2}, "unknown algorithm.rollout_correction keys"),
        ({"mode": "seq_tis", "cap_lower": 0.5}, "truncates from above only"),
        ({"mode": "token_mis", "cap": 2, "cap_lower": 2.5}, r"must be in \[0, cap=2\)"),
    ],
)
def test_config_time_errors(block, msg):
    with pytest.raises(ConfigError, match=msg):
        algorithm_config(rollout_correction={"cap": 2.0, "cap_lower": None, **block})


def test_config_default_is_off_and_yaml_block_parses():
    assert not algorithm_config().rollout_correction.enabled
    algo = algorithm_config(rollout_correction={"mode": "seq_tis", "cap": 3, "cap_lower": None})
    assert algo.rollout_correction == RolloutCorrection("seq_tis", 3, None)
