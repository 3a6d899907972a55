"""Fast checks of the benchmark plumbing (no model runs): step clock arithmetic, result
parsing, the Hydra overrides our worker passes, and the loop-oracle loader.

    .venv/bin/python -m pytest benchmarks/tests -q
"""

import json

import pytest
import torch

from benchmarks import advantages, common
from benchmarks.common import Settings, StepClock, compose, overrides, parse_result, summary


def test_step_clock_durations_per_step_and_per_group_of_ticks():
    clock = StepClock(ends=[1.0, 1.5, 2.5, 4.0, 6.0])
    assert clock.step_times() == [0.5, 1.0, 1.5, 2.0]
    # two ticks per RL step: ends of RL steps are ticks 1 and 3
    assert clock.step_times(every=2) == [4.0 - 1.5]


def test_summary_skips_warmup_and_takes_the_median():
    # step_times[i] is step i + 1; warmup 2 drops steps 0 and 1
    out = summary([9.0, 1.0, 3.0, 2.0], warmup=2, rollouts_per_step=10)
    assert out["step_times"] == [1.0, 3.0, 2.0]
    assert out["s_per_step"] == 2.0 and out["rollouts_per_s"] == 5.0
    with pytest.raises(RuntimeError, match="no timed steps"):
        summary([1.0], warmup=3, rollouts_per_step=1)


def test_parse_result_takes_the_last_result_line():
    text = 'noise\nRESULT {"a": 1}\nmore\nRESULT {"a": 2}\n'
    assert parse_result(text) == {"a": 2}
    with pytest.raises(RuntimeError, match="no RESULT line"):
        parse_result("crashed")


def test_settings_round_trip_json():
    s = Settings(size="10m", engine="vllm", coldstart=False, share_prompt=False)
    assert Settings.from_json(s.to_json()) == s
    assert json.loads(s.to_json())["size"] == "10m" and s.steps == s.warmup + s.timed


def test_overrides_compose_into_a_config_our_pipeline_accepts(tmp_path):
    from mapo.pipeline.validate import validate

    s = Settings(prompts=8, group=4, updates=2, beta=0.05, max_new_tokens=12)
    cfg = compose(overrides(s, tmp_path))
    plan = validate(cfg)
    assert plan.algo.group_size == 4 and plan.algo.rollout_batch_size == 8
    assert plan.algo.updates_per_rollout == 2
    assert plan.algo.kl_coef == pytest.approx(0.05)
    assert plan.sampling.max_new_tokens == 12 and plan.sampling.temperature == 1.0
    assert cfg.callbacks.get("model_checkpoint") is None and not cfg.eval.before
    with pytest.raises(ValueError, match="multiple of updates"):
        overrides(Settings(prompts=6, updates=4), tmp_path)


def test_advantage_batch_and_oracle_agree_on_a_small_batch():
    rewards, gids = advantages.make_batch(200, 20, seed=1)
    assert torch.unique(gids).numel() == 20
    oracle = advantages.load_oracle()
    want = torch.tensor(oracle("mapo", rewards.tolist(), gids.tolist(), std="unbiased"))
    from mapo.algorithm.advantages import compute_advantages

    got = compute_advantages("mapo", rewards, gids, std="unbiased", eps=1e-6)
    assert torch.allclose(got, want.to(got.dtype), atol=1e-9)


def test_root_points_at_the_repository():
    assert (common.ROOT / "conf" / "config.yaml").is_file()


def test_extra_overrides_replace_the_base_ones(tmp_path):
    over = overrides(Settings(), tmp_path, "algorithm.micro_batch_size=8", "trainer=gpu")
    assert [o for o in over if o.startswith("algorithm.micro_batch_size")] == [
        "algorithm.micro_batch_size=8"
    ]
    assert over[-2:] == ["algorithm.micro_batch_size=8", "trainer=gpu"]


def test_arch7b_is_the_qwen2_5_vl_7b_architecture():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from benchmarks.arch7b import QWEN25_VL_7B as dims

    config = Qwen2_5_VLConfig(
        text_config=dims["text"], vision_config=dims["vision"], tie_word_embeddings=False
    )
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    # Qwen2.5-VL-7B-Instruct has 8,292,166,656 parameters
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656


