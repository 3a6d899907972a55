"""The policy's weights for a rollout engine, one bounded bucket at a time, and sync checksums.

Under DeepSpeed ZeRO-3 each rank holds 1/world of every parameter (marked by ``ds_id``), and an
engine needs full tensors. Gathering every parameter at once keeps one extra full copy of the
model on every rank for the whole push (about 15 GB for a 7B model in bf16). ``weight_buckets``
gathers at most ``bucket_bytes`` of full tensors at a time and releases them before the next
bucket, as peers push weights (TRL's colocated vLLM gathers one parameter at a time, verl sends
512 MB buckets). Gathering is collective under ZeRO-3: every rank must walk through all buckets,
in the same order (the state dict's, identical on every rank).

``block_checksums`` summarises weights per transformer block so that an HF state dict and an
engine's own parameters can be compared although the engine fuses some of them (q/k/v into
qkv, gate/up into gate_up): sums over a block do not depend on how its tensors are cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from mapo.models.sharding import gathered

Named = list[tuple[str, Tensor]]


def full_nbytes(t: Tensor) -> int:
    """Bytes of the full tensor, also for a ZeRO-3 parameter whose local data is a shard."""
    return int(getattr(t, "ds_numel", t.numel())) * t.element_size()


def plan_buckets(entries: Named, bucket_bytes: int | None) -> list[Named]:
    """Consecutive runs of ``entries`` of at most ``bucket_bytes`` full bytes each; a tensor
    larger than the limit forms a bucket of its own. None: one bucket holding everything."""
    if bucket_bytes is None:
        return [list(entries)] if entries else []
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0 or None (one bucket); got {bucket_bytes}")
    buckets: list[Named] = []
    current: Named = []
    size = 0
    for name, t in entries:
        nbytes = full_nbytes(t)
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append((name, t))
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def weight_buckets(
    model: torch.nn.Module, bucket_bytes: int | None, entries: Named | None = None
) -> Iterator[Named]:
    """The state dict of ``model`` (HF names; or ``entries``, some of its ``state_dict(
    keep_vars=True)`` items) as buckets of ``(name, full tensor)``.

    A ZeRO-3 bucket's parameters are gathered while the caller holds that bucket and released
    when it asks for the next one: a consumer that keeps a tensor past that point keeps its
    memory alive (values stay valid; only its storage is not freed). Plain and ZeRO-1/2 models
    are read as they are. ``bucket_bytes=None`` gives one bucket: the whole model gathered at
    once. Under ZeRO-3 every rank must exhaust the iterator (the gathers are collective)."""
    if entries is None:
        entries = list(model.state_dict(keep_vars=True).items())
    for bucket in plan_buckets(entries, bucket_bytes):
        seen: set[int] = set()
        params = []
        for _, t in bucket:  # tied weights appear under two names: gather them once
            if hasattr(t, "ds_id") and id(t) not in seen:
                seen.add(id(t))
                params.append(t)
        with gathered(params):
            yield [(name, t.detach()) for name, t in bucket]


def iter_weights(model: torch.nn.Module, bucket_bytes: int | None) -> Iterator[tuple[str, Tensor]]:
    """``weight_buckets`` flattened: one ``(name, tensor)`` at a time, gathered bucket-wise."""
    for bucket in weight_buckets(model, bucket_bytes):
        yield from bucket


_BLOCK = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def block_key(name: str) -> str:
    """``language.3`` / ``visual.0`` for a decoder layer / vision block, ``language.rest`` /
    ``visual.rest`` for embeddings, norms, heads and the merger; HF and vLLM names agree."""
    tower = "visual" if "visual" in name.split(".") else "language"
    match = _BLOCK.search(name)
    return f"{tower}.{match.group(1)}" if match else f"{tower}.rest"


def block_checksums(named: Iterable[tuple[str, Tensor]]) -> dict[str, tuple[float, float]]:
    """Per block (``block_key``): (sum, sum of squares) of every element, in float64.

    Both are unchanged by concatenating, splitting or reshaping the block's tensors, and by
    zero padding (vLLM pads the vocabulary); a tensor shared under two names counts once."""
    out: dict[str, list[float]] = {}
    # Held until the end so that a temporary's memory is not reused by the next tensor.
    seen: dict[tuple, Tensor] = {}
    for name, t in named:
        if t.numel() == 0:
            continue
        where = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if where in seen:  # the same memory under another name (tied embeddings)
            continue
        seen[where] = t
        x = t.detach().double()
        acc = out.setdefault(block_key(name), [0.0, 0.0])
        acc[0] += float(x.sum())
        acc[1] += float((x * x).sum())
    return {k: (v[0], v[1]) for k, v in out.items()}


def _linear_weight(module: torch.nn.Module) -> torch.Tensor:
    """[N, K] weight of a vLLM CPU linear layer that handed it to a packed kernel (oneDNN /
    sgl) and kept an empty tensor: the kernel applied to the identity gives it back exactly
    (every output is one weight times 1 plus zeros)."""
    k = getattr(module, "input_size_per_partition", None) or module.input_size
    eye = torch.eye(k, dtype=module.weight.dtype)
    return module.cpu_linear(eye, None, None).t()


def vllm_model_checksums(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """``block_checksums`` of a vLLM model's parameters as its kernels see them."""

    def tensors():
        for prefix, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if name == "weight" and p.numel() == 0 and hasattr(module, "cpu_linear"):
                    p = _linear_weight(module)
                yield f"{prefix}.{name}", p

    return block_checksums(tensors())
