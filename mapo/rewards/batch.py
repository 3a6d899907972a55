"""Public scoring API: ``score`` for one completion, ``score_batch`` for a training step.

``overall = (1 - w) * accuracy + w * format`` with ``w = format_weight``. Every scoring setting
is the caller's: ``reward.*`` of conf/reward/default.yaml is their one home. Success downstream
is ``overall == 1``, so a perfect answer must give exactly 1.0: ``combine`` returns
``accuracy`` itself whenever accuracy equals format (then the mix is that same value
mathematically) instead of trusting float rounding for every ``w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .grading import Grading
from .pool import GraderPool
from .registry import get_reward, known_kinds

if TYPE_CHECKING:
    import torch


def combine(accuracy: float, fmt: float, format_weight: float) -> float:
    if accuracy == fmt:
        return accuracy
    return min(1.0, max(0.0, (1.0 - format_weight) * accuracy + format_weight * fmt))


@dataclass
class RewardBatch:
    overall: torch.Tensor  # [N] float64
    format: torch.Tensor  # [N] float64, 0 or 1
    accuracy: torch.Tensor  # [N] float64, 0 or 1
    timeouts: int  # answers whose grading ran past timeout_s (or the batch budget): scored 0
    errors: int  # grader/reward exceptions or crashed workers: scored 0
    rejected: int  # answers refused before grading (too long, explosive shape): scored 0
    pooled: int  # answers that needed a sympy worker (the rest were decided in-process)

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Flat, namespaced numbers for the logger (``reward/overall``, ``reward/timeouts``)."""
        n = max(1, self.overall.numel())
        return {
            f"{prefix}/overall": float(self.overall.mean()) if self.overall.numel() else 0.0,
            f"{prefix}/format": float(self.format.mean()) if self.format.numel() else 0.0,
            f"{prefix}/accuracy": float(self.accuracy.mean()) if self.accuracy.numel() else 0.0,
            f"{prefix}/timeouts": float(self.timeouts),
            f"{prefix}/errors": float(self.errors),
            f"{prefix}/rejected": float(self.rejected),
            f"{prefix}/pooled_frac": self.pooled / n,
        }


def _check_inputs(kinds: Sequence[str], completions, answers, format_weight: float) -> None:
    if len(completions) != len(answers) or len(kinds) != len(completions):
        raise ValueError(
            f"score_batch needs one answer (and kind) per completion: got {len(completions)} "
            f"completions, {len(answers)} answers, {len(kinds)} kinds"
        )
    for name, seq in (("completions", completions), ("answers", answers)):
        bad = next((type(x).__name__ for x in seq if not isinstance(x, str)), None)
        if bad is not None:
            raise TypeError(f"{name} must all be str, found a {bad}; decode tokens first")
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    for kind in set(kinds):
        get_reward(kind)  # ValueError listing the known kinds


def _run_kind(kind: str, completions: list[str], answers: list[str], grading: Grading):
    """(format, accuracy) lists for one kind; a failing kind costs its items, never the batch."""
    fn = get_reward(kind)
    try:
        fmt, acc = fn(completions, answers, grading)
        if len(fmt) == len(acc) == len(completions):
            return fmt, acc
    except Exception:
        pass
    fmt, acc = [0.0] * len(completions), [0.0] * len(completions)
    for i, (c, a) in enumerate(zip(completions, answers)):  # isolate the offending item(s)
        try:
            (fmt[i],), (acc[i],) = fn([c], [a], grading)
        except Exception:
            grading.counts.errors += 1
    return fmt, acc


def _in01(x) -> float | None:
    """A kind's score as a float in [0, 1], or None for NaN, inf, a non-number or a value
    outside [0, 1] (a bug in that kind)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if 0.0 <= x <= 1.0 else None


def _score_lists(kinds_or_kind, completions, answers, format_weight, grading: Grading):
    """(overall, format, accuracy) lists; the shared core of ``score`` and ``score_batch``."""
    n = len(completions)
    if isinstance(kinds_or_kind, str):
        get_reward(kinds_or_kind)  # an unknown kind fails even for an empty batch
        kinds = [kinds_or_kind] * n
    else:
        kinds = list(kinds_or_kind)
    _check_inputs(kinds, completions, answers, format_weight)
    fmt, acc = [0.0] * n, [0.0] * n
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        kind_fmt, kind_acc = _run_kind(
            kind, [completions[i] for i in idx], [answers[i] for i in idx], grading
        )
        for i, f, a in zip(idx, kind_fmt, kind_acc):
            f, a = _in01(f), _in01(a)
            if f is None or a is None:  # scored 0 and counted, never a silent 0 or clip
                grading.counts.errors += 1
                f, a = 0.0, 0.0
            fmt[i], acc[i] = f, a
    overall = [combine(a, f, format_weight) for a, f in zip(acc, fmt)]
    return overall, fmt, acc


def score_batch(
    kinds_or_kind: str | Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    format_weight: float,  # reward.* (conf/reward/default.yaml)
    grader: str,
    timeout_s: float,
    budget_s: float,
    pool: GraderPool | None = None,
) -> RewardBatch:
    """Score N completions. ``kinds_or_kind`` is one kind for all or one per completion.
    ``grader`` is ``"mathruler"`` (the paper's) or ``"math_verify"``; ``timeout_s`` bounds each
    sympy grading, ``budget_s`` the whole batch. Raises only on programming errors (unknown
    kind or grader, mismatched lengths, non-str items, format_weight outside [0, 1])."""
    import torch

    grading = Grading(grader, timeout_s=timeout_s, budget_s=budget_s, pool=pool)
    overall, fmt, acc = _score_lists(kinds_or_kind, completions, answers, format_weight, grading)
    c = grading.counts
    return RewardBatch(
        overall=torch.tensor(overall, dtype=torch.float64),
        format=torch.tensor(fmt, dtype=torch.float64),
        accuracy=torch.tensor(acc, dtype=torch.float64),
        timeouts=c.timeouts,
        errors=c.errors,
        rejected=c.rejected,
        pooled=c.pooled,
    )


def score(
    kind: str,
    completion: str,
    answer: str,
    *,
    format_weight: float,  # reward.* (conf/reward/default.yaml)
    grader: str,
    timeout_s: float,
    budget_s: float,
) -> dict[str, float]:
    """``{"overall", "format", "accuracy"}`` floats in [0, 1] for one completion. Never raises on
    any ``completion``/``answer`` string; the only raise is ValueError for an unknown kind (or
    another programming error: see ``score_batch``). ``timeout_s`` bounds the grading,
    ``budget_s`` the whole call (a cold worker start included)."""
    grading = Grading(grader, timeout_s=timeout_s, budget_s=budget_s)
    (overall,), (fmt,), (acc,) = _score_lists(kind, [completion], [answer], format_weight, grading)
    return {"overall": overall, "format": fmt, "accuracy": acc}


__all__ = ["RewardBatch", "combine", "known_kinds", "score", "score_batch"]