def test_arch7b_small_builds_and_times_through_the_trainer(tmp_path):
    from benchmarks import arch7b

    arch7b.build(tmp_path / "m", small=True, dtype="float32")
    out = arch7b.main  # the CLI, as a user runs it
    out(
        [
            "time",
            "--model",
            str(tmp_path / "m"),
            "--engine",
            "hf",
            "--trainer",
            "default",
            "--dtype",
            "float32",
            "--prompts",
            "2",
            "--group",
            "2",
            "--max-new-tokens",
            "3",
            "--micro-batch",
            "2",
            "--warmup",
            "1",
            "--timed",
            "1",
            "--min-pixels",
            "12544",
            "--steps-jsonl",
            str(tmp_path / "steps.jsonl"),
            "--json",
            str(tmp_path / "t.json"),
        ]
    )
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["s_per_step"] > 0 and 0 < res["mean_completion_tokens"] <= 3
    assert res["rollout_tokens_per_s"] == pytest.approx(
        res["mean_completion_tokens"] * 4 / res["s_per_step"]
    )
    # both steps were logged as they ended; the figures are those of the timed step (1)
    steps = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [0, 1]
    last = steps[1]
    # 112 x 112 images (min_pixels) are 16 merged image tokens: every row has > 16 tokens
    assert last["perf/train_tokens"] > 4 * 16
    assert res["train_tokens"] == last["perf/train_tokens"]
    assert res["train_tokens_per_s"] == pytest.approx(
        last["perf/train_tokens"] / last["time/update"]
    )
    n = res["params"]["flops"]
    assert n == res["params"]["total"] - res["params"]["vision"] - res["params"]["embedding"] > 0
    peak = res["peak_tflops"] * 1e12
    assert res["mfu"] == pytest.approx(6 * n * res["train_tokens"] / res["train_s"] / peak)
    assert res["hfu"] == pytest.approx(8 / 6 * res["mfu"])  # checkpointing on by default
    assert res["generation_tokens_per_s"] == pytest.approx(
        last["response_length/mean"] * 4 / last["time/rollout"]
    )


def test_arch7b_small_step_with_lora_as_the_gpu_kit_runs_it(tmp_path):
    """ARCH7B_LORA=R in scripts/gpu_check.sh: the 7B step's command with the vision tower frozen
    and decoder adapters; only the adapters train."""
    from benchmarks import arch7b

    arch7b.build(tmp_path / "m", small=True, dtype="float32")
    args = ["time", "--model", str(tmp_path / "m"), "--engine", "hf", "--trainer", "default"]
    args += ["--dtype", "float32", "--prompts", "2", "--group", "2", "--max-new-tokens", "3"]
    args += ["--micro-batch", "2", "--warmup", "1", "--timed", "1", "--min-pixels", "12544"]
    args += ["--beta", "0", "--freeze-vision", "--json", str(tmp_path / "t.json")]
    arch7b.main([*args, "model.lora.rank=4", "model.lora.vision=false"])
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["s_per_step"] > 0
    assert 0 < res["trainable_parameters"] < res["params"]["total"] / 20


def test_vs_trl_matches_the_engines_unless_told_otherwise():
    from benchmarks import vs_trl

    s = vs_trl.settings(vs_trl.parse_args(["--size", "10m", "--engine", "vllm"]))
    assert (s.engine, s.trl_engine, s.trl_gradient_checkpointing) == ("vllm", "vllm", False)
    s = vs_trl.settings(
        vs_trl.parse_args(
            ["--engine", "vllm", "--trl-engine", "hf", "--trl-gradient-checkpointing"]
        )
    )
    assert (s.engine, s.trl_engine, s.trl_gradient_checkpointing) == ("vllm", "hf", True)
    assert vs_trl.settings(vs_trl.parse_args([])).trl_engine == "hf"
    a = vs_trl.parse_args(["--python", "/p", "--trl-python", "/t"])
    assert (a.ours_python or a.python, a.trl_python or a.python) == ("/p", "/t")


def test_vllm_threads_are_bound_for_every_side_that_runs_vllm():
    from benchmarks.common import worker_env

    s = Settings(engine="vllm", trl_engine="hf", threads=1)
    assert worker_env("ours", s)["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in worker_env("trl", s)
    s = Settings(engine="vllm", trl_engine="vllm", threads=2)
    assert worker_env("trl", s)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert worker_env("trl", s)["OMP_NUM_THREADS"] == "2"


def test_trl_generation_config_for_each_engine():
    from benchmarks.run_trl import engine_args

    hf = engine_args(Settings(trl_engine="hf"), "unused", [5, 7])
    assert hf == {"use_vllm": False, "generation_kwargs": {"suppress_tokens": [5, 7]}}
    with pytest.raises(ValueError, match="trl_engine must be hf or vllm"):
        engine_args(Settings(trl_engine="sglang"), "unused", [])


def test_sync_memory_peak_counter_resets():
    from benchmarks.sync_memory import _reset_peak, _status_kb

    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: 64 MB resident
    del block
    assert _status_kb("VmHWM") - _status_kb("VmRSS") > 32 * 1024
    _reset_peak()  # the peak is now the current RSS
    assert _status_kb("VmHWM") - _status_kb("VmRSS") < 8 * 1024
