"""The one cross-rank helper: a few numbers reduced over the data-parallel ranks.

The RL step agrees on a handful of scalars across ranks (the micro-batch count under ZeRO-3,
the mini-batch's token and sequence totals, whether any rank must draw more DAPO groups); each
is one small all-reduce through ``all_reduce``. Alone (no process group, or a world of one) the
values come back unchanged, so single-process code paths never touch torch.distributed.
"""

from __future__ import annotations

import torch

_OPS = {"sum": "SUM", "max": "MAX"}


def world_size() -> int:
    """Data-parallel ranks in the default process group (1 without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def all_reduce(values: list[float], op: str) -> list[float]:
    """``values`` reduced elementwise over the ranks with ``op`` ("sum" or "max"), in float64
    (exact for counts below 2^53)."""
    if op not in _OPS:
        raise ValueError(f"all_reduce op={op!r}; use one of {sorted(_OPS)}")
    if world_size() == 1:
        return [float(v) for v in values]
    dist = torch.distributed
    on_cuda = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, _OPS[op]))
    return t.tolist()


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank()


def all_gather_objects(obj: object) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` alone); collective."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
