"""The shared types every layer speaks: prompts, sampling settings, completions, the rollout
protocol, the rollout batch one RL step trains on, and the optimizer settings.

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
from torch import Tensor

# The longest answer the reward grades (the data loader refuses longer gold answers). Real
# answers (Geo3K choices, MathVista, emotion labels) are under 200 characters; the cap bounds
# the in-process work (mathruler's normalisation, pylatexenc) on hostile output.
MAX_ANSWER_CHARS = 1000


@dataclass(frozen=True)
class Prompt:
    """One dataset row, ready for generation."""

    uid: str  # dataset row id (stable across epochs); groups are keyed by it plus the step
    text: str  # chat-templated prompt text, vision placeholders included, ends with the assistant header
    images: tuple[Any, ...]  # PIL images referenced by the placeholders in `text`
    answer: str  # gold answer, for the reward
    task: str  # the row's kind, "math" or "emotion" (the reward scored is the config's data.task)
    source: str = ""  # dataset name, for per-dataset metrics


@dataclass(frozen=True)
class SamplingConfig:
    """The one sampling object: engines sample with it and the log-probs use its temperature.
    No defaults: mapo/pipeline/validate.py builds it from rollout.* (training, n =
    algorithm.group_size) and rollout.eval.* (evaluation, n = 1)."""

    n: int  # G: completions per prompt
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None = None  # per-request seeds where the engine supports them; None: global RNG


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


@dataclass
class RolloutBatch:
    """What the rollout callback hands the module for one step (this rank's share)."""

    step: int
    prompts: list[Prompt]  # [B]
    completions: Completions  # [B*G], prompt-major
    group_ids: Tensor  # [B*G] int64, unique per prompt over the whole run
    rewards: dict[str, Tensor] | None = None  # overall/format/accuracy [B*G] + counters
    metrics: dict[str, float] = field(default_factory=dict)  # rollout timings, DAPO counts


@dataclass(frozen=True)
class OptimConfig:
    """``optim.*`` key for key (conf/optim/adamw.yaml holds the defaults and documents them;
    mapo/pipeline/validate.py check_optim holds the rules)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float | None  # max global grad norm; None: no clipping
    schedule: str  # constant | cosine
    warmup_steps: int
    min_lr_ratio: float
    impl: str  # torch | fused (DeepSpeed FusedAdam, CUDA only)
