"""The clipped surrogate, KL estimators and aggregation, with derivations in comments."""

import math

import pytest
import torch
from loss_config import plain_loss

from mapo.algorithm.advantages import compute_advantages, gradient_ratio
from mapo.algorithm.config import AlgorithmConfig, ConfigError
from mapo.algorithm.losses import KL_ESTIMATORS, Normalizer, aggregate, policy_loss
from mapo.pipeline.quickrun import algorithm_config


@pytest.fixture(autouse=True)
def float64_default():
    """fp64 so gradcheck and exact identities are meaningful; restored after each test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def batch(n=6, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, length, generator=g) * 3
    mask = torch.ones(n, length, dtype=torch.bool)
    for i in range(n):  # ragged lengths: sequence i has 1 + (i % length) tokens
        mask[i, 1 + i % length :] = False
    adv = torch.randn(n, generator=g)
    return logp, mask, adv


def test_on_policy_loss_is_minus_mean_advantage_per_token():
    # ratio = 1 everywhere, no clipping: loss = -sum_{i,t} A_i m_it / T  (token-mean).
    logp, mask, adv = batch()
    loss, m = policy_loss(logp, logp.clone(), adv, mask, plain_loss())
    expected = -(adv[:, None] * mask).sum() / mask.sum()
    assert float(loss) == pytest.approx(float(expected), abs=1e-12)
    assert (
        m["clip_frac_high"] == 0 and m["clip_frac_low"] == 0 and m["ratio_mean"] == pytest.approx(1)
    )


def test_gradient_matches_policy_gradient_on_policy():
    # d loss / d logp_it = -A_i m_it / T when ratio = 1 (d ratio / d logp = ratio = 1).
    logp, mask, adv = batch()
    logp.requires_grad_(True)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, plain_loss())
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None] * mask / mask.sum())


def test_clipping_zeroes_the_gradient_only_on_the_clipped_side():
    cfg = plain_loss(clip_low=0.2, clip_high=0.28)
    old = torch.zeros(4, 1)
    # rows: A>0 ratio 1.5 (clipped high), A>0 ratio 0.5 (not clipped: min picks r*A),
    #       A<0 ratio 0.5 (clipped low),  A<0 ratio 1.5 (not clipped)
    logp = torch.log(torch.tensor([[1.5], [0.5], [0.5], [1.5]])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, m = policy_loss(logp, old, adv, torch.ones(4, 1, dtype=torch.bool), cfg)
    loss.backward()
    g = logp.grad.squeeze(-1)
    assert g[0] == 0 and g[2] == 0
    assert g[1] == pytest.approx(-1.0 * 0.5 / 4) and g[3] == pytest.approx(1.0 * 1.5 / 4)
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25


def test_dual_clip_caps_negative_advantage_loss():
    # A = -2, ratio = 5 > c = 3: the PPO term is -A r = 10, dual clip caps it at -A c = 6.
    cfg = plain_loss(dual_clip=3.0)
    logp = torch.log(torch.tensor([[5.0]])).requires_grad_(True)
    loss, m = policy_loss(
        logp, torch.zeros(1, 1), torch.tensor([-2.0]), torch.ones(1, 1, dtype=torch.bool), cfg
    )
    assert float(loss.detach()) == pytest.approx(6.0)
    loss.backward()
    assert float(logp.grad) == 0.0 and m["clip_frac_dual"] == 1.0
    loss_nc, _ = policy_loss(
        logp.detach(),
        torch.zeros(1, 1),
        torch.tensor([-2.0]),
        torch.ones(1, 1, dtype=torch.bool),
        plain_loss(),
    )
    assert float(loss_nc) == pytest.approx(10.0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_numerical_gradient(agg, kl):
    logp, mask, adv = batch(seed=3)
    old = logp + 0.05 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(4))
    ref = logp - 0.1
    cfg = plain_loss(kl_coef=0.1, kl_estimator=kl, loss_agg=agg, clip_high=10.0, clip_low=0.9)

    def f(x):
        return policy_loss(x, old, adv, mask, cfg, ref_logp=ref)[0]

    assert torch.autograd.gradcheck(f, (logp.clone().requires_grad_(True),))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_micro_batches_sum_to_the_mini_batch_loss(agg):
    logp, mask, adv = batch(n=12, length=7, seed=5)
    old, ref = logp + 0.1, logp - 0.2
    cfg = plain_loss(kl_coef=0.05, loss_agg=agg)
    full, _ = policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    norm = Normalizer.of(mask)  # totals of the whole mini-batch
    parts = [
        policy_loss(logp[s], old[s], adv[s], mask[s], cfg, ref_logp=ref[s], norm=norm)[0]
        for s in (slice(0, 5), slice(5, 6), slice(6, 12))
    ]
    assert float(sum(parts)) == pytest.approx(float(full), abs=1e-12)
    # and the naive per-micro-batch normalisation would differ for token-mean (unequal tokens)
    naive = sum(
        policy_loss(logp[s], old[s], adv[s], mask[s], cfg, ref_logp=ref[s])[0]
        for s in (slice(0, 5), slice(5, 12))
    )
    if agg == "token-mean":
        assert abs(float(naive) - float(full)) > 1e-3


def test_aggregation_modes_by_hand():
    v = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    n = Normalizer.of(m)
    assert float(aggregate(v, m, "token-mean", n)) == pytest.approx(6 / 3)
    assert float(aggregate(v, m, "seq-mean-token-sum", n)) == pytest.approx((3 + 3) / 2)
    assert float(aggregate(v, m, "seq-mean-token-mean", n)) == pytest.approx((1.5 + 3) / 2)


def test_kl_estimators_expectations_are_exact_kl():
    # Over a categorical, E_{x~pi}[k1] = E_{x~pi}[k3] = KL(pi || ref) exactly; k2 is biased.
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(10, generator=g), 0)
    ref = torch.softmax(torch.randn(10, generator=g), 0)
    kl = float((pi * (pi.log() - ref.log())).sum())
    for name in ("k1", "k3"):
        assert float((pi * KL_ESTIMATORS[name](pi.log(), ref.log())).sum()) == pytest.approx(
            kl, abs=1e-12
        )
    assert float((pi * KL_ESTIMATORS["k2"](pi.log(), ref.log())).sum()) != pytest.approx(
        kl, abs=1e-6
    )
    assert bool((KL_ESTIMATORS["k3"](pi.log(), ref.log()) >= 0).all())


def test_kl_needs_reference_and_beta_zero_skips_it():
    logp, mask, adv = batch()
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, adv, mask, plain_loss(kl_coef=0.1))
    _, m = policy_loss(logp, logp, adv, mask, plain_loss(kl_coef=0.0))
    assert "kl_ref" not in m


def test_losses_finite_for_extreme_inputs():
    logp = torch.tensor([[-1e4, 0.0], [-50.0, -1e-9]])
    old = torch.tensor([[0.0, -1e4], [0.0, -60.0]])
    loss, m = policy_loss(
        logp,
        old,
        torch.tensor([1e3, -1e3]),
        torch.ones(2, 2, dtype=torch.bool),
        plain_loss(kl_coef=1.0, dual_clip=3.0),
        ref_logp=torch.zeros(2, 2),
    )
    assert math.isfinite(float(loss)) and all(math.isfinite(v) for v in m.values())


# ---------------------------------------------------------------- eq. 7 through the real loss
@pytest.mark.parametrize("n_success", [1, 2, 3, 4, 6, 8, 9, 11])
def test_eq7_gradient_ratio_through_the_loss(n_success):
    """With Bernoulli rewards, |grad J_MAPO| / |grad J_GRPO| = (1-lambda) + lambda sqrt((1-p)/p).

    Toy policy: one softmax over a 16-token vocabulary; each of G = 12 rollouts is 4 tokens.
    On-policy (ratio 1), no KL: grad = -sum_k A_k grad log pi(o_k) / T, and A^MAPO_k =
    rho(p) A^GRPO_k for every k of the group, so the whole gradient scales by rho(p).
    """
    G = 12
    gen = torch.Generator().manual_seed(n_success)
    theta0 = torch.randn(16, generator=gen)
    tokens = torch.randint(0, 16, (G, 4), generator=gen)
    rewards = torch.zeros(G)
    rewards[:n_success] = 1.0
    gids = torch.zeros(G, dtype=torch.long)

    def grad_for(name):
        theta = theta0.clone().requires_grad_(True)
        logp = torch.log_softmax(theta, 0)[tokens]  # [G, 4]
        adv = compute_advantages(name, rewards, gids, eps=0.0, std="population")
        loss, _ = policy_loss(
            logp, logp.detach(), adv, torch.ones(G, 4, dtype=torch.bool), plain_loss()
        )
        (g,) = torch.autograd.grad(loss, theta)
        return g

    g_mapo, g_grpo = grad_for("mapo"), grad_for("grpo")
    rho = float(gradient_ratio(torch.tensor(n_success / G)))
    assert float(g_mapo.norm() / g_grpo.norm()) == pytest.approx(rho, rel=1e-9)
    assert torch.allclose(g_mapo, rho * g_grpo, atol=1e-12)  # same direction, scaled


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"group_size": 1}, "at least 2"),
        ({"rollout_batch_size": 10, "mini_batch_size": 4}, "not a multiple"),
        (
            {"mini_batch_size": 4, "rollout_batch_size": 8, "group_size": 3, "micro_batch_size": 5},
            "must divide",
        ),
        ({"estimator": "mapo2"}, "known:.*mapo"),
        ({"clip_low": 0.0}, "positive"),
        ({"loss_agg": "sum"}, "loss_agg=.sum. is unknown"),
        ({"kl_estimator": "k4"}, "kl_estimator"),
        ({"filter_low": 0.9, "filter_high": 0.1}, "low < high"),
    ],
)
def test_config_errors_say_what_to_fix(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        algorithm_config(**kw)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown algorithm keys.*grop_size"):
        AlgorithmConfig.from_dict({"grop_size": 8})
    cfg = algorithm_config(
        rollout_batch_size=512, mini_batch_size=128, group_size=12, micro_batch_size=8
    )
    assert cfg.updates_per_rollout == 4 and cfg.needs_reference
