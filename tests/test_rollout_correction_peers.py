"""Each `algorithm.rollout_correction` mode against the peer's mode of the same name, and GSPO
without a per-token clamp, on worked numbers (docs/rollout_correction.md, docs/policy_losses.md).

delta_t = log pi_old(y_t) - log mu(y_t) (trainer minus sampler), C the cap, lo the lower end.
The peers' formulas, as their code computes them:

verl, verl/trainer/ppo/rollout_corr_helper.py (SAFETY_BOUND = 20):
  compute_rollout_correction_weights, rollout_is="token":    w_t = min(exp(clamp(delta_t, +-20)), C)
  compute_rollout_correction_weights, rollout_is="sequence": w_i = min(exp(clamp(sum_t delta_t, +-20)), C)
  compute_rollout_rejection_mask, rollout_rs="token" / "sequence" / "geometric": keep the token
    (sequence) iff lo <= exp(clamp(x, +-20)) <= C with x = delta_t / sum_t delta_t / mean_t delta_t,
    lo = 1/C by default; `response_mask * mask` then replaces the response mask, so rejected
    tokens leave the loss normaliser and the KL term (core_algos.agg_loss also drops rows with no
    token left from the sequence count).
TRL, trl/trainer/grpo_trainer.py (_generate_and_score_completions), vllm_importance_sampling_mode:
  token_truncate / sequence_truncate: clamp(exp(delta_t) or exp(sum_t delta_t), C_min, C_max)
  token_mask / sequence_mask: the same ratio, set to 0 outside [C_min, C_max] (C_min None: no
    lower end); `per_token_loss * importance_sampling_ratio` in _compute_loss: the KL term and
    the normaliser are untouched.
"""

import math

import pytest
import torch
from loss_config import plain_loss

from mapo.algorithm.losses import Normalizer, policy_loss
from mapo.algorithm.policy_losses import gspo, gspo_token
from mapo.algorithm.rollout_correction import MODES, RolloutCorrection, correction

L3, L025, L15, L12 = math.log(3.0), math.log(0.25), math.log(1.5), math.log(1.2)
# a 2x3 batch: row 0 has three tokens, row 1 two and a pad (whose delta must not count)
DELTA = torch.tensor([[L3, 0.0, L025], [L15, L12, 7.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True], [True, True, False]])
SAMPLER = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -0.3, -9.0]], dtype=torch.float64)
TRAINER = SAMPLER + DELTA
# one sequence with an extreme token: sum = -23.5 (beyond verl's -20 bound), mean = -7.83
EXTREME = torch.tensor([[-25.0, 1.0, 0.5]], dtype=torch.float64)
ONE_ROW = torch.ones(1, 3, dtype=torch.bool)


def weights(mode, delta=DELTA, mask=MASK, **kw):
    w, hit = correction(
        SAMPLER[: len(delta)] + delta,
        SAMPLER[: len(delta)],
        mask,
        RolloutCorrection(mode, **{"cap": 2.0, "cap_lower": None, **kw}),
    )
    return w.double(), hit


def rows(x):  # a per-row value on every valid token
    return torch.tensor([[x[0]] * 3, [x[1], x[1], 0.0]], dtype=torch.float64)


# ----------------------------------------------------------------- worked numbers, the 2x3 batch
def test_token_tis_is_verl_token_is_and_trl_token_truncate():
    w, hit = weights("token_tis", cap=2.0)  # rho = 3, 1, 0.25 | 1.5, 1.2
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.25], [1.5, 1.2, 0.0]]).double())
    assert hit.tolist() == [[True, False, False], [False, False, False]]


def test_seq_tis_is_the_product_of_the_token_ratios():
    # P_1 = 3 * 1 * 0.25 = 0.75, P_2 = 1.5 * 1.2 = 1.8 (the pad's 7.0 is not counted)
    torch.testing.assert_close(weights("seq_tis", cap=2.0)[0], rows([0.75, 1.8]))
    w, hit = weights("seq_tis", cap=1.5)
    torch.testing.assert_close(w, rows([0.75, 1.5]))
    assert hit.tolist() == [[False] * 3, [True, True, False]]


