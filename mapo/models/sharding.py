"""Whole-model views of a model whose parameters DeepSpeed ZeRO-3 shards across ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    """ZeRO-3 marks each sharded parameter with ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """ZeRO-3 parameters `params` gathered in full on every rank for the block (read-only:
    modifier_rank=None writes nothing back). Collective: every rank must enter it."""
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextlib.contextmanager
def gathered_state_dict(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The full state dict of ``model``, also when DeepSpeed ZeRO-3 shards its parameters.

    Under ZeRO-3 each rank holds a slice of every parameter (marked by ``ds_id``); they are
    gathered, on every rank, for the duration of the block (peak memory: one full copy of the
    model per rank). Use the tensors inside the block only."""
    if is_sharded(model):
        with gathered(list(model.parameters())):
            yield model.state_dict()
    else:
        yield model.state_dict()
