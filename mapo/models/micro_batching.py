"""How one RL step's rollout batch is cut into forwards: ``StepLayout`` and its micro-batches.

``StepLayout`` is built once per RL step from one setting per concept: the row count
(``algorithm.micro_batch_size``) or the token budget (``algorithm.max_tokens_per_micro_batch``),
padding-free packing (``model.padding_free``, ``mapo.models.packing``) and the shared prompt
pass (``model.share_prompt``). It owns the micro-batches of any set of rows, the equal forward
count across data-parallel ranks, trimming each micro-batch to its own longest row, and
scattering per-micro-batch results back into [N, L].

Token-budget micro-batches: rows grouped by how many token positions a forward computes.

Fixed micro-batches of k rollouts, in prompt order, pad every row to the longest prompt and
the longest completion of the whole batch; with long-tailed completion lengths most of the
computed positions are padding (docs/benchmarks.md, "Realistic shapes"). Here a mini-batch is
split so that each micro-batch computes at most ``max_tokens`` positions, counted as the
forward will run it:

  * padded (``padding_free=False``): rows sorted by length (longest first), filled in order while
    rows x (longest prompt + longest completion) of the micro-batch fits; ``trim`` then cuts
    the micro-batch to its own longest prompt and completion.
  * packed (``padding_free=True``, ``mapo.models.packing``): no padding at all, so grouping is free
    to serve the shared prompt pass. With ``share_prompt`` the unit is a prompt's group (its
    prompt once plus its completions), split into row chunks only when a group alone exceeds
    the budget; units go first-fit-decreasing into micro-batches (verl's dynamic batch size
    balances the same way, by token count, without the shared prompt).

The split changes no number: the loss divides by mini-batch totals (``Normalizer``), so any
partition of the rows gives the one-big-batch gradient. Under ZeRO-3 every rank must run the
same number of forwards, so ``min_count`` (the maximum over ranks) splits the costliest
micro-batches further and, if rows run out, appends empty ones (the caller runs those as a
zero-weight forward).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from mapo.models.batching import PolicyInputs
from mapo.ranks import all_reduce


@dataclass(frozen=True)
class MicroBatch:
    rows: Tensor  # [n] long: rows of the rollout batch
    dummy: bool = False  # a zero-weight forward that only keeps ZeRO-3 ranks in step


class StepLayout:
    """The micro-batches of one RL step's rollout batch (module docstring)."""

    def __init__(
        self,
        batch: PolicyInputs,
        *,
        micro_batch_size: int,
        max_tokens_per_micro_batch: int | None,
        padding_free: bool,
        share_prompt: bool,
    ):
        self.batch = batch
        self.micro_batch_size = micro_batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.padding_free = padding_free
        self.share_prompt = share_prompt
        budgeted = max_tokens_per_micro_batch is not None
        self._lengths = row_lengths(batch) if budgeted else None

    @property
    def trims(self) -> bool:
        """Token budgets cut each micro-batch to its own longest prompt and completion."""
        return self._lengths is not None

    def micro_batches(self, rows: Tensor) -> list[MicroBatch]:
        """Micro-batches over ``rows``: fixed ``micro_batch_size`` chunks, or the token-budget
        plan with the count agreed across ranks (the maximum; a rank with fewer rows than that
        gets dummy micro-batches of one of its rows)."""
        rows = rows.cpu()
        if self._lengths is None:
            return [MicroBatch(r) for r in rows.split(self.micro_batch_size)]
        prompt, completion = self._lengths
        lengths = (prompt[rows], completion[rows], self.batch.prompt_index.cpu()[rows])
        budget = self.max_tokens_per_micro_batch
        kw = dict(padding_free=self.padding_free, share_prompt=self.share_prompt)
        plan = plan_micro_batches(*lengths, budget, **kw)
        (count,) = all_reduce([len(plan)], "max")
        if count > len(plan):
            plan = plan_micro_batches(*lengths, budget, min_count=int(count), **kw)
        return [
            MicroBatch(rows[b]) if b.numel() else MicroBatch(rows[:1], dummy=True) for b in plan
        ]

    def inputs(self, mb: MicroBatch) -> PolicyInputs:
        """The micro-batch's rows, trimmed when the layout trims."""
        sub = self.batch.select(mb.rows)
        return trim(sub) if self.trims else sub

    def scatter(self, micro_batches: list[MicroBatch], parts: list[Tensor]) -> Tensor:
        """Per-micro-batch [n_k, L_k] values of the real micro-batches (in order) back into one
        [N, L] tensor, zeros elsewhere."""
        real = [mb.rows for mb in micro_batches if not mb.dummy]
        return scatter_rows(parts, real, tuple(self.batch.completion_mask.shape))


def row_lengths(inputs: PolicyInputs) -> tuple[Tensor, Tensor]:
    """([N] real prompt tokens, [N] real completion tokens) of each row."""
    prompt = inputs.attention_mask[:, : inputs.prompt_len].sum(-1)
    return prompt.cpu(), inputs.completion_mask.sum(-1).cpu()


def trim(inputs: PolicyInputs) -> PolicyInputs:
    """The same rows without the columns that are padding in every row (the left of the
    prompts, the right of the completions): a micro-batch padded to its own longest row."""
    p = inputs.prompt_len
    prompt_real = inputs.attention_mask[:, :p].bool().any(0)
    first = int(prompt_real.float().argmax()) if bool(prompt_real.any()) else p
    length = max(int(inputs.completion_mask.sum(-1).max()), 1) if inputs.num_rows else 1
    cols = slice(first, p + length)
    return replace(
        inputs,
        input_ids=inputs.input_ids[:, cols],
        attention_mask=inputs.attention_mask[:, cols],
        mm_token_type_ids=inputs.mm_token_type_ids[:, cols],
        completion_ids=inputs.completion_ids[:, :length],
        completion_mask=inputs.completion_mask[:, :length],
    )