def test_seq_geo_tis_is_the_capped_geometric_mean():
    g1, g2 = 0.75 ** (1 / 3), 1.8**0.5  # 0.908560, 1.341641
    torch.testing.assert_close(weights("seq_geo_tis", cap=1.3)[0], rows([g1, 1.3]))
    torch.testing.assert_close(weights("seq_geo_tis", cap=2.0)[0], rows([g1, g2]))


def test_verl_rejection_levels():
    # token, band [1/2, 2]: 3 and 0.25 fall out
    w, hit = weights("token_mask", cap=2.0)
    assert w.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert hit.tolist() == [[True, False, True], [False, False, False]]
    # sequence (product), band [2/3, 1.5]: P_1 = 0.75 stays, P_2 = 1.8 goes
    assert weights("seq_mask", cap=1.5)[0].tolist() == [[1.0] * 3, [0.0] * 3]
    # geometric, band [1/1.3, 1.3]: g_1 = 0.909 stays, g_2 = 1.342 goes
    assert weights("seq_geo_mask", cap=1.3)[0].tolist() == [[1.0] * 3, [0.0] * 3]
    # an explicit lower end replaces verl's default 1/C
    assert weights("seq_mask", cap=2.0, cap_lower=0.8)[0].tolist() == [[0.0] * 3, [1.0, 1.0, 0]]


def test_trl_masked_is_keeps_the_ratio_of_accepted_tokens():
    # token_mis (TRL token_mask), C_min None: only 3 > 2 is zeroed; 0.25 keeps its ratio
    w, hit = weights("token_mis", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.25], [1.5, 1.2, 0.0]]).double())
    assert hit.tolist() == [[True, False, False], [False, False, False]]
    w, _ = weights("token_mis", cap=2.0, cap_lower=0.5)  # C_min = 0.5 zeroes 0.25 too
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0], [1.5, 1.2, 0.0]]).double())
    # seq_mis (TRL sequence_mask): R_i = 0.75, 1.8
    torch.testing.assert_close(weights("seq_mis", cap=2.0)[0], rows([0.75, 1.8]))
    torch.testing.assert_close(weights("seq_mis", cap=1.5)[0], rows([0.75, 0.0]))


# ----------------------------------------------------------------- one extreme token
def test_an_extreme_token_meets_each_peers_clamp():
    e = lambda x: torch.full((1, 3), math.exp(x), dtype=torch.float64)  # noqa: E731
    # verl clamps the log-sum at -20 before exp; TRL's sequence_mask does not
    torch.testing.assert_close(weights("seq_tis", EXTREME, ONE_ROW)[0], e(-20.0))
    torch.testing.assert_close(weights("seq_mis", EXTREME, ONE_ROW)[0], e(-23.5))
    assert weights("seq_mask", EXTREME, ONE_ROW)[0].sum() == 0  # exp(-20) < 1/2: rejected
    torch.testing.assert_close(weights("seq_geo_tis", EXTREME, ONE_ROW)[0], e(-23.5 / 3))
    # per token: verl clamps -25 at -20 (then the cap does not bite); TRL keeps exp(-25)
    w, _ = weights("token_tis", EXTREME, ONE_ROW)
    assert w[0, 0] == pytest.approx(math.exp(-20.0), rel=1e-6)
    w, _ = weights("token_mis", EXTREME, ONE_ROW)
    assert w[0, 0] == pytest.approx(math.exp(-25.0), rel=1e-6)
    # a huge positive sum overflows TRL's exp to inf, which its mask zeroes: no NaN here
    w, hit = weights("seq_mis", -EXTREME * 4, ONE_ROW)  # sum = 94
    assert w.sum() == 0 and hit.all()


