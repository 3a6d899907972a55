"""Numerics edge cases not covered by test_advantages.py / test_losses.py: eps = 0, singleton
and constant groups, subnormal and one-ulp rewards, empty sequences, extreme (finite)
log-probs, padded slots whose token is suppressed. Everything stays finite."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_config import plain_loss

from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from mapo.algorithm.losses import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    Normalizer,
    policy_loss,
)
from mapo.pipeline.quickrun import model_load_args

ESTIMATORS = sorted(ADVANTAGE_ESTIMATORS)
TINY = 5e-324  # the smallest subnormal float64
EDGE = [0.0, 1.0, 0.1, 0.9, TINY, 1.0 - 2**-53, 1e-300]


def _adv(name, rewards, gids, **kw):
    return compute_advantages(
        name,
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(gids),
        **kw,
        generator=torch.Generator().manual_seed(0) if name == "mapo_random" else None,
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(EDGE) | st.floats(0, 1), min_size=1, max_size=12),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(ESTIMATORS),
    st.sampled_from([0.0, 1e-6]),
    st.sampled_from(["population", "unbiased"]),
)
def test_advantages_finite_for_any_rewards_in_0_1_even_with_eps_0(groups, name, eps, std):
    rewards = [x for g in groups for x in g]
    gids = [k for k, g in enumerate(groups) for _ in g]
    a = _adv(name, rewards, gids, eps=eps, std=std)
    assert bool(torch.isfinite(a).all()), (name, eps, std, groups)
    # constant groups are exactly 0 even with eps = 0 (GroupStats.centered)
    for k, g in enumerate(groups):  # a group with no spread carries no signal
        if len(set(g)) == 1:
            assert float(a[torch.tensor(gids) == k].abs().max()) < 1e-8


@pytest.mark.parametrize("name", ["grpo", "mapo_random"])  # the z-score users
def test_constant_groups_are_zero_with_eps_0(name):
    for value, size in [(0.7, 3), (0.1, 3), (0.9, 12)]:
        a = _adv(name, [value] * size, [0] * size, eps=0.0, std="population")
        assert float(a.abs().max()) < 1e-9, (value, size, a.tolist())


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("std", ["population", "unbiased"])
def test_singleton_and_all_zero_groups_give_zero(name, std):
    # groups: {0.7} alone (unbiased std of one value is 0/0), {0, 0, 0, 0} (mu = 0)
    a = _adv(name, [0.7, 0.0, 0.0, 0.0, 0.0], [5, 9, 9, 9, 9], eps=0.0, std=std)
    assert torch.equal(a, torch.zeros(5, dtype=torch.float64))


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n, length = 6, 5
    logp = -torch.rand(n, length, generator=g) * 1e4  # as low as fp32 log-softmax gets
    logp[0] = 0.0  # probability 1
    old = -torch.rand(n, length, generator=g) * 1e4
    ref = torch.zeros(n, length)
    ref[1] = -1e4
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[2, 2:] = False  # padding
    mask[3] = False  # an empty completion (zero valid tokens)
    adv = torch.tensor([1e3, -1e3, 0.0, 5.0, -11.0, 0.0])
    return logp, old, ref, mask, adv


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("kl", sorted(KL_ESTIMATORS))
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_loss_and_gradient_finite_for_extreme_logprobs_and_empty_rows(agg, kl, dual_clip):
    logp, old, ref, mask, adv = _loss_inputs()
    logp.requires_grad_(True)
    cfg = plain_loss(kl_coef=0.1, kl_estimator=kl, loss_agg=agg, dual_clip=dual_clip)
    loss, metrics = policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    loss.backward()
    assert math.isfinite(float(loss)) and all(math.isfinite(v) for v in metrics.values())
    assert bool(torch.isfinite(logp.grad).all())
    assert bool((logp.grad[~mask] == 0).all()), "padding must get no gradient"


def test_an_all_padding_mini_batch_gives_zero_loss():
    _, old, ref, _, adv = _loss_inputs()
    mask = torch.zeros(6, 5, dtype=torch.bool)
    logp = old.clone().requires_grad_(True)
    loss, _ = policy_loss(
        logp, old, adv, mask, plain_loss(kl_coef=0.1), ref_logp=ref, norm=Normalizer.of(mask)
    )
    loss.backward()
    assert float(loss) == 0.0 and bool((logp.grad == 0).all())


@pytest.mark.slow
def test_padded_slots_with_a_suppressed_token_stay_finite(
    tiny_model_dir, tiny_processor, tiny_prompts, torch_threads
):
    """Padding uses the pad id, which the engines suppress (-inf logit). token_logprobs must
    not gather -inf there, or the loss's `values * mask` turns into NaN (inf * 0)."""
    from mapo.models.batching import build_policy_inputs
    from mapo.models.loading import load_policy
    from mapo.models.logprobs import token_logprobs
    from mapo.models.processor import suppressed_token_ids
    from mapo.types import Completions

    model = load_policy(tiny_model_dir, **model_load_args())
    tok = tiny_processor.tokenizer
    suppress = suppressed_token_ids(tok, eos_token_ids=[tok.eos_token_id], vocab_size=len(tok))
    pad = suppress[0]  # a pad id the sampler can never produce
    ok = [i for i in range(len(tok)) if i not in set(suppress) and i != tok.eos_token_id]
    ids = [[tok.eos_token_id], ok[10:16] + [tok.eos_token_id], ok[20:22]]
    comps = Completions(
        prompt_index=[0, 1, 2], token_ids=ids, text=[""] * 3, truncated=[False, False, True]
    )
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=pad)
    assert bool((inputs.completion_ids[~inputs.completion_mask] == pad).all())
    logp, ent = token_logprobs(
        model,
        inputs,
        suppress_ids=suppress,
        return_entropy=True,
        share_prompt=True,
        padding_free=False,
        temperature=1.0,
    )
    assert bool(torch.isfinite(logp).all()) and bool(torch.isfinite(ent).all())
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss, _ = policy_loss(
        logp,
        logp.detach(),
        adv,
        inputs.completion_mask,
        plain_loss(kl_coef=0.1),
        ref_logp=logp.detach() - 1.0,
    )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
