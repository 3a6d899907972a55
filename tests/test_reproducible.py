"""The same seed on the same machine gives an identical metrics.json and identical rollout
records when run twice: two short runs in fresh processes, compared bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.n_train=64",
    "data.synthetic.n_test=8",
    "model.coldstart.steps=5",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=4",
    "algorithm.micro_batch_size=32",
    "steps=4",
    "export_hf=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "records_text=true",
    "trainer.deterministic=true",
]


def _run(run_dir: Path, cache: Path) -> None:
    cmd = [
        sys.executable,
        "train.py",
        "experiment=synth_mix_mapo",
        *SMALL,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache}",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_runs_are_identical(tmp_path):
    cache = tmp_path / "cache"  # shared: the second run reuses the data and the cold start
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, cache)
    _run(b, cache)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma == mb
    files = sorted(p.name for p in (a / "records").glob("*.parquet"))
    assert files == sorted(p.name for p in (b / "records").glob("*.parquet")) and len(files) == 4
    for name in files:
        ta, tb = (pq.read_table(d / "records" / name) for d in (a, b))
        assert ta.equals(tb), f"rollout records differ at {name}"
