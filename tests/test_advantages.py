"""Advantage estimators against the paper's worked numbers and a plain-loop oracle."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mapo.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    certainty_weight,
    compute_advantages,
    compute_advantages_with_stats,
    gradient_ratio,
    register_advantage,
)

T = torch.tensor
ALL = ["grpo", "dr_grpo", "gpg", "treerpo", "apd", "mapo", "mapo_random"]


def one_group(rewards, name, **kw):
    r = T(rewards, dtype=torch.float64)
    kw = {"std": "population", "eps": 1e-6, **kw}  # the paper's eq. (2) unless a test says
    return compute_advantages(name, r, torch.zeros(len(rewards), dtype=torch.long), **kw)


# ---------------------------------------------------------------- oracle: a plain loop per group
def oracle(name, rewards, gids, *, eps=1e-6, std="population", success=None):
    rewards = [float(x) for x in rewards]
    success = [r == 1 for r in rewards] if success is None else list(success)
    groups = {}
    for i, g in enumerate(gids):
        groups.setdefault(int(g), []).append(i)
    total = len(rewards)
    invalid = sum(len(ix) for ix in groups.values() if len({rewards[i] for i in ix}) == 1)
    out = [0.0] * total
    for ix in groups.values():
        rs = [rewards[i] for i in ix]
        g = len(rs)
        mu = sum(rs) / g
        ss = sum((x - mu) ** 2 for x in rs)
        sigma = (
            math.sqrt(ss / g)
            if std == "population"
            else (math.sqrt(ss / (g - 1)) if g > 1 else 0.0)
        )
        p = sum(success[i] for i in ix) / g
        lam = 1 - 4 * p * (1 - p)

        def div(a, b):
            return 0.0 if b == 0 else a / b

        for i in ix:
            d = rewards[i] - mu
            z, apd = div(d, sigma + eps), div(d, mu + eps)
            out[i] = {
                "grpo": z,
                "dr_grpo": d,
                "gpg": d * (total / (total - invalid) if total > invalid else 1.0),
                "treerpo": div(d, mu * (1 - mu) + eps),
                "apd": apd,
                "mapo": (1 - lam) * z + lam * apd,
            }[name]
    return out


# ---------------------------------------------------------------- the paper's worked numbers
def test_reversion_example_grpo():
    # Fig. 3 / §3.2: [0.9, 1, 1, 1] -> [-1.73, 0.58, 0.58, 0.58] (population std, eps 0).
    a = one_group([0.9, 1, 1, 1], "grpo", eps=0.0)
    assert torch.allclose(
        a, T([-math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)], dtype=a.dtype)
    )
    assert round(float(a[0]), 2) == -1.73 and round(float(a[1]), 2) == 0.58


def test_mirror_example_grpo():
    # The "mirror": [0, 0.1, 0.1, 0.1] gets exactly the advantages of [0.9, 1, 1, 1].
    hi = one_group([0.9, 1, 1, 1], "grpo", eps=0.0)
    lo = one_group([0, 0.1, 0.1, 0.1], "grpo", eps=0.0)
    assert torch.allclose(hi, lo, atol=1e-12)


def test_low_certainty_example_grpo():
    a = one_group([0.1, 0.1, 1, 1], "grpo", eps=0.0)
    assert torch.allclose(a, T([-1.0, -1.0, 1.0, 1.0], dtype=a.dtype))


def test_mapo_worked_number():
    # p = 3/4 -> lambda = 1/4; first entry 0.75 * (-sqrt 3) + 0.25 * (-0.075 / 0.975) = -1.318.
    a = one_group([0.9, 1, 1, 1], "mapo", eps=0.0)
    expected = 0.75 * -math.sqrt(3) + 0.25 * (-0.075 / 0.975)
    assert float(a[0]) == pytest.approx(expected, abs=1e-12)
    assert round(float(a[0]), 3) == -1.318


def test_mapo_breaks_the_mirror():
    hi = one_group([0.9, 1, 1, 1], "mapo", eps=0.0)
    lo = one_group([0, 0.1, 0.1, 0.1], "mapo", eps=0.0)  # p = 0 -> pure APD
    assert not torch.allclose(hi, lo, atol=1e-3)


@pytest.mark.parametrize("p, lam", [(0.0, 1.0), (0.5, 0.0), (1.0, 1.0), (0.25, 0.25)])
def test_lambda_values(p, lam):
    assert float(certainty_weight(T(p))) == pytest.approx(lam)


def test_mapo_reduces_to_grpo_at_half_and_apd_at_extremes():
    half = [0.1, 1, 0.1, 1, 1, 0.0]  # N = 3 of G = 6 -> p = 1/2, lambda = 0
    assert torch.allclose(one_group(half, "mapo"), one_group(half, "grpo"), atol=1e-12)
    for rewards in ([0.9, 0.95, 0.99, 0.5], [0.0, 0.1, 0.1, 0.5], [0.5, 0.1, 0.9, 0.2]):
        # no reward equals 1 (p = 0) -> lambda = 1 -> pure APD
        assert torch.allclose(one_group(rewards, "mapo"), one_group(rewards, "apd"), atol=1e-12)
    # p = 1 needs every reward 1: constant group, every estimator gives zeros
    assert torch.equal(one_group([1, 1, 1], "mapo"), torch.zeros(3, dtype=torch.float64))


def test_explicit_success_overrides_default():
    r = T([0.9, 0.9, 0.1, 0.1], dtype=torch.float64)
    g = torch.zeros(4, dtype=torch.long)
    res = compute_advantages_with_stats(
        "mapo", r, g, success=T([True, True, False, False]), std="population", eps=1e-6
    )
    assert float(res.stats.p[0]) == 0.5 and float(res.stats.lam[0]) == 0.0
    assert torch.allclose(
        res.advantages, compute_advantages("grpo", r, g, std="population", eps=1e-6)
    )


# ---------------------------------------------------------------- oracle, order, uneven groups
@pytest.mark.parametrize("name", [n for n in ALL if n != "mapo_random"])
@pytest.mark.parametrize("std", ["population", "unbiased"])
def test_matches_loop_oracle_on_shuffled_uneven_groups(name, std):
    gen = torch.Generator().manual_seed(0)
    sizes = [2, 3, 5, 8, 12, 1]
    gids = torch.cat(
        [torch.full((n,), 100 - 7 * k) for k, n in enumerate(sizes)]
    )  # non-contiguous ids
    rewards = torch.randint(0, 3, (gids.numel(),), generator=gen).double() / 2  # {0, .5, 1}
    perm = torch.randperm(gids.numel(), generator=gen)
    gids, rewards = gids[perm], rewards[perm]
    got = compute_advantages(name, rewards, gids, std=std, eps=1e-6)
    want = T(oracle(name, rewards.tolist(), gids.tolist(), std=std), dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-10), (got, want)


@pytest.mark.parametrize("name", ALL)
def test_permutation_equivariance(name):
    gen = torch.Generator().manual_seed(1)
    gids = torch.arange(6).repeat_interleave(4)
    rewards = torch.rand(24, generator=gen).double()
    perm = torch.randperm(24, generator=gen)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    a = compute_advantages(name, rewards, gids, generator=g1, std="population", eps=1e-6)
    b = compute_advantages(
        name, rewards[perm], gids[perm], generator=g2, std="population", eps=1e-6
    )
    assert torch.allclose(a[perm], b, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
def test_constant_groups_give_finite_zeros(name, value):
    a = compute_advantages(
        name, torch.full((12,), value), torch.zeros(12, dtype=torch.long), eps=0.0, std="population"
    )
    assert torch.equal(a, torch.zeros(12))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "gpg", "treerpo", "apd", "mapo"])
def test_zero_sum_per_group_for_linear_estimators(name):
    gen = torch.Generator().manual_seed(2)
    gids = torch.arange(5).repeat_interleave(6)
    rewards = torch.rand(30, generator=gen).double()
    a = compute_advantages(name, rewards, gids, std="population", eps=1e-6)
    sums = torch.zeros(5, dtype=torch.float64).index_add_(0, gids, a)
    assert torch.allclose(sums, torch.zeros(5, dtype=torch.float64), atol=1e-9)


def test_mapo_random_is_seeded_and_per_group():
    gids = torch.arange(4).repeat_interleave(4)
    r = torch.tensor([0, 1, 1, 0.5] * 4, dtype=torch.float64)
    res1 = compute_advantages_with_stats(
        "mapo_random",
        r,
        gids,
        generator=torch.Generator().manual_seed(3),
        std="population",
        eps=1e-6,
    )
    res2 = compute_advantages_with_stats(
        "mapo_random",
        r,
        gids,
        generator=torch.Generator().manual_seed(3),
        std="population",
        eps=1e-6,
    )
    res3 = compute_advantages_with_stats(
        "mapo_random",
        r,
        gids,
        generator=torch.Generator().manual_seed(4),
        std="population",
        eps=1e-6,
    )
    assert torch.equal(res1.advantages, res2.advantages)
    assert not torch.equal(res1.advantages, res3.advantages)
    lam = res1.stats.lam
    assert lam.shape == (4,) and bool(((lam >= 0) & (lam <= 1)).all()) and lam.unique().numel() == 4
    # eq. 6 with the drawn lambda, checked per group
    z = compute_advantages("grpo", r, gids, std="population", eps=1e-6)
    apd = compute_advantages("apd", r, gids, std="population", eps=1e-6)
    assert torch.allclose(res1.advantages, (1 - lam[gids]) * z + lam[gids] * apd)


def test_group_stats_exposed_for_logging():
    r = T([0.9, 1, 1, 1, 0, 0.1, 0.1, 0.1])
    res = compute_advantages_with_stats(
        "mapo", r, T([7, 7, 7, 7, 3, 3, 3, 3]), std="population", eps=1e-6
    )
    s = res.stats
    assert s.keys.tolist() == [3, 7]
    assert s.n_success.tolist() == [0, 3] and s.p.tolist() == [0.0, 0.75]
    assert s.lam.tolist() == [1.0, 0.25]
    assert s.mu[1] == pytest.approx(0.975)
    assert "apd" in res.extras and res.extras["apd"].shape == (8,)


def test_apd_magnitude_near_zero_mean():
    # docs/facts.md, "Algorithm": G = 12, one format-only success (0.1) -> APD about 11.
    r = torch.zeros(12)
    r[0] = 0.1
    a = one_group(r.tolist(), "apd", eps=0.0)
    assert float(a[0]) == pytest.approx(11.0, rel=1e-4)


@pytest.mark.parametrize("name", ["apd", "mapo", "mapo_random"])
def test_negative_mean_rewards_rejected(name):
    with pytest.raises(ValueError, match=rf"{name}.*non-negative rewards.*grpo"):
        compute_advantages(name, T([-1.0, 0.0, -0.5]), T([0, 0, 0]), std="population", eps=1e-6)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="known:.*mapo"):
        compute_advantages("nope", T([1.0]), T([0]), std="population", eps=1e-6)


def test_registry_rejects_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda r, s, *, eps, generator: (r, {}))
    assert set(ALL) <= set(ADVANTAGE_ESTIMATORS)


def test_shape_errors_and_nonfinite():
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages("grpo", torch.zeros(2, 2), torch.zeros(2, 2), std="population", eps=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages("grpo", T([float("nan"), 1.0]), T([0, 0]), std="population", eps=1e-6)


def test_unbiased_std_matches_torch_std():
    r = T([0.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    a = compute_advantages("grpo", r, torch.zeros(4, dtype=torch.long), std="unbiased", eps=0.0)
    assert torch.allclose(a, (r - r.mean()) / r.std())


def test_gradient_ratio_properties():
    p = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    rho = gradient_ratio(p)
    assert float(gradient_ratio(T(0.5, dtype=torch.float64))) == pytest.approx(1.0)
    assert bool((rho[p < 0.5] > 1).all()) and bool((rho[p > 0.5] < 1).all())
    assert bool((rho.diff() <= 1e-12).all())  # non-increasing (appendix C)


# ---------------------------------------------------------------- property tests
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=12
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([n for n in ALL]),
)
def test_property_finite_and_order_preserving(groups, name):
    rewards = torch.tensor([x for g in groups for x in g], dtype=torch.float64)
    gids = torch.tensor([k for k, g in enumerate(groups) for _ in g])
    a = compute_advantages(
        name, rewards, gids, generator=torch.Generator().manual_seed(0), std="population", eps=1e-6
    )
    assert bool(torch.isfinite(a).all())
    for k in range(len(groups)):
        rk, ak = rewards[gids == k], a[gids == k]
        order = torch.argsort(rk)
        # a higher reward never gets a lower advantage within a group (monotone, non-strict)
        assert bool((ak[order].diff() >= -1e-9).all())
