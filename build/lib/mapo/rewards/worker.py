"""Grader worker process: ``python -m mapo.rewards.worker READ_FD WRITE_FD MEMORY_MB``.

A plain subprocess rather than ``multiprocessing``: spawn and forkserver children re-run the
parent's ``__main__`` script (a footgun for any script without a main guard) and ``fork`` is
unsafe in a trainer that holds CUDA/NCCL threads. The protocol is
``multiprocessing.connection`` framing (length-prefixed pickles) over two inherited pipes;
stdout and stderr stay free for stray library prints.

Messages: the worker sends ``"ready"`` once imported, then loops: receive a list of
``(index, grader, given, gold)`` (or ``None`` to exit) and send ``(index, status, correct)``
per item as soon as it is graded, ``status`` being ``"ok"`` or ``"error"``.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

from .pool import READY


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space so a sympy blow-up raises MemoryError here, not an OOM kill."""
    try:
        import resource

        with open("/proc/self/status") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = vm_kb * 1024 + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, ImportError, StopIteration):
        pass  # not Linux: no cap; the parent's timeout still applies


def _detach_from_terminal_signals() -> None:
    """Ctrl-C is the parent's to handle; and die with the parent, even while stuck in sympy,
    instead of spinning on as an orphan (Linux only)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(inbox: Connection, outbox: Connection, memory_mb: int) -> None:
    _detach_from_terminal_signals()
    from .graders import get_grader, preload

    preload()
    _limit_memory(memory_mb)
    outbox.send(READY)
    while True:
        try:
            batch = inbox.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if batch is None:
            return
        for index, grader_name, given, gold in batch:
            try:
                correct = bool(get_grader(grader_name).full(given, gold))
                outbox.send((index, "ok", correct))
            except Exception:  # includes MemoryError; a grader bug must not end the worker
                outbox.send((index, "error", False))


if __name__ == "__main__":
    read_fd, write_fd, memory = (int(arg) for arg in sys.argv[1:4])
    serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False), memory)
