"""The console: precise warning filters, Lightning lines once, progress in a pipe and a pty."""

import io
import logging
import os
import pty
import select
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mapo.console import filter_warnings, ignored_warnings, setup_console

ROOT = Path(__file__).resolve().parents[1]

# The texts Lightning 2.6 / torch actually emit (abridged after the matched prefix).
EMITTED = [
    "Found 67 module(s) in eval mode at the start of training. This may lead to unexpected "
    "behavior during training.",
    "Using ModelCheckpoint with manual optimization and every_n_train_steps, but no "
    "pre-optimization state was saved.",
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
    "treespec.is_leaf()` instead.",
]


def _emit(message: str, category: type[Warning], module: str) -> list[str]:
    """Warnings recorded when `module` raises `message` under the project's filters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_warnings()
        warnings.warn_explicit(
            message, category, f"{module.replace('.', '/')}.py", 1, module=module
        )
    return [str(w.message) for w in caught]


def test_listed_warnings_are_ignored_and_any_other_still_shows():
    listed = ignored_warnings()
    assert len(listed) == len(EMITTED)
    for w, text in zip(listed, EMITTED):
        module = w.module.replace("\\", "")
        assert _emit(text, w.category, module) == [], text
        # the same text from another module, or another text from the same module, shows
        assert _emit(text, w.category, "mapo.trainer.module") == [text]
        assert _emit(text, w.category, module + ".sub") == [text]
        other = "Checkpoint directory /x exists and is not empty."
        assert _emit(other, UserWarning, module) == [other]
    real = "a real problem: the learning rate is NaN"
    assert _emit(real, UserWarning, "mapo.pipeline") == [real]
    assert _emit(real, RuntimeWarning, "lightning.pytorch.loops.fit_loop") == [real]


@pytest.fixture
def hydra_like_logging():
    """The root logger with one console handler (as Hydra sets it up); restored afterwards."""
    root = logging.getLogger()
    import lightning.pytorch  # noqa: F401

    names = ("", "lightning", "lightning.pytorch", "lightning.fabric")
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }
    level = root.level
    out = io.StringIO()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    for n, (handlers, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        for h in handlers:
            lg.addHandler(h)
        lg.propagate = propagate
    root.setLevel(level)


def test_lightning_info_prints_once_and_tips_not_at_all(hydra_like_logging, capsys):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    setup_console()
    rank_zero_info("GPU available: False, used: False")
    rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing")
    rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing")
    text = hydra_like_logging.getvalue() + capsys.readouterr().err
    assert text.count("GPU available: False, used: False") == 1, text
    assert "Tip" not in text


SCRIPT = """
import logging, sys, time
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
from mapo.console.progress import Progress
with Progress("demo phase", 8, unit="steps") as bar:
    for i in range(8):
        time.sleep(0.15)
        bar.advance(1, info=f"loss {1 / (i + 1):.3f}")
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "100"}


def test_progress_in_a_pipe_is_a_few_plain_lines():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert len(lines) == 4, out  # 25 %, 50 %, 75 % and the final line
    assert lines[0].startswith("demo phase: 2/8 steps, loss 0.500 (")
    assert lines[2].startswith("demo phase: 6/8 steps, loss 0.167 (")
    assert lines[3].startswith("demo phase: 8 steps in 0:0") and lines[3].endswith("loss 0.125")
    assert "\x1b" not in out and "\r" not in out


def _run_in_pty(argv: list[str], timeout: float = 120) -> bytes:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdout=slave, stderr=slave, stdin=slave, env=_env(), close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise TimeoutError(b"".join(chunks)[-2000:])
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=30) == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks)


def test_progress_bar_renders_in_a_pseudo_terminal():
    out = _run_in_pty([sys.executable, "-c", SCRIPT])
    text = out.decode("utf-8", "replace")
    assert "\x1b[" in text  # a live, redrawn bar
    assert "━" in text and "demo phase" in text and "/8" in text
    assert "loss" in text
    # no plain quartile lines in a terminal; the final line once
    assert "demo phase: 2/8" not in text
    assert text.count("demo phase: 8 steps in") == 1


BAR_CHOICE = (
    "from mapo.trainer.callbacks import rl_progress_bar; print(type(rl_progress_bar()).__name__)"
)


def test_rl_progress_bar_is_rich_in_a_terminal_and_plain_in_a_pipe():
    in_pty = _run_in_pty([sys.executable, "-c", BAR_CHOICE]).decode()
    piped = subprocess.run(
        [sys.executable, "-c", BAR_CHOICE],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=True,
    ).stdout
    assert in_pty.strip().endswith("RLProgressBar") and "Plain" not in in_pty
    assert piped.strip() == "PlainRLProgressBar"
