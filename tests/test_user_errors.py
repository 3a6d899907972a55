"""A config or data error ends train.py / eval.py with one line and exit 2, before any model
loads; HYDRA_FULL_ERROR=1 still shows the traceback (mapo/pipeline/errors.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *overrides: str, full: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, script, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "script, override, message",
    [
        ("train.py", "steps=0", "error: steps=0 must be >= 1"),
        ("train.py", "algorithm.estimator=nope", "error: algorithm.estimator='nope' is unknown"),
        (
            "train.py",
            "algorithm.rollout_correction.mode=seq",
            "error: algorithm.rollout_correction",
        ),
        ("eval.py", "model_to_eval=/nowhere/last.ckpt", "error: model_to_eval=/nowhere/last.ckpt"),
    ],
)
def test_one_line_and_exit_2(script, override, message):
    proc = _run(script, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), lines[-3:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_hydra_full_error_keeps_the_traceback():
    proc = _run("train.py", "steps=0", full=True)
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr and "ConfigError: steps=0 must be >= 1" in proc.stderr
