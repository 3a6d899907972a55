"""A short RL run of the real train.py under the DeepSpeed strategy on CPU (ZeRO-2 and ZeRO-3)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mapo.analysis.records import read_records
from mapo.trainer.checkpoint_integrity import manifest_problem

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]


@pytest.mark.parametrize(
    ("stage", "family"),
    [(2, "qwen2_5_vl"), (3, "qwen2_5_vl"), (3, "qwen2_vl"), (3, "qwen3_vl")],
)
def test_short_rl_run_under_cpu_deepspeed(tmp_path, stage, family):
    """Each family's tiny model trains, evaluates and exports under ZeRO (Qwen3-VL: DeepStack
    features pass through the partitioned vision tower)."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "trainer=cpu_deepspeed",
        f"trainer.strategy.stage={stage}",
        f"model.family={family}",
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar=null",
        "eval.before=false",
        "algorithm.rollout_batch_size=4",
        "algorithm.mini_batch_size=2",
        "algorithm.micro_batch_size=4",
        "algorithm.group_size=4",
        "model.coldstart.steps=20",
        "data.eval_limit=8",
        "steps=2",
        f"hydra.run.dir={run_dir}",
    ]
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
    exported = json.loads((run_dir / "hf_model" / "config.json").read_text())
    assert exported["model_type"] == family
    assert "after:" in proc.stdout


def _train(
    run_dir: Path, *extra: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        "trainer=cpu_deepspeed",
        "trainer.strategy.stage=3",
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar=null",
        "eval.before=false",
        "eval.after=false",
        "export_hf=false",
        "algorithm.rollout_batch_size=4",
        "algorithm.mini_batch_size=2",
        "algorithm.micro_batch_size=4",
        "algorithm.group_size=4",
        "model.coldstart.steps=20",
        "data.eval_limit=8",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={run_dir}",
    ]
    taken = {e.split("=", 1)[0] for e in extra}  # an extra key replaces the base one
    cmd = [c for c in cmd if c.split("=", 1)[0] not in taken] + list(extra)
    env = {
        **(env or os.environ),
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions")
        ),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_zero3_resume_reproduces_the_uninterrupted_run(tmp_path):
    """ckpt_path=last under ZeRO-3 restores the sharded weights and optimizer, the step, the
    prompt stream and the RNG: step 2 after a resume equals step 2 of an uninterrupted run."""
    _train(tmp_path / "resumed", "steps=2")
    folder = tmp_path / "resumed/checkpoints/last.ckpt"
    assert folder.is_dir() and manifest_problem(folder) is None  # a folder, with its manifest
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "resumed", tampered)
    shard = max((tampered / "checkpoints/last.ckpt").rglob("*.pt"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)  # 4 KB of a shard zeroed
    shard.write_bytes(bytes(data))
    proc = _train(tampered, "steps=3", "ckpt_path=last", check=False)
    assert proc.returncode != 0 and "was refused" in proc.stderr and "changed" in proc.stderr
    proc = _train(tmp_path / "resumed", "steps=3", "ckpt_path=last")
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    _train(tmp_path / "straight", "steps=3")
    resumed, straight = read_records(tmp_path / "resumed"), read_records(tmp_path / "straight")
    assert sorted(resumed.step.unique()) == [0, 1, 2] and len(resumed) == 3 * 4 * 4
    a, b = resumed[resumed.step == 2], straight[straight.step == 2]
    for col in ("prompt_id", "rollout_index", "text", "response_length", "advantage"):
        assert a[col].tolist() == b[col].tolist(), col


def test_zero3_ranks_evaluate_shards_of_unequal_length(tmp_path, subprocess_env):
    """2 ranks under ZeRO-3 with evaluation on, 3 prompts per set and one prompt per generate
    call: rank 0 generates twice per set, rank 1 once plus a filler call that is not scored
    (HF generation under ZeRO-3 is collective: unequal numbers of calls would leave the ranks
    waiting on each other). The metrics count every prompt once."""
    run_dir = tmp_path / "run"
    _train(
        run_dir,
        "steps=1",
        "trainer.devices=2",
        "eval.after=true",
        "data.eval_limit=3",
        "rollout.eval.batch_size=1",
        env=subprocess_env(),
    )
    after = json.loads((run_dir / "metrics.json").read_text())["after"]
    assert after["n"] == {name: 3 for name in after["datasets"]} and len(after["n"]) == 3
