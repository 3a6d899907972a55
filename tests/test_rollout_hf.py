"""HFEngine: B*G completions in one generate call, suppression, truncation, sampler log-probs."""

from __future__ import annotations

import pytest
import torch

from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.pipeline.quickrun import model_load_args
from mapo.rollout.hf import HFEngine
from mapo.types import SamplingConfig

pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.fixture
def model(tiny_model_dir):
    return load_policy(tiny_model_dir, **model_load_args())


def _boost(model, token_ids, amount: float):
    """Add ``amount`` to the logits of ``token_ids`` at every position (an LM-head hook)."""
    bias = torch.zeros(model.get_output_embeddings().weight.shape[0])
    bias[list(token_ids)] = amount
    return model.get_output_embeddings().register_forward_hook(lambda mod, args, out: out + bias)


def test_generates_b_times_g_with_group_ids(model, tiny_processor, tiny_prompts):
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    out = engine.generate(
        tiny_prompts, SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0)
    )
    assert len(out) == 12 and out.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert len(out.text) == len(out.truncated) == len(out.logprobs) == 12
    assert all(1 <= len(t) <= 10 for t in out.token_ids)
    assert [len(lp) for lp in out.logprobs] == [len(t) for t in out.token_ids]
    assert len({tuple(t) for t in out.token_ids}) > 1  # sampling, not 12 copies
    assert model.training  # generate() put the policy back in train mode
    assert out.timing["generate"] > 0


def test_suppressed_tokens_never_appear(model, tiny_processor, tiny_prompts):
    tok = tiny_processor.tokenizer
    boosted = tok.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|im_start|>"])
    _boost(model, boosted, 50.0)  # without suppression these would be sampled almost always
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    raw = HFEngine(model, tiny_processor, suppress_special=False, share_prefill=True).generate(
        tiny_prompts, sampling
    )
    assert sum(t in boosted for ids in raw.token_ids for t in ids) > 40  # the control
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    assert set(boosted) <= set(engine.suppress_ids)
    out = engine.generate(tiny_prompts, sampling)
    banned = set(engine.suppress_ids)
    assert not any(t in banned for ids in out.token_ids for t in ids)
    # and the completions are trainable: no placeholder reaches build_policy_inputs
    build_policy_inputs(tiny_processor, tiny_prompts, out, pad_token_id=engine.pad_token_id)


def test_truncation_flags(model, tiny_processor, tiny_prompts):
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    eos = engine.eos_token_ids
    hook = _boost(model, eos, -50.0)  # eos (almost) impossible: every completion hits the cap
    out = engine.generate(
        tiny_prompts, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=2)
    )
    assert all(out.truncated) and all(len(t) == 6 for t in out.token_ids)
    hook.remove()
    _boost(model, eos[:1], 50.0)  # <|im_end|> (almost) certain: one-token completions
    out = engine.generate(
        tiny_prompts, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=2)
    )
    assert not any(out.truncated)
    assert all(ids == [eos[0]] for ids in out.token_ids)
    assert out.text == [""] * 6  # eos is a special token, skipped in the text


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9)])
def test_sampler_logprobs_match_token_logprobs(
    model, tiny_processor, tiny_prompts, sharpen, temperature, top_p
):
    # the sampler log-probs are those of the tempered, suppressed distribution before top-p
    sharpen(model)  # so that any position mismatch between generate and training shows
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    sampling = SamplingConfig(n=3, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    out = engine.generate(tiny_prompts, sampling)
    inputs = build_policy_inputs(
        tiny_processor, tiny_prompts, out, pad_token_id=engine.pad_token_id
    )
    with torch.no_grad():
        logp = token_logprobs(
            model.eval(),
            inputs,
            temperature=temperature,
            suppress_ids=engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
        )
    sampler = torch.zeros_like(logp)
    for row, lps in enumerate(out.logprobs):
        sampler[row, : len(lps)] = torch.tensor(lps)
    torch.testing.assert_close(sampler, logp, atol=1e-4, rtol=0)


def test_seed_reproduces_and_leaves_global_rng_alone(model, tiny_processor, tiny_prompts):
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=7)
    torch.manual_seed(123)
    a = engine.generate(tiny_prompts, sampling)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = engine.generate(tiny_prompts, sampling)
    assert a.token_ids == b.token_ids
    assert torch.equal(torch.rand(1), after)  # the caller's random stream is untouched


