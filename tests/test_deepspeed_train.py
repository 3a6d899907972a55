"""A short RL run of the real train.py under the DeepSpeed strategy on CPU (ZeRO-2 and ZeRO-3)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapo.records import read_records

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]


@pytest.mark.parametrize("stage", [2, 3])
def test_short_rl_run_under_cpu_deepspeed(tmp_path, stage):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "train.py", "trainer=cpu_deepspeed", f"trainer.strategy.stage={stage}",
        "debug=fast", "logger=none", "callbacks.progress_bar=null", "eval.before=false",
        "algorithm.rollout_batch_size=4", "algorithm.mini_batch_size=2", "algorithm.micro_batch_size=4",
        "algorithm.group_size=4", "model.coldstart.steps=20", "data.eval_limit=8", "steps=2",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions")
        ),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    df = read_records(run_dir)
    assert sorted(df.step.unique()) == [0, 1] and len(df) == 2 * 4 * 4
    assert (run_dir / "metrics.json").exists() and (run_dir / "hf_model" / "config.json").exists()
    assert "after:" in proc.stdout
