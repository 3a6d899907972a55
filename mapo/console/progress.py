"""Progress of the long phases (cold start, evaluation, RL steps, export).

In a terminal: a Rich bar (or spinner) that disappears when the phase ends. In a pipe, a file
or a CI log: a few plain log lines (at 25 %, 50 %, 75 %), never control codes. Either way one
INFO line says what the phase did and how long it took, so train.log keeps it too.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import ProgressBar

from mapo.console import interactive

log = logging.getLogger("mapo.console.progress")
PLAIN_MARKS = (0.25, 0.5, 0.75)  # fractions of a phase at which a pipe gets a line


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`with Progress("cold start", 150, unit="steps") as bar: ... bar.advance(1, "loss 0.2")`.

    enabled=False prints nothing at all (non-zero ranks, library use); the final line is
    logged at INFO in both modes."""

    def __init__(self, desc: str, total: int, *, unit: str = "", enabled: bool = True):
        self.desc, self.total, self.unit = desc, int(total), unit
        self.enabled = enabled and self.total > 0
        self.done, self.info = 0, ""
        self._start = time.perf_counter()
        self._marks = list(PLAIN_MARKS)
        self._bar = None
        if self.enabled and interactive():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._task = self._bar.add_task(desc, total=self.total, info="")
            self._bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(ok=exc[0] is None)

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        self.info = info or self.info
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=self.info)
            return
        passed = [m for m in self._marks if self.done >= m * self.total]
        if passed and self.done < self.total:
            self._marks = [m for m in self._marks if m not in passed]
            elapsed = time.perf_counter() - self._start
            left = elapsed * (self.total - self.done) / max(self.done, 1)
            log.info(
                "%s: %d/%d %s%s (%s, ~%s left)",
                self.desc,
                self.done,
                self.total,
                self.unit,
                self._suffix(),
                _clock(elapsed),
                _clock(left),
            )

    def _suffix(self) -> str:
        return f", {self.info}" if self.info else ""

    def close(self, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.enabled and ok:
            self.enabled = False
            log.info(
                "%s: %d %s in %s%s",
                self.desc,
                self.done,
                self.unit,
                _clock(time.perf_counter() - self._start),
                self._suffix(),
            )


@contextmanager
def phase(desc: str, enabled: bool = True):
    """A phase without a count (export): a spinner in a terminal, then one line with its time."""
    start = time.perf_counter()
    status = None
    if enabled and interactive():
        from rich.console import Console

        status = Console().status(desc)
        status.start()
    try:
        yield
    finally:
        if status is not None:
            status.stop()
    if enabled:
        log.info("%s: done in %s", desc, _clock(time.perf_counter() - start))


class PlainRLProgressBar(ProgressBar):
    """The RL loop's progress in a pipe or CI log: one line every tenth of the run (and the
    last step) with reward, accuracy and time per step, instead of a redrawn bar."""

    KEYS = {
        "reward/overall": "reward",
        "reward/accuracy": "acc",
        "reward/format": "fmt",
        "actor/kl_ref": "kl",
        "time/step": "s/step",
    }

    def __init__(self, lines: int = 10):
        super().__init__()
        self.lines = lines
        self._enabled = True
        self._start = 0.0
        self._first = 0

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._first = getattr(pl_module, "rl_step", 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = getattr(pl_module, "rl_step", 0), getattr(pl_module, "total_steps", 0)
        every = max(1, total // self.lines)
        if not (self._enabled and trainer.is_global_zero and (step % every == 0 or step == total)):
            return
        last = getattr(pl_module, "last_metrics", {}) or {}
        shown = "  ".join(f"{short} {last[k]:.3g}" for k, short in self.KEYS.items() if k in last)
        elapsed = time.perf_counter() - self._start
        left = elapsed * (total - step) / max(step - self._first, 1)
        log.info(
            "RL step %d/%d  %s  (%s, ~%s left)", step, total, shown, _clock(elapsed), _clock(left)
        )
