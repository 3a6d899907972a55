"""Registry of reward kinds (``@register_reward("math")``), keyed like the YAML ``data.task``.

Every kind has one signature, batched so that a kind can send all its sympy work to the grader
pool in one call::

    fn(completions: Sequence[str], answers: Sequence[str], grading: Grading)
        -> tuple[list[float], list[float]]   # (format, accuracy), each in [0, 1], len N

``batch.combine`` turns the pair into ``overall``; a kind never sees ``format_weight``.
Every module in ``mapo/rewards/kinds/`` is imported the first time the registry is read, so a
new kind is a new file there (or a module named in the config's ``plugins``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mapo.registry import Registry

from .grading import Grading

RewardFn = Callable[[Sequence[str], Sequence[str], Grading], tuple[list[float], list[float]]]
REWARDS: Registry[RewardFn] = Registry("reward kind", discover="mapo.rewards.kinds")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` as reward kind ``name``; a different function under a taken name fails."""
    return REWARDS.register(name)


def get_reward(name: str) -> RewardFn:
    return REWARDS[name]  # an unknown kind fails, listing the known ones


def known_kinds() -> tuple[str, ...]:
    return tuple(REWARDS.names())
