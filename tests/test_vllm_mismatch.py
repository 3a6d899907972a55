"""vLLM sampling in bf16 against the fp32 trainer: a measurable mismatch (`make test-vllm`).

The numbers are printed (pytest -s) and recorded in docs/rollout_correction.md; the asserts
say only what must hold: bf16 differs from the trainer by far more than fp32 vLLM does
(tests/test_vllm.py: < 1e-4), and still by much less than the correction's cap."""

import copy
import importlib.util

import pytest
import torch

from mapo.algorithm.rollout_correction import (
    RolloutCorrection,
    mismatch_metrics,
    sampler_logprobs,
    step_mismatch,
)
from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.pipeline.quickrun import model_load_args
from mapo.types import SamplingConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make test-vllm"
    ),
]


@pytest.fixture(scope="module")
def bf16_engine(tiny_model_dir):
    from mapo.pipeline.quickrun import vllm_engine_args
    from mapo.rollout.vllm import VLLMEngine

    return VLLMEngine(
        tiny_model_dir,
        **vllm_engine_args(
            dtype="bfloat16",
            max_model_len=1024,
            limit_mm_per_prompt={"image": 2},
            enforce_eager=True,
            sync_bucket_mb=None,
        ),
    )


@pytest.mark.parametrize("sharpened", [False, True])
def test_bf16_sampler_vs_fp32_trainer(
    bf16_engine, tiny_model_dir, tiny_processor, tiny_prompts, sharpen, sharpened
):
    policy = load_policy(tiny_model_dir, **model_load_args()).eval()  # fp32
    if sharpened:  # peaked distributions, closer to a trained model's
        policy = sharpen(copy.deepcopy(policy))
    bf16_engine.sync_weights(policy)
    out = bf16_engine.generate(
        tiny_prompts * 2, SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=5)
    )
    inputs = build_policy_inputs(tiny_processor, tiny_prompts * 2, out, pad_token_id=0)
    with torch.no_grad():
        trainer = token_logprobs(
            policy,
            inputs,
            suppress_ids=bf16_engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
            temperature=1.0,
        )
    sampler = sampler_logprobs(out.logprobs, inputs.completion_mask)
    m, _ = mismatch_metrics(trainer, sampler, inputs.completion_mask)
    tokens = int(inputs.completion_mask.sum())
    print(
        f"\nbf16 vLLM vs fp32 trainer (sharpened={sharpened}, {tokens} tokens):",
        {k: f"{v:.3g}" for k, v in m.items()},
    )
    assert m["mismatch/abs_log_ratio_mean"] > 1e-4  # fp32 vLLM: ~2e-7
    assert m["mismatch/k3"] > 0
    assert m["mismatch/abs_log_ratio_max"] < 0.5  # rounding, not a different model
    corr = step_mismatch(
        trainer, sampler, inputs.completion_mask, RolloutCorrection("token_tis", 2.0, None)
    )
    print("token_tis C=2:", {k: f"{v:.4g}" for k, v in corr.scalars.items() if "correction" in k})
    assert corr.scalars["rollout_correction/weight_mean"] == pytest.approx(1.0, abs=0.05)
