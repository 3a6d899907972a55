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
    from mapo.pipeline import validate

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
    from mapo.advantages import compute_advantages

    got = compute_advantages("mapo", rewards, gids, std="unbiased")
    assert torch.allclose(got, want.to(got.dtype), atol=1e-9)


def test_root_points_at_the_repository():
    assert (common.ROOT / "conf" / "config.yaml").is_file()
