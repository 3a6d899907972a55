"""Reward kind ``math``: the authors' think-then-boxed format and last-box accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from .grading import MAX_ANSWER_CHARS, Grading
from .registry import register_reward
from .text import has_think_then_box, last_boxed, normalize_response


@register_reward("math")
def math_reward(
    completions: Sequence[str], answers: Sequence[str], grading: Grading
) -> tuple[list[float], list[float]]:
    """Format: ``<think>...</think>`` then ``\\boxed{...}`` (EasyR1's check). Accuracy: the last
    box's content against the gold answer, graded by ``grading`` (mathruler by default)."""
    normalized = [normalize_response(c) for c in completions]
    formats = [float(has_think_then_box(text)) for text in normalized]
    given = [last_boxed(text, MAX_ANSWER_CHARS) for text in normalized]
    accuracy = grading.grade(list(zip(given, answers)))
    return formats, accuracy
