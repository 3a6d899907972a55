"""How the RL module splits a mini-batch into micro-batches: a fixed row count (the default)
or a token budget (``algorithm.max_tokens_per_micro_batch``, ``mapo.models.micro_batching``),
with the same number of micro-batches on every data-parallel rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mapo.models.batching import PolicyInputs
from mapo.models.micro_batching import plan_micro_batches, row_lengths, trim


@dataclass(frozen=True)
class MicroBatch:
    rows: Tensor  # [n] long: rows of the rollout batch
    dummy: bool = False  # a zero-weight forward that only keeps ZeRO-3 ranks in step

    def inputs(self, batch: PolicyInputs, *, trimmed: bool) -> PolicyInputs:
        """This micro-batch's rows (cut to its own longest prompt and completion if trimmed)."""
        sub = batch.select(self.rows)
        return trim(sub) if trimmed else sub


def split_rows(
    batch: PolicyInputs,
    rows: Tensor,
    *,
    micro_batch_size: int,
    max_tokens: int | None,
    packed: bool,
    share_prompt: bool,
) -> list[MicroBatch]:
    """Micro-batches over ``rows``: fixed ``micro_batch_size`` chunks when ``max_tokens`` is
    None, else the token-budget plan with the count agreed across ranks (max over ranks;
    ranks with fewer rows than that get dummy micro-batches of one of their rows)."""
    rows = rows.cpu()
    if max_tokens is None:
        return [MicroBatch(r) for r in rows.split(micro_batch_size)]
    prompt, completion = row_lengths(batch)
    lengths = (prompt[rows], completion[rows], batch.prompt_index.cpu()[rows])
    kw = dict(packed=packed, share_prompt=share_prompt)
    plan = plan_micro_batches(*lengths, max_tokens, **kw)
    count = agreed_count(len(plan))
    if count > len(plan):
        plan = plan_micro_batches(*lengths, max_tokens, min_count=count, **kw)
    return [MicroBatch(rows[b]) if b.numel() else MicroBatch(rows[:1], dummy=True) for b in plan]


def agreed_count(count: int) -> int:
    """The largest ``count`` over the data-parallel ranks (``count`` itself when alone)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())
