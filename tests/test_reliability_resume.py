"""Crash and resume: `python train.py` killed with SIGKILL at a random moment after its first
checkpoint (every step saves, so the kill often lands inside a save) resumes with
`ckpt_path=last` in the same run dir, finishes every step, and on CPU with one thread
reproduces the uninterrupted run exactly: the same completions, rewards and advantages at every
step, and bit-identical final weights, optimizer state and prompt-stream position."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mapo.analysis.records import read_records
from mapo.trainer.checkpointing import temp_files

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
ARGS = [
    "debug=fast",
    f"steps={STEPS}",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=4",
    "algorithm.micro_batch_size=16",
    "algorithm.group_size=4",
    "model.coldstart.steps=20",
    "data.eval_limit=8",
    "logger=none",
    "callbacks.progress_bar=null",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "eval.after=false",
    "export_hf=false",
    "records_text=true",  # compare the sampled completions, not only their rewards
    f"paths.cache_dir={ROOT / '.cache'}",
]
# One thread in every run: the same seed gives other floating-point sums on 2 threads.
ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", *ARGS, f"hydra.run.dir={run_dir}", *extra]


def _run(run_dir: Path, *extra: str) -> None:
    out = subprocess.run(
        _cmd(run_dir, *extra),
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def _kill_after_first_checkpoint(run_dir: Path, delay: float) -> int:
    """Start a run, SIGKILL it `delay` seconds after last.ckpt first appears; the exit code."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        _cmd(run_dir),
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 900
        while not last.exists():
            assert proc.poll() is None, f"the run exited ({proc.returncode}) before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _step_span(run_dir: Path) -> float:
    """Seconds from the first step's rollout records to the last step's, in a finished run."""
    stamps = sorted(p.stat().st_mtime for p in (run_dir / "records").glob("step_*.parquet"))
    return stamps[-1] - stamps[0]


def test_sigkill_at_a_random_moment_then_resume_reproduces_the_run(tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run(full)
    # a random moment while the steps after the first checkpoint run: the same run's steps
    # took _step_span seconds uninterrupted (well under a second each when rewards are flat)
    delay = random.Random().uniform(0.0, 0.8 * _step_span(full))
    why = f"(kill {delay:.2f} s after the first checkpoint)"  # in every failure message below

    code = _kill_after_first_checkpoint(crashed, delay)
    assert code == -signal.SIGKILL, f"the run ended by itself before the kill {why}"
    last = crashed / "checkpoints" / "last.ckpt"
    at_kill = torch.load(last, weights_only=True)  # whole, even if the kill hit a save
    assert 1 <= at_kill["global_step"] < STEPS, why
    stray = temp_files(last)  # a kill inside a save leaves at most a hidden partial file

    _run(crashed, "ckpt_path=last")
    assert not any(p.exists() for p in stray), f"temp files of the killed save remain {why}"

    a, b = read_records(full), read_records(crashed)
    assert sorted(b.step.unique()) == list(range(STEPS)), why
    cols = [
        "step",
        "group_id",
        "prompt_id",
        "text",
        "response_length",
        "reward_overall",
        "reward_format",
        "reward_accuracy",
        "advantage",
        "lam",
    ]
    for step in range(STEPS):
        x, y = a[a.step == step][cols], b[b.step == step][cols]
        assert x.reset_index(drop=True).equals(y.reset_index(drop=True)), f"step {step} {why}"

    fa, fb = _final_state(full), _final_state(crashed)
    assert fa["global_step"] == fb["global_step"] == STEPS
    assert fa["mapo"]["stream"] == fb["mapo"]["stream"]
    for k, v in fa["state_dict"].items():
        assert torch.equal(v, fb["state_dict"][k]), f"{k} differs {why}"
    for i, st in fa["optimizer_states"][0]["state"].items():
        for name, value in st.items():
            other = fb["optimizer_states"][0]["state"][i][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), f"adam {name}"
