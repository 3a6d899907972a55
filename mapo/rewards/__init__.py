"""Rewards for RL post-training: ``score(kind, completion, answer)`` and ``score_batch``.

Kinds: ``math`` (think-then-boxed format, last-box accuracy by mathruler or math-verify) and
``emotion`` (same format, normalised label match). See docs/reliability.md for how they behave
on hostile model output. Importing this package does not import torch (the grader worker
processes import it too); ``score_batch`` imports torch when first called.
"""

from .batch import RewardBatch, combine, score, score_batch
from .graders import GRADERS
from .grading import MAX_ANSWER_CHARS, GradeCounts, Grading
from .pool import GraderPool
from .registry import REWARDS, RewardFn, get_reward, known_kinds, register_reward

__all__ = [
    "GRADERS",
    "MAX_ANSWER_CHARS",
    "GradeCounts",
    "GraderPool",
    "Grading",
    "RewardBatch",
    "RewardFn",
    "combine",
    "REWARDS",
    "get_reward",
    "known_kinds",
    "register_reward",
    "score",
    "score_batch",
]
