"""Reward kind ``math``: the authors' think-then-boxed format and last-box accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from ..grading import MAX_ANSWER_CHARS, Grading
from ..registry import register_reward
from ..text import accepted_answers, has_think_then_box, last_boxed, normalize_response


@register_reward("math")
def math_reward(
    completions: Sequence[str], answers: Sequence[str], grading: Grading
) -> tuple[list[float], list[float]]:
    """Format: ``<think>...</think>`` then ``\\boxed{...}`` (EasyR1's check). Accuracy: the last
    box's content against the gold answer, graded by ``grading`` (mathruler by default); a
    gold answer listing several accepted answers (``accepted_answers``) scores the best."""
    normalized = [normalize_response(c) for c in completions]
    formats = [float(has_think_then_box(text)) for text in normalized]
    given = [last_boxed(text, MAX_ANSWER_CHARS) for text in normalized]
    golds = [accepted_answers(a) for a in answers]
    scores = grading.grade([(g, alt) for g, alts in zip(given, golds) for alt in alts])
    accuracy, start = [], 0
    for alts in golds:  # one pass over the flat list: best score per completion
        accuracy.append(max(scores[start : start + len(alts)]))
        start += len(alts)
    return formats, accuracy