# ----------------------------------------------------------------- oracles on random cases
def _oracle(mode: str, delta: list[float], c: float, lo: float | None) -> list[float]:
    """The peers' formulas as a plain loop over one sequence's valid deltas."""
    b = 20.0
    clamp = lambda x: max(-b, min(b, x))  # noqa: E731
    n = len(delta)
    if mode == "token_tis":
        return [min(math.exp(clamp(d)), c) for d in delta]
    if mode == "token_mask":
        low = 1 / c if lo is None else lo
        return [float(low <= math.exp(clamp(d)) <= c) for d in delta]
    if mode == "token_mis":
        return [math.exp(d) if (lo or 0.0) <= math.exp(d) <= c else 0.0 for d in delta]
    s = sum(delta)
    if mode == "seq_tis":
        return [min(math.exp(clamp(s)), c)] * n
    if mode == "seq_geo_tis":
        return [min(math.exp(s / n), c)] * n
    if mode in ("seq_mask", "seq_geo_mask"):
        x = math.exp(clamp(s if mode == "seq_mask" else s / n))
        return [float((1 / c if lo is None else lo) <= x <= c)] * n
    r = math.exp(s)  # seq_mis
    return [r if (lo or 0.0) <= r <= c else 0.0] * n


@pytest.mark.parametrize("mode", MODES[1:])
def test_every_mode_equals_the_plain_loop_oracle(mode):
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(16, 7, generator=gen, dtype=torch.float64) * 0.6
    delta[0, 2] = 23.0  # an extreme token
    lengths = torch.randint(1, 8, (16,), generator=gen)
    mask = torch.arange(7)[None, :] < lengths[:, None]
    sampler = -torch.rand(16, 7, generator=gen, dtype=torch.float64)
    lo = 0.6 if mode in ("token_mask", "seq_mis") else None
    cfg = RolloutCorrection(mode, cap=1.7, cap_lower=lo)
    w, _ = correction(sampler + delta, sampler, mask, cfg)
    for i, n in enumerate(lengths.tolist()):
        want = _oracle(mode, delta[i, :n].tolist(), 1.7, lo)
        assert w[i, :n].tolist() == pytest.approx(want, rel=1e-5, abs=1e-12), (mode, i)
        assert (w[i, n:] == 0).all()