def test_greedy_and_sync_weights(tiny_model_dir, model, tiny_processor, tiny_prompts):
    greedy = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=6)
    other = load_policy(tiny_model_dir, **model_load_args())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    before = engine.generate(tiny_prompts, greedy)
    assert before.logprobs is None and len(before) == 3
    engine.sync_weights(model)  # same module: nothing to do
    assert engine.generate(tiny_prompts, greedy).token_ids == before.token_ids
    wanted = HFEngine(other, tiny_processor, share_prefill=True).generate(tiny_prompts, greedy)
    assert wanted.token_ids != before.token_ids
    engine.sync_weights(other)  # a different module: its weights are copied in
    assert engine.generate(tiny_prompts, greedy).token_ids == wanted.token_ids
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@torch.no_grad()
def test_shared_prefill_gives_the_same_samples(
    model, tiny_processor, tiny_prompts, sharpen, temperature
):
    sharpen(model)  # peaked distributions: a wrong position or cache row would change tokens
    patches = []
    hook = model.model.visual.register_forward_pre_hook(
        lambda _m, args, kw: patches.append((args[0] if args else kw["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    sampling = SamplingConfig(n=4, temperature=temperature, top_p=1.0, max_new_tokens=12, seed=11)
    try:
        full = HFEngine(model, tiny_processor, share_prefill=False).generate(tiny_prompts, sampling)
        shared = HFEngine(model, tiny_processor, share_prefill=True).generate(
            tiny_prompts, sampling
        )
    finally:
        hook.remove()
    assert patches[1] * sampling.n == patches[0]  # the images were encoded once, not G times
    assert shared.token_ids == full.token_ids and shared.prompt_index == full.prompt_index
    assert shared.truncated == full.truncated
    if temperature > 0:
        for a, b in zip(shared.logprobs, full.logprobs):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "dtype, mean_tol, max_tol",
    # fp32: ~1e-6 measured (sharpened model); bf16 (8-bit mantissa, cached decode vs one
    # full forward): mean 4e-3, max 3e-2 measured (docs/rollout_correction.md)
    [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 2e-2, 0.15)],
)
def test_sampler_logprobs_vs_trainer_at_each_precision(
    tiny_model_dir, tiny_processor, tiny_prompts, sharpen, dtype, mean_tol, max_tol
):
    from mapo.algorithm.rollout_correction import mismatch_metrics, sampler_logprobs

    model = sharpen(load_policy(tiny_model_dir, **model_load_args())).to(dtype).eval()
    engine = HFEngine(model, tiny_processor, share_prefill=True)
    out = engine.generate(
        tiny_prompts, SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=3)
    )
    inputs = build_policy_inputs(
        tiny_processor, tiny_prompts, out, pad_token_id=engine.pad_token_id
    )
    with torch.no_grad():
        logp = token_logprobs(
            model,
            inputs,
            suppress_ids=engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
            temperature=1.0,
        )
    m, _ = mismatch_metrics(
        logp, sampler_logprobs(out.logprobs, inputs.completion_mask), inputs.completion_mask
    )
    assert m["mismatch/abs_log_ratio_mean"] < mean_tol
    assert m["mismatch/abs_log_ratio_max"] < max_tol
    if dtype == torch.bfloat16:  # rounding is visible, i.e. the check can fail both ways
        assert m["mismatch/abs_log_ratio_max"] > 1e-4
