"""Per-batch grading of (given answer, gold answer) pairs with counters.

Order of work for each pair, cheapest first:
1. no answer (``None`` or empty) -> 0;
2. ``rejected`` -> 0: either side longer than ``MAX_ANSWER_CHARS``, or the given answer has a
   shape that makes sympy compute astronomically large numbers while the gold does not
   (``safety.looks_explosive``);
3. the grader's in-process ``quick`` path (no sympy) when it can decide;
4. the rest goes to ``pool.GraderPool`` in ONE call per batch, under ``timeout_s`` per item and
   ``budget_s`` for the batch; a timeout or a crashed worker gives 0 and is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapo.types import MAX_ANSWER_CHARS  # re-exported here: the graders' cap

from .graders import get_grader
from .pool import GraderPool, shared_pool
from .safety import looks_explosive


@dataclass
class GradeCounts:
    timeouts: int = 0  # pool items past timeout_s or past the batch budget
    errors: int = 0  # grader exceptions, crashed workers, reward-kind failures
    rejected: int = 0  # refused before grading (too long, explosive shape)
    pooled: int = 0  # items that needed a worker process (sympy)


class Grading:
    """What a reward kind uses to grade answers; one instance per scored batch."""

    def __init__(
        self,
        grader: str,
        *,
        timeout_s: float,
        budget_s: float,
        pool: GraderPool | None = None,
    ) -> None:
        if timeout_s <= 0 or budget_s <= 0:
            raise ValueError(f"timeout_s and budget_s must be > 0, got {timeout_s}, {budget_s}")
        self.grader = get_grader(grader)
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self._pool = pool
        self.counts = GradeCounts()

    def grade(self, pairs: Sequence[tuple[str | None, str]]) -> list[float]:
        """1.0 / 0.0 per (given, gold) pair; never raises on pair content."""
        scores = [0.0] * len(pairs)
        slow: list[int] = []
        for i, (given, gold) in enumerate(pairs):
            if not given:
                continue
            if len(given) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
                self.counts.rejected += 1
                continue
            if looks_explosive(given) and not looks_explosive(gold):
                self.counts.rejected += 1
                continue
            try:
                decided = self.grader.quick(given, gold)
            except Exception:
                self.counts.errors += 1
                continue
            if decided is None:
                slow.append(i)
            else:
                scores[i] = float(decided)
        if slow:
            self._grade_in_pool(pairs, slow, scores)
        return scores

    def _grade_in_pool(self, pairs, slow: list[int], scores: list[float]) -> None:
        pool = self._pool if self._pool is not None else shared_pool()
        jobs = [(self.grader.name, pairs[i][0], pairs[i][1]) for i in slow]
        outcomes = pool.run(jobs, self.timeout_s, self.budget_s)
        self.counts.pooled += len(slow)
        for i, (status, correct) in zip(slow, outcomes):
            if status == "timeout":
                self.counts.timeouts += 1
            elif status == "error":
                self.counts.errors += 1
            else:
                scores[i] = float(correct)
