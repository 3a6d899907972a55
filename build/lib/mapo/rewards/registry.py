"""Registry of reward kinds (``@register_reward("math")``), keyed like the YAML ``reward.kind``.

Every kind has one signature, batched so that a kind can send all its sympy work to the grader
pool in one call::

    fn(completions: Sequence[str], answers: Sequence[str], grading: Grading)
        -> tuple[list[float], list[float]]   # (format, accuracy), each in [0, 1], len N

``combine.py`` turns the pair into ``overall``; a kind never sees ``format_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .grading import Grading

RewardFn = Callable[[Sequence[str], Sequence[str], Grading], tuple[list[float], list[float]]]
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` as reward kind ``name``; a different function under a taken name fails."""

    def decorator(fn: RewardFn) -> RewardFn:
        existing = _REWARDS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(
                f"reward kind {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}; pick another name"
            )
        _REWARDS[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    if name not in _REWARDS:
        raise ValueError(f"unknown reward kind {name!r}; known kinds: {sorted(_REWARDS)}")
    return _REWARDS[name]


def known_kinds() -> tuple[str, ...]:
    return tuple(sorted(_REWARDS))
