"""The policy-loss registry (mapo/algorithm/policy_losses.py) through `mapo.algorithm.losses.policy_loss`.

Each loss is checked against an independent plain-loop formula written here, its autograd
gradient against the hand-derived one (and finite differences), one worked numeric example,
micro-batch additivity, and composition with every advantage estimator."""

import math

import pytest
import torch
from loss_config import plain_loss

from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from mapo.algorithm.config import ConfigError
from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.losses import Normalizer, policy_loss
from mapo.algorithm.policy_losses import POLICY_LOSSES
from mapo.pipeline.quickrun import algorithm_config

AGG = {
    "ppo_clip": "token-mean",
    "gspo": "seq-mean-token-mean",
    "gspo_token": "seq-mean-token-mean",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
}
LOSSES = sorted(AGG)


def _cfg(name: str, **kw) -> LossConfig:
    return plain_loss(policy_loss=name, loss_agg=AGG[name], **kw)


def _batch(seed: int = 0, n: int = 5, length: int = 6, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = [length, 1, 4, length - 1, 3][:n]
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, k in enumerate(lengths):
        mask[i, :k] = True
    old = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3 - 0.1
    logp = old + torch.randn(n, length, generator=g, dtype=torch.float64) * spread
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def oracle(name: str, logp, old, adv, mask, eps_low=0.2, eps_high=0.2, tau=(1.0, 1.05)) -> float:
    """The paper's objective (negated) in plain python floats, one sequence at a time."""
    seqs = []
    total_tokens = int(mask.sum())
    out = 0.0
    for i in range(mask.shape[0]):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        a = float(adv[i])
        lr = [float(logp[i, t] - old[i, t]) for t in toks]
        if name == "ppo_clip":  # token-mean
            for x in lr:
                r = math.exp(x)
                out += -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a) / total_tokens
        elif name in ("gspo", "gspo_token"):  # (1/G) sum_i min(s_i A, clip(s_i) A)
            s = math.exp(sum(lr) / len(lr))
            seqs.append(-min(s * a, min(max(s, 1 - eps_low), 1 + eps_high) * a))
        elif name == "cispo":  # 1/sum|o_i| sum sg(min(r, 1+eps_high)) A log pi
            for t, x in zip(toks, lr):
                out += -min(math.exp(x), 1 + eps_high) * a * float(logp[i, t]) / total_tokens
        elif name == "sapo":  # (1/G) sum_i 1/|y_i| sum_t f(r) A
            tt = tau[0] if a > 0 else tau[1]
            f = [_sig(tt * (math.exp(x) - 1)) * 4 / tt for x in lr]
            seqs.append(-sum(f) / len(f) * a)
    return out + (sum(seqs) / len(seqs) if seqs else 0.0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_the_papers_formula(name, seed):
    logp, old, adv, mask = _batch(seed)
    loss, _ = policy_loss(logp, old, adv, mask, _cfg(name))
    assert float(loss) == pytest.approx(oracle(name, logp, old, adv, mask), rel=1e-10, abs=1e-12)


def grad_oracle(name: str, logp, old, adv, mask, eps=0.2, tau=(1.0, 1.05)) -> torch.Tensor:
    """d loss / d logp derived by hand (GSPO: d s_i / d logp_t = s_i / |y_i|)."""
    grad = torch.zeros_like(logp)
    total, n = int(mask.sum()), mask.shape[0]
    for i in range(n):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        a = float(adv[i])
        lr = [float(logp[i, t] - old[i, t]) for t in toks]
        if name in ("gspo", "gspo_token"):
            s = math.exp(sum(lr) / len(lr))
            clipped = (a > 0 and s > 1 + eps) or (a < 0 and s < 1 - eps)
            for t in toks:
                grad[i, t] = 0.0 if clipped else -a * s / len(toks) / n
        for t, x in zip(toks, lr):
            r = math.exp(x)
            if name == "ppo_clip":
                clipped = (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps)
                grad[i, t] = 0.0 if clipped else -a * r / total
            elif name == "cispo":  # every token keeps its gradient, weighted by the capped r
                grad[i, t] = -min(r, 1 + eps) * a / total
            elif name == "sapo":  # d/dlogp f(r) = 4 sig (1 - sig) r
                tt = tau[0] if a > 0 else tau[1]
                sg = _sig(tt * (r - 1))
                grad[i, t] = -a * 4 * sg * (1 - sg) * r / len(toks) / n
    return grad


@pytest.mark.parametrize("name", LOSSES)
def test_autograd_gradient_matches_the_hand_derivation(name):
    logp, old, adv, mask = _batch(3)
    logp.requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, _cfg(name))
    (grad,) = torch.autograd.grad(loss, logp)
    want = grad_oracle(name, logp.detach(), old, adv, mask)
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_finite_difference_gradient(name):
    logp, old, adv, mask = _batch(4, spread=0.05)  # away from the clip kinks
    if name == "cispo":
        # CISPO's value moves with sg[w] too, which the gradient leaves out by design; with
        # every ratio above the cap (e^0.5 > 1.2) w is constant and the difference applies
        old = logp - 0.5

    def f(x):
        return policy_loss(x, old, adv, mask, _cfg(name))[0]

    assert torch.autograd.gradcheck(f, (logp.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_on_policy_gradient_is_the_policy_gradient(name):
    # at ratio 1 every loss's gradient is -A d log pi, aggregated as the loss's paper does
    logp, _, adv, mask = _batch(5)
    logp.requires_grad_(True)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, _cfg(name))
    (grad,) = torch.autograd.grad(loss, logp)
    m = mask.double()
    per_token = -adv[:, None] * m
    if AGG[name] == "token-mean":
        want = per_token / m.sum()
    else:
        want = per_token / m.sum(-1, keepdim=True) / mask.shape[0]
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)


