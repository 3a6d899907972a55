"""The rollout protocol: what every generation engine (HF, vLLM) takes and returns.

One RL step hands the engine B prompts and asks for G completions each; the engine answers
with B*G completions in prompt-major order (all G of prompt 0, then prompt 1, ...). The group
id of completion j is ``prompt_index[j]``; everything downstream keys per-group quantities by
that id, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Prompt:
    """One dataset row, ready for generation."""

    uid: str  # dataset row id (stable across epochs); groups are keyed by it plus the step
    text: str  # chat-templated prompt text, vision placeholders included, ends with the assistant header
    images: tuple[Any, ...]  # PIL images referenced by the placeholders in `text`
    answer: str  # gold answer, for the reward
    task: str  # reward kind: "math" or "emotion"
    source: str = ""  # dataset name, for per-dataset metrics


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 8  # G: completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None  # engines that support per-request seeds use it


@dataclass
class Completions:
    """B*G completions, prompt-major."""

    prompt_index: list[int]  # [B*G] index into the prompts list
    token_ids: list[list[int]]  # [B*G][L_j] sampled tokens, eos included when it was produced
    text: list[str]  # [B*G] decoded completion (special tokens skipped)
    truncated: list[bool]  # [B*G] hit max_new_tokens without eos
    logprobs: list[list[float]] | None = (
        None  # [B*G][L_j] sampler log-probs, when the engine gives them
    )
    timing: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Completions: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...
