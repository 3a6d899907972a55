"""End-to-end: the real pipeline on the tiny model (short), resume, and logged lambda."""

import json
from pathlib import Path

import pytest
import torch

from mapo.algorithm.advantages import certainty_weight
from mapo.analysis.records import read_records
from mapo.pipeline.quickrun import compose_config, model_load_args
from mapo.pipeline.run import train

pytestmark = pytest.mark.slow


def small_cfg(run_dir: Path, cache_dir: Path, *extra: str):
    overrides = [
        "experiment=synth_emo_mapo",
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar=null",
        "algorithm.rollout_batch_size=4",
        "algorithm.mini_batch_size=2",  # two updates per rollout: the pi_old / clipping path
        "algorithm.micro_batch_size=4",
        "algorithm.group_size=4",
        "model.coldstart.steps=20",
        "data.eval_limit=8",
        "steps=3",
        *extra,
    ]
    return compose_config(overrides, run_dir=run_dir)


@pytest.fixture(scope="module")
def cache_dir():
    """The project's cache (.cache): the tiny model, its cold start and the synthetic data are
    built once per machine and shared with the other tests and the demo."""
    return None


def test_short_run_learns_writes_and_exports(tmp_path, cache_dir):
    cfg = small_cfg(tmp_path / "run", cache_dir, "eval.before=true")
    metrics, objs = train(cfg)
    module = objs["module"]
    # parameters changed relative to the model the run started from
    from mapo.models.loading import load_policy

    start = load_policy(objs["model_path"], **model_load_args())
    changed = [
        n
        for (n, p), (_, q) in zip(module.policy.named_parameters(), start.named_parameters())
        if not torch.equal(p, q)
    ]
    assert changed, "no parameter changed during RL"
    run = tmp_path / "run"
    data = json.loads((run / "metrics.json").read_text())
    for tag in ("before", "after"):
        assert {"A_S", "A_T", "A_avg", "datasets"} <= set(data[tag])
        assert data[tag]["A_avg"] == pytest.approx((data[tag]["A_S"] + data[tag]["A_T"]) / 2)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "hf_model" / "config.json").exists()
    m = metrics["train"]
    for key in (
        "reward/overall",
        "reward/accuracy",
        "reward/format",
        "certainty/lambda_mean",
        "actor/grad_norm",
        "actor/kl_ref",
        "time/rollout",
        "time/update",
        "perf/rollouts_per_s",
    ):
        assert key in m, key


def test_logged_lambda_equals_the_groups_own(tmp_path, cache_dir):
    cfg = small_cfg(
        tmp_path / "run",
        cache_dir,
        "eval.before=false",
        "eval.after=false",
        "steps=2",
        "export_hf=false",
    )
    train(cfg)
    df = read_records(tmp_path / "run")
    assert len(df) == 2 * 4 * 4
    for _, g in df.groupby(["step", "group_id"]):
        p = float(g.success.mean())
        assert g.lam.nunique() == 1 and float(g.lam.iloc[0]) == pytest.approx(
            float(certainty_weight(torch.tensor(p)))
        )
        assert int(g.n_success.iloc[0]) == int(g.success.sum())
        assert bool((g.success == (g.reward_overall == 1.0)).all())


def test_resume_continues_from_the_saved_step(tmp_path, cache_dir):
    run = tmp_path / "run"
    base = ("eval.before=false", "eval.after=false", "export_hf=false")
    full_metrics, _ = train(small_cfg(tmp_path / "full", cache_dir, *base, "steps=4"))
    train(small_cfg(run, cache_dir, *base, "steps=2"))
    resumed, objs = train(small_cfg(run, cache_dir, *base, "steps=4", "ckpt_path=last"))
    assert objs["module"].rl_step == 4  # global_step counts optimizer steps (2 per RL step)
    steps = sorted(read_records(run).step.unique().tolist())
    assert steps == [0, 1, 2, 3]
    # same seed, same thread count: the resumed run reproduces the uninterrupted one
    full = read_records(tmp_path / "full")
    res = read_records(run)
    for col in ("reward_overall", "advantage"):
        a = full[full.step >= 2][col].to_numpy()
        b = res[res.step >= 2][col].to_numpy()
        assert a.shape == b.shape and (abs(a - b) < 1e-6).all(), col
