"""Whole-model views of a model whose parameters DeepSpeed ZeRO-3 shards across ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    """ZeRO-3 marks each sharded parameter with ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered_state_dict(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The full state dict of ``model``, also when DeepSpeed ZeRO-3 shards its parameters.

    Under ZeRO-3 each rank holds a slice of every parameter (marked by ``ds_id``); they are
    gathered, on every rank, for the duration of the block (peak memory: one full copy of the
    model per rank). Use the tensors inside the block only."""
    params = list(model.parameters())
    if is_sharded(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield model.state_dict()
    else:
        yield model.state_dict()
