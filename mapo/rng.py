"""The process's random state (python, numpy, torch, CUDA) in one object: saved into a
checkpoint by the trainer, kept around an in-process vLLM build that reseeds everything.

`rng_state()` holds plain lists and tensors only, so `torch.load(weights_only=True)` reads it
back from a checkpoint; `set_rng_state(rng_state())` restores exactly the state it read.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch and (when present) CUDA generator states."""
    return {
        "python": _to_lists(random.getstate()),
        "numpy": _to_lists(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned (the CUDA part only where CUDA is present)."""
    random.setstate(_to_tuples(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_to_lists(v) for v in x]
    return x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _numpy_state(x: list) -> tuple:
    name, keys, pos, has_gauss, cached = x
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
