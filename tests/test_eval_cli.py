"""eval.py end to end on the tiny model: table printed, summary and predictions written."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_eval_py_prints_the_table_and_writes_outputs(tmp_path):
    cmd = [
        sys.executable,
        "eval.py",
        "model.coldstart.steps=20",
        "data.eval_limit=8",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| Method | synth_emo | synth_webemo | synth_emotion6 | A^T | Avg |" in proc.stdout
    assert "A_S=" in proc.stdout and "A_T=" in proc.stdout and "A_avg=" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())["eval"]
    assert summary["A_avg"] == pytest.approx((summary["A_S"] + summary["A_T"]) / 2)
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(preds) == 3 * 8 and set(preds.dataset) == {
        "synth_emo",
        "synth_webemo",
        "synth_emotion6",
    }
    assert preds.accuracy.mean() == pytest.approx(
        (
            summary["datasets"]["synth_emo"]
            + summary["datasets"]["synth_webemo"]
            + summary["datasets"]["synth_emotion6"]
        )
        / 3
    )
    report = subprocess.run(
        [sys.executable, "-m", "mapo.analysis.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0 and "A^T" in report.stdout


def test_eval_py_refuses_a_missing_checkpoint(tmp_path):
    cmd = [
        sys.executable,
        "eval.py",
        "model_to_eval=/nowhere/last.ckpt",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "/nowhere/last.ckpt" in proc.stderr