# ----------------------------------------------------------------- what the loss does with them
LOGP = torch.tensor([[-1.2, -0.4, -2.0], [-0.9, -1.1, 0.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)


def test_verl_rejection_removes_tokens_from_normaliser_and_kl_by_hand():
    """verl: loss = agg(pg * m') + beta * agg(kl * m'), m' = response_mask * keep, with the
    token-mean's denominator sum(m'). token_mask C=2 keeps (0, 1), (1, 0), (1, 1): 3 tokens."""
    keep, _ = weights("token_mask", cap=2.0)
    m = MASK & keep.bool()
    logp = LOGP.clone().requires_grad_(True)
    ref = LOGP - 0.3  # k3 per token: e^-0.3 + 0.3 - 1 = 0.040818
    cfg = plain_loss(kl_coef=0.5)
    loss, _ = policy_loss(logp, logp.detach(), ADV, m, cfg, ref_logp=ref, norm=Normalizer.of(m))
    k3 = math.exp(-0.3) + 0.3 - 1
    # pg at ratio 1 is -A per token: -(1 + (-2) + (-2)) / 3 = 1; KL: 0.5 * k3 over 3 tokens
    assert float(loss.detach()) == pytest.approx(1.0 + 0.5 * k3, rel=1e-9)
    (grad,) = torch.autograd.grad(loss, logp)
    # autograd against the hand gradient: rejected tokens get none at all (not even KL's)
    kl_grad = 0.5 * (1 - math.exp(-0.3)) / 3  # d k3 / d logp = 1 - e^(ref - logp)
    want = (-ADV[:, None] / 3 + kl_grad) * m.double()
    torch.testing.assert_close(grad, want)


def test_verl_seq_mean_drops_fully_rejected_sequences_from_the_count():
    keep, _ = weights("seq_mask", cap=1.5)  # row 1 rejected whole
    m = MASK & keep.bool()
    assert Normalizer.of(m).seqs == 1.0 and Normalizer.of(MASK).seqs == 2.0
    cfg = plain_loss(loss_agg="seq-mean-token-mean")
    loss, _ = policy_loss(LOGP, LOGP, ADV, m, cfg, norm=Normalizer.of(m))
    assert float(loss) == pytest.approx(-1.0)  # row 0 alone: -A_1 = -1


def test_trl_masked_is_weights_the_pg_term_only_by_hand():
    """TRL: per_token_loss * ratio (0 where masked), + beta * kl untouched, normaliser sum(mask).
    token_mis C=2: weights 0, 1, 0.25 | 1.5, 1.2 over 5 tokens."""
    w, _ = weights("token_mis", cap=2.0)
    logp = LOGP.clone().requires_grad_(True)
    ref = LOGP - 0.3
    cfg = plain_loss(kl_coef=0.5)
    loss, _ = policy_loss(logp, logp.detach(), ADV, MASK, cfg, ref_logp=ref, weights=w)
    k3 = math.exp(-0.3) + 0.3 - 1
    want = -(1.0 * 1.25 + (-2.0) * 2.7) / 5 + 0.5 * k3  # KL: mean over all 5 tokens
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)  # w in fp32
    (grad,) = torch.autograd.grad(loss, logp)
    kl_grad = 0.5 * (1 - math.exp(-0.3)) / 5
    want_grad = (-ADV[:, None] * w / 5 + kl_grad) * MASK.double()
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- GSPO: no per-token clamp
P = plain_loss()


@pytest.mark.parametrize("fn", [gspo, gspo_token])
def test_gspo_averages_the_raw_log_ratios(fn):
    """verl compute_policy_loss_gspo / TRL importance_sampling_level="sequence":
    log s_i = mean_t (log pi_t - log pi_old_t), raw. Log-ratios (-24, 12, 12): mean 0, s = 1,
    unclipped, so every token (the extreme one too) gets the gradient -A s / |y| = -A / 3.
    A per-token clamp at +-20 would give mean 4/3 and no gradient on the first token."""
    old = torch.tensor([[0.0, -20.0, -20.0]], dtype=torch.float64)
    logp = (old + torch.tensor([[-24.0, 12.0, 12.0]])).requires_grad_(True)
    adv = torch.tensor([[-1.0]], dtype=torch.float64)
    loss, _ = fn(logp, old, adv, ONE_ROW, P)
    torch.testing.assert_close(loss.detach(), torch.full((1, 3), 1.0, dtype=torch.float64))
    per_seq = (loss * ONE_ROW).sum() / 3  # seq-mean-token-mean over one sequence
    (grad,) = torch.autograd.grad(per_seq, logp)
    torch.testing.assert_close(grad, torch.full((1, 3), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("fn", [gspo, gspo_token])
def test_gspo_clamps_the_sequence_value_at_10_as_verl(fn):
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.full((1, 3), 30.0, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[-1.0]], dtype=torch.float64)
    loss, _ = fn(logp, old, adv, ONE_ROW, P)
    assert float(loss[0, 0].detach()) == pytest.approx(math.exp(10.0))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert (grad == 0).all()  # clamped: verl's torch.clamp passes no gradient


def test_gspo_ignores_a_non_finite_pad():
    old = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.1, float("inf")]], dtype=torch.float64)
    loss, _ = gspo(logp, old, torch.ones(2, 1, dtype=torch.float64), MASK, P)
    assert torch.isfinite(loss).all()
    assert float(loss[1, 0]) == pytest.approx(-math.exp(0.1))