def test_gspo_token_equals_gspo_for_sequence_advantages():
    logp, old, adv, mask = _batch(6)
    out = {}
    for name in ("gspo", "gspo_token"):
        x = logp.clone().requires_grad_(True)
        loss, _ = policy_loss(x, old, adv, mask, _cfg(name))
        out[name] = (float(loss.detach()), torch.autograd.grad(loss, x)[0])
    assert out["gspo"][0] == pytest.approx(out["gspo_token"][0], rel=1e-12)
    torch.testing.assert_close(out["gspo"][1], out["gspo_token"][1], rtol=1e-10, atol=1e-14)


def _one(log_ratios, logp0=-1.0):
    k = len(log_ratios)
    old = torch.full((1, k), logp0, dtype=torch.float64)
    logp = (old + torch.tensor([log_ratios], dtype=torch.float64)).requires_grad_(True)
    return logp, old, torch.ones(1, k, dtype=torch.bool)


def test_worked_example_gspo():
    # log ratios 0.5 and 0.3: s = exp(0.4) = 1.491825. A = +1: clipped at 1 + 0.2, loss -1.2,
    # no gradient. A = -1: max(1.491825, 1.2) = 1.491825, d/dlogp_t = s / 2 = 0.745912.
    logp, old, mask = _one([0.5, 0.3])
    loss, m = policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, _cfg("gspo"))
    assert float(loss) == pytest.approx(-1.2) and m["clip_frac_high"] == 1.0
    assert torch.autograd.grad(loss, logp)[0].abs().max() == 0
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0], dtype=torch.float64), mask, _cfg("gspo"))
    assert float(loss) == pytest.approx(1.491825, abs=1e-6)
    grad = torch.autograd.grad(loss, logp)[0]
    torch.testing.assert_close(
        grad, torch.full((1, 2), 0.745912, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_worked_example_cispo():
    # r = 1.5 > cap 1 + 0.28 = 1.28, A = 2, log pi = -0.5: loss = -1.28 * 2 * (-0.5) = 1.28,
    # gradient -1.28 * 2 = -2.56 (kept, unlike PPO's clip, which would zero it).
    logp, old, mask = _one([math.log(1.5)], logp0=-0.5 - math.log(1.5))
    cfg = plain_loss(policy_loss="cispo", clip_high=0.28)
    loss, m = policy_loss(logp, old, torch.tensor([2.0], dtype=torch.float64), mask, cfg)
    assert float(loss) == pytest.approx(1.28) and m["clip_frac_high"] == 1.0
    assert float(torch.autograd.grad(loss, logp)[0]) == pytest.approx(-2.56)


def test_worked_example_sapo():
    # A = +1, r = 1, tau_pos = 1: f = sigmoid(0) * 4 = 2, loss -2, gradient -1.
    # A = -1, r = e^0.1 = 1.105171, tau_neg = 1.05: f = sigmoid(0.110430) * 4 / 1.05
    # = 2.009826, loss +2.009826, gradient 4 sig (1 - sig) r = 1.101808.
    logp, old, mask = _one([0.0])
    loss, _ = policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, _cfg("sapo"))
    assert float(loss) == pytest.approx(-2.0)
    assert float(torch.autograd.grad(loss, logp)[0]) == pytest.approx(-1.0)
    logp, old, mask = _one([0.1])
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0], dtype=torch.float64), mask, _cfg("sapo"))
    assert float(loss) == pytest.approx(2.009826, abs=1e-6)
    assert float(torch.autograd.grad(loss, logp)[0]) == pytest.approx(1.101808, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_micro_batches_sum_to_the_mini_batch_loss(name):
    logp, old, adv, mask = _batch(7)
    cfg = _cfg(name)
    whole, _ = policy_loss(logp, old, adv, mask, cfg)
    norm = Normalizer.of(mask)
    parts = sum(
        policy_loss(logp[i], old[i], adv[i], mask[i], cfg, norm=norm)[0]
        for i in (torch.tensor([0, 1]), torch.tensor([2, 3, 4]))
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_composes_with_every_estimator(estimator, name):
    algorithm_config(estimator=estimator, policy_loss=name, loss_agg=AGG[name], dual_clip=None)
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.2, 0.0, 1.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = compute_advantages(
        estimator,
        rewards,
        groups,
        generator=torch.Generator().manual_seed(0),
        std="population",
        eps=1e-6,
    )
    logp, old, _, mask = _batch(8, n=5)
    logp, old, mask = (torch.cat([x, x[:3]]) for x in (logp, old, mask))  # 8 rows
    x = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(x, old, adv, mask, _cfg(name, kl_coef=0.1), ref_logp=old - 0.1)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(policy_loss="gspo", loss_agg="token-mean"), "algorithm.loss_agg=seq-mean-token-mean"),
        (dict(policy_loss="sapo", loss_agg="seq-mean-token-sum"), "seq-mean-token-mean"),
        (dict(policy_loss="cispo", loss_agg="seq-mean-token-mean"), "loss_agg=token-mean"),
        (dict(policy_loss="cispo", dual_clip=3.0), "algorithm.dual_clip=null"),
        (dict(policy_loss="reinforce"), "unknown policy_loss 'reinforce'"),
        (dict(policy_loss="sapo", loss_agg="seq-mean-token-mean", sapo_tau_neg=0.0), "> 0"),
    ],
)
def test_config_time_errors_name_the_fix(kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        algorithm_config(**{"dual_clip": None, **kw})


def test_registry_lists_the_five_losses():
    assert sorted(POLICY_LOSSES) == LOSSES
    assert POLICY_LOSSES["ppo_clip"].aggregations == (
        "token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
    )