def computed_tokens(
    prompt_lens: Tensor,
    completion_lens: Tensor,
    prompt_index: Tensor,
    *,
    padding_free: bool,
    share_prompt: bool,
) -> int:
    """Token positions one forward over these rows computes (after ``trim`` when padded)."""
    n = int(prompt_lens.numel())
    if n == 0:
        return 0
    if not padding_free:
        return n * int(prompt_lens.max() + completion_lens.max())
    tails = int((completion_lens - 1).clamp_min(0).sum())
    if not share_prompt:
        return int(prompt_lens.sum()) + tails
    firsts = {}
    for b, p in zip(prompt_index.tolist(), prompt_lens.tolist()):
        firsts.setdefault(b, p)
    return sum(firsts.values()) + tails


def plan_micro_batches(
    prompt_lens: Tensor,
    completion_lens: Tensor,
    prompt_index: Tensor,
    max_tokens_per_micro_batch: int,
    *,
    padding_free: bool,
    share_prompt: bool,
    min_count: int = 1,
) -> list[Tensor]:
    """Row indices (into the given rows) of each micro-batch; see the module docstring."""
    n = int(prompt_lens.numel())
    max_tokens = max_tokens_per_micro_batch
    cost = _cost_fn(prompt_lens, completion_lens, prompt_index, padding_free, share_prompt)
    longest = max((cost([i]) for i in range(n)), default=0)
    if longest > max_tokens:
        raise ValueError(
            f"algorithm.max_tokens_per_micro_batch={max_tokens} is below one rollout's "
            f"{longest} tokens (prompt + completion): raise it to at least the longest prompt "
            "plus rollout.max_new_tokens"
        )
    if padding_free:
        batches = _first_fit(_units(prompt_index, share_prompt, cost, max_tokens), cost, max_tokens)
    else:
        batches = _next_fit_sorted(prompt_lens, completion_lens, max_tokens)
    batches = _split_to(batches, min_count, cost)
    return [torch.tensor(b, dtype=torch.long) for b in batches]


def _cost_fn(prompt_lens, completion_lens, prompt_index, padding_free, share_prompt):
    def cost(rows: list[int]) -> int:
        idx = torch.tensor(rows, dtype=torch.long)
        return computed_tokens(
            prompt_lens[idx],
            completion_lens[idx],
            prompt_index[idx],
            padding_free=padding_free,
            share_prompt=share_prompt,
        )

    return cost


def _units(prompt_index: Tensor, share_prompt: bool, cost, budget: int) -> list[list[int]]:
    """Packing units: whole groups (split into row chunks that fit) or single rows."""
    if not share_prompt:
        return [[i] for i in range(int(prompt_index.numel()))]
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(prompt_index.tolist()):
        groups.setdefault(b, []).append(i)
    units = []
    for rows in groups.values():
        chunk: list[int] = []
        for i in rows:
            if chunk and cost(chunk + [i]) > budget:
                units.append(chunk)
                chunk = []
            chunk.append(i)
        units.append(chunk)
    return units


def _first_fit(units: list[list[int]], cost, budget: int) -> list[list[int]]:
    # Packed costs add up (two chunks of one group in one micro-batch would share their
    # prompt, so the running sum is an upper bound there), which keeps this O(units x batches).
    sized = sorted(((cost(u), u) for u in units), key=lambda x: x[0], reverse=True)
    batches: list[list[int]] = []
    totals: list[int] = []
    for size, unit in sized:
        for k, total in enumerate(totals):
            if total + size <= budget:
                batches[k].extend(unit)
                totals[k] += size
                break
        else:
            batches.append(list(unit))
            totals.append(size)
    return [sorted(b) for b in batches]


def _next_fit_sorted(prompt_lens: Tensor, completion_lens: Tensor, budget: int) -> list[list[int]]:
    """Longest rows first; a micro-batch computes rows x (longest prompt + longest completion)."""
    order = torch.argsort(prompt_lens + completion_lens, descending=True, stable=True).tolist()
    batches: list[list[int]] = []
    width = (0, 0)
    for i in order:
        p, c = int(prompt_lens[i]), int(completion_lens[i])
        grown = (max(width[0], p), max(width[1], c))
        if batches and (len(batches[-1]) + 1) * sum(grown) <= budget:
            batches[-1].append(i)
            width = grown
        else:
            batches.append([i])
            width = (p, c)
    return batches


def _split_to(batches: list[list[int]], count: int, cost) -> list[list[int]]:
    """At least ``count`` micro-batches: halve the costliest splittable one, then pad with
    empty ones when every micro-batch holds a single row."""
    batches = [b for b in batches if b]
    while len(batches) < count:
        splittable = [b for b in batches if len(b) > 1]
        if not splittable:
            batches.extend([] for _ in range(count - len(batches)))
            break
        big = max(splittable, key=cost)
        batches.remove(big)
        half = len(big) // 2
        batches.extend([big[:half], big[half:]])
    return batches


def scatter_rows(parts: list[Tensor], indices: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """Per-micro-batch [n_k, L_k] values (trimmed) back into one [N, L] tensor, zeros elsewhere."""
    out = torch.zeros(shape, dtype=parts[0].dtype, device=parts[0].device)
    for part, idx in zip(parts, indices):
        out[idx.to(out.device), : part.shape[1]] = part
    return out
