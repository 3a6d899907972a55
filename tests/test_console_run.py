"""A short `python train.py` piped to a file, as CI or `... > log` sees it: every line once,
none of the filtered warnings or Lightning tips, plain progress lines, the end-of-run summary,
report.png written and logged to TensorBoard."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mapo.console import ignored_warnings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# The same tiny settings as tests/test_train_e2e.py, so the cold-started model is shared.
OVERRIDES = [
    "debug=fast",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=2",
    "algorithm.micro_batch_size=4",
    "algorithm.group_size=4",
    "model.coldstart.steps=20",
    "data.eval_limit=8",
    "steps=3",
    "eval.before=true",
]
PREFIX = re.compile(r"^(\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |(INFO|WARNING|ERROR): )")


def _message(line: str) -> str:
    """A log line without Hydra's `[time][logger][LEVEL] - ` or Lightning's `INFO: ` prefix."""
    return PREFIX.sub("", line).strip()


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("piped") / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", *OVERRIDES, f"hydra.run.dir={run}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return run, proc.stdout


def test_every_line_once_and_no_filtered_warning(piped_run):
    _, out = piped_run
    messages = [_message(line) for line in out.splitlines() if line.strip()]
    dupes = {m: n for m, n in Counter(messages).items() if n > 1}
    assert not dupes, out
    for w in ignored_warnings():
        assert not re.search(w.message, out), (w.message, out)
    assert "💡" not in out and "litlogger" not in out
    assert "\x1b" not in out and "\r" not in out  # no control codes in a log


def test_plain_progress_lines_and_summary(piped_run):
    run, out = piped_run
    for expected in (
        "evaluation before: 24 prompts in",
        "evaluation after: 24 prompts in",
        "RL step 3/3  reward",
        f"exporting the policy to {run / 'hf_model'}: done in",
        f"Run finished: {run}",
        "| synth_emo_mapo (before) |",
        f"tensorboard --logdir {run / 'tensorboard'}",
        f"report image    {run / 'report.png'}",
        f"hydra.run.dir={run} ckpt_path=last",
    ):
        assert expected in out, (expected, out)


def test_report_png_is_written_and_logged_to_tensorboard(piped_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = piped_run
    assert (run / "report.png").stat().st_size > 10_000
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "report" in events.Tags()["images"]
