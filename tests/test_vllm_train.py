"""A short RL run with rollout=vllm on the tiny model (`make test-vllm`)."""

import importlib.util

import pytest

from mapo.analysis.records import read_records
from mapo.pipeline.quickrun import run

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed: run `make test-vllm`",
    ),
]


def test_short_rl_run_with_vllm_rollouts(tmp_path):
    metrics, objs = run(
        [
            "experiment=synth_emo_mapo",
            "debug=fast",
            "rollout=vllm",
            "rollout.max_model_len=512",
            "rollout.enforce_eager=true",
            "logger=none",
            "callbacks.progress_bar=null",
            "algorithm.rollout_batch_size=4",
            "algorithm.mini_batch_size=4",
            "algorithm.micro_batch_size=16",
            "algorithm.group_size=4",
            "model.coldstart.steps=20",
            "data.eval_limit=8",
            "steps=3",
            "eval.before=false",
            "export_hf=false",
        ],
        run_dir=tmp_path,
    )
    from mapo.rollout.vllm import VLLMEngine

    assert isinstance(objs["engine"], VLLMEngine)
    df = read_records(tmp_path)
    assert sorted(df.step.unique()) == [0, 1, 2] and len(df) == 3 * 4 * 4
    assert objs["module"].weights_version == 3  # one update per step, each synced into vLLM
    assert {"A_S", "A_T", "A_avg"} <= set(metrics["after"])
    assert metrics["train"]["time/weight_sync"] > 0  # a real sync into vLLM every step


def test_short_rl_run_bf16_vllm_with_rollout_correction(tmp_path):
    # vLLM samples in bf16, the trainer runs in fp32: the mismatch is measured every step and
    # the token-level truncated IS weight applied (docs/rollout_correction.md)
    metrics, objs = run(
        [
            "experiment=synth_emo_mapo",
            "debug=fast",
            "rollout=vllm",
            "rollout.dtype=bfloat16",
            "rollout.max_model_len=512",
            "rollout.enforce_eager=true",
            "logger=none",
            "callbacks.progress_bar=null",
            "algorithm.rollout_batch_size=4",
            "algorithm.mini_batch_size=2",
            "algorithm.micro_batch_size=8",
            "algorithm.group_size=4",
            "algorithm.rollout_correction.mode=token_tis",
            "algorithm.rollout_correction.cap=2.0",
            "model.coldstart.enabled=false",
            "data.eval_limit=8",
            "steps=2",
            "eval.before=false",
            "eval.after=false",
            "export_hf=false",
        ],
        run_dir=tmp_path,
    )
    m = metrics["train"]
    assert m["mismatch/abs_log_ratio_mean"] > 1e-4  # bf16 sampler vs fp32 trainer
    assert 0 < m["rollout_correction/weight_mean"] <= 2.0
    assert 0 <= m["rollout_correction/affected_token_frac"] <= 1
    df = read_records(tmp_path)
    assert (df.sampler_logprob_sum - df.trainer_logprob_sum).abs().max() > 0
    assert objs["module"].weights_version == 4  # two updates per step, two steps
