"""Worker processes that run the full graders under a per-item timeout.

Why processes: sympy hangs inside C code on inputs such as ``9**9**9**9`` (measured: mathruler
never returns), where no signal or thread can interrupt it; only killing the process can.

Design:
- ``workers`` long-lived subprocesses (``worker.py``), each importing sympy, mathruler and
  math-verify once (about 2 s here).
- Each worker gets its share of a batch in ONE message and streams back one result per item,
  so the IPC cost is per batch, not per item.
- An item's clock starts when its worker finished the previous item (or received the batch).
  An item past ``timeout_s`` is marked ``timeout``; its worker is killed and replaced and the
  replacement gets the items not done yet. A worker that dies (crash, fatal MemoryError) marks
  its current item ``error`` and is replaced the same way.
- Replacements come from a warm spare (one extra idle process, started once a worker is up),
  so a timeout costs the timeout itself rather than a 2 s import, unless timeouts come faster
  than a spare can start.
- ``budget_s`` bounds the whole call: items unfinished by then are marked ``timeout``.
- Each worker caps its address space (``memory_mb`` above its size at start).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

Job = tuple[str, str, str]  # (grader name, given answer, gold answer)
Outcome = tuple[str, bool]  # ("ok" | "timeout" | "error", correct)
READY = "ready"  # a worker's first message, once its imports are done
STARTUP_TIMEOUT_S = 120.0  # a cold start imports sympy + math-verify (~2 s idle, more if busy)
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # makes `mapo` importable in workers


@dataclass(eq=False)  # compared by identity
class _Worker:
    process: subprocess.Popen
    inbox: Connection  # parent -> worker
    outbox: Connection  # worker -> parent
    ready: bool = False
    queue: deque[int] = field(default_factory=deque)  # job indices; head = in progress
    deadline: float = 0.0

    def fileno(self) -> int:  # lets multiprocessing.connection.wait() select on a worker
        return self.outbox.fileno()


def _launch(memory_mb: int) -> _Worker:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "mapo.rewards.worker", str(to_child_r), str(from_child_w)]
    process = subprocess.Popen(
        [*cmd, str(memory_mb)],
        pass_fds=(to_child_r, from_child_w),
        stdin=subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return _Worker(
        process,
        inbox=Connection(to_child_w, readable=False),
        outbox=Connection(from_child_r, writable=False),
        deadline=time.monotonic() + STARTUP_TIMEOUT_S,
    )


def _kill(worker: _Worker) -> None:
    worker.process.kill()
    worker.process.wait(timeout=10)
    worker.inbox.close()
    worker.outbox.close()


class GraderPool:
    """A few worker processes that grade (grader, given, gold) jobs under a timeout."""

    def __init__(self, workers: int = 1, memory_mb: int = 2048) -> None:
        if workers < 1:
            raise ValueError(f"GraderPool needs workers >= 1, got {workers}")
        self.workers = workers
        self.memory_mb = memory_mb
        self.restarts = 0  # workers killed for a timeout or replaced after a crash
        self._slots: list[_Worker | None] = [None] * workers
        self._spare: _Worker | None = None
        self._lock = threading.Lock()

    def run(self, jobs: list[Job], timeout_s: float, budget_s: float) -> list[Outcome]:
        """Grade every job; never raises on job content. ``len(result) == len(jobs)``."""
        outcomes: list[Outcome | None] = [None] * len(jobs)
        if not jobs:
            return []
        with self._lock:
            try:
                self._run(jobs, outcomes, timeout_s, time.monotonic() + budget_s)
            except Exception:  # a pool bug (or exhausted fds): fail these items, not the batch
                for slot in range(self.workers):
                    self._replace(slot)
                return [o if o is not None else ("error", False) for o in outcomes]
        return [o if o is not None else ("timeout", False) for o in outcomes]

    def _run(self, jobs, outcomes, timeout_s: float, budget_end: float) -> None:
        for slot in range(self.workers):
            worker = self._slots[slot]
            if worker is None or worker.process.poll() is not None:
                worker = self._replace(slot)
            worker.queue = deque(range(slot, len(jobs), self.workers))
            if worker.ready:
                self._dispatch(worker, jobs, timeout_s)
        while True:
            busy = [w for w in self._slots if w is not None and w.queue]
            if not busy:
                return
            now = time.monotonic()
            if now >= budget_end:
                for slot, worker in enumerate(self._slots):
                    if worker is not None and worker.queue:
                        self._replace(slot)  # mid-item; unfinished outcomes read "timeout"
                return
            next_deadline = min([w.deadline for w in busy] + [budget_end])
            for worker in wait(busy, timeout=max(0.0, next_deadline - now)):
                self._receive(worker, jobs, outcomes, timeout_s)
            now = time.monotonic()
            for slot, worker in enumerate(self._slots):
                if worker is not None and worker.queue and now >= worker.deadline:
                    # The head item hung (or the worker never came up): that item timed out.
                    outcomes[worker.queue.popleft()] = ("timeout", False)
                    self._replace(slot).queue = worker.queue

    def _receive(self, worker: _Worker, jobs, outcomes, timeout_s: float) -> None:
        try:
            message = worker.outbox.recv()
        except (EOFError, OSError):  # the worker died on its current item
            if worker in self._slots:
                slot = self._slots.index(worker)
                if worker.queue:
                    outcomes[worker.queue.popleft()] = ("error", False)
                self._replace(slot).queue = worker.queue
            return
        if message == READY:
            worker.ready = True
            if self._spare is None and worker in self._slots:
                self._spare = _launch(self.memory_mb)  # started now so it does not slow this one
            self._dispatch(worker, jobs, timeout_s)
            return
        index, status, correct = message
        if worker.queue and worker.queue[0] == index:
            worker.queue.popleft()
            outcomes[index] = (status, bool(correct))
        worker.deadline = time.monotonic() + timeout_s

    def _dispatch(self, worker: _Worker, jobs, timeout_s: float) -> None:
        if worker.queue:
            try:
                worker.inbox.send([(i, *jobs[i]) for i in worker.queue])
            except OSError:
                pass  # it just died: its outbox reports EOF next and _receive replaces it
        worker.deadline = time.monotonic() + timeout_s

    def _replace(self, slot: int) -> _Worker:
        """Kill the worker in ``slot`` (if any) and put the spare (or a new one) there."""
        old = self._slots[slot]
        if old is not None:
            _kill(old)
            self.restarts += 1
        worker = self._spare if self._spare is not None else _launch(self.memory_mb)
        self._spare = None  # a new one starts once this worker is up (see _receive)
        worker.queue = deque()
        self._slots[slot] = worker
        return worker

    def close(self) -> None:
        with self._lock:
            workers = [w for w in [*self._slots, self._spare] if w is not None]
            for worker in workers:  # ask all to exit first, then wait for them together
                try:
                    worker.inbox.send(None)
                except OSError:
                    pass
            deadline = time.monotonic() + 1.0
            for worker in workers:
                try:
                    worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                _kill(worker)
            self._slots = [None] * self.workers
            self._spare = None


_SHARED: GraderPool | None = None


def default_workers() -> int:
    """One worker per two cores, at most four: most answers never reach a worker."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def shared_pool() -> GraderPool:
    """The process-wide pool used by ``score``/``score_batch`` (created on first use)."""
    global _SHARED
    if _SHARED is None:
        import atexit

        _SHARED = GraderPool(workers=default_workers())
        atexit.register(_SHARED.close)
    return _SHARED
