"""Varlen attention over a packed sequence with explicit key segments: how the flash-attn and
sdpa backends run the packed pass, shared prompt included (``mapo.models.packing``).

transformers' varlen route derives one segment per sequence, with keys = queries. A shared
prompt needs more: each completion attends to its prompt's tokens, which are not in its own
segment. ``install(backend)`` wraps that backend's attention function once; a forward called
with ``varlen_segments=`` (a ``VarlenSegments``) then

  1. gathers keys and values by ``key_index`` ([1, h_kv, T, d] -> [1, h_kv, K, d]), so each
     completion's key segment is its prompt's keys followed by its own;
  2. calls the backend's own function with ``cu_seq_lens_q`` / ``cu_seq_lens_k`` and
     ``is_causal``, i.e. ``flash_attn_varlen_func`` with separate query and key offsets; for
     sdpa (no varlen kernel, e.g. on CPU), ``segmented_sdpa``: one call per segment.

flash-attn >= 2.1 aligns the causal mask to the bottom right when a query segment is shorter
than its key segment: query j of a completion of length L with K keys sees keys 0..K-L+j,
which is the whole prompt and the completion's tokens 0..j. Older flash-attn aligns it to the
top left, which would hide the prompt, so ``install`` refuses them. Every call without
``varlen_segments`` (the vision tower, generation, evaluation) goes to the original function
unchanged. The kwarg travels through the decoder layers' ``**kwargs``, so the gradient
checkpointing recomputation replays it: the pass works with checkpointing on, which the
cache-based shared prompt pass does not.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from mapo.models.packing import VarlenSegments

_WRAPPED: dict[str, Callable] = {}  # backend -> the wrapper installed for it
_SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]  # transformers' own, before any wrapping


def install(backend: str) -> None:
    """Wrap ``backend``'s attention function (idempotent; module docstring)."""
    current = ALL_ATTENTION_FUNCTIONS[backend]
    if _WRAPPED.get(backend) is current:
        return
    if backend.startswith("flash_attention"):
        from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

        if flash_attn_supports_top_left_mask():
            raise RuntimeError(
                "the packed shared prompt pass needs flash-attn >= 2.1 (bottom-right causal "
                "alignment); upgrade flash-attn, or set model.share_prompt=false"
            )
    wrapper = functools.partial(_attention, current)
    AttentionInterface.register(backend, wrapper)
    _WRAPPED[backend] = wrapper


def _attention(
    original: Callable,
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, h, T, d]
    key: torch.Tensor,  # [1, h_kv, T, d]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args,
    varlen_segments: VarlenSegments | None = None,
    **kwargs,
):
    if varlen_segments is None:
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"varlen segments need one packed row, got a batch of {query.shape[0]}")
    seg = varlen_segments
    key = key.index_select(2, seg.key_index)  # [1, h_kv, K, d]
    value = value.index_select(2, seg.key_index)
    kwargs.pop("position_ids", None)  # the offsets below define the segments, not positions
    if original is _SDPA:
        dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
        return segmented_sdpa(query, key, value, seg, kwargs.get("scaling"), dropout), None
    kwargs.update(
        is_causal=True,
        cu_seq_lens_q=seg.cu_seq_lens_q,
        cu_seq_lens_k=seg.cu_seq_lens_k,
        max_length_q=seg.max_length_q,
        max_length_k=seg.max_length_k,
    )
    # No mask: the segments carry all of it (flash-attn's varlen route takes none).
    return original(module, query, key, value, None, *args, **kwargs)


def segmented_sdpa(
    query: torch.Tensor,  # [1, h, T, d]
    key: torch.Tensor,  # [1, h_kv, K, d], gathered by the segments' key_index
    value: torch.Tensor,
    seg: VarlenSegments,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """[1, T, h, d] varlen attention as one SDPA call per segment (the sdpa backend's packed
    pass). Attention then costs what the varlen kernel's does, sum over segments of
    L_q * L_k, instead of the T x T of one masked call over the whole packed sequence; the
    Python loop adds one small call per prompt and per completion and layer."""
    q, k, v = query[0], key[0], value[0]
    out = []
    for qs, qe, ks, ke in seg.offsets:  # host offsets: no device sync per layer
        lq, lk = qe - qs, ke - ks
        mask = None
        if lq != lk:  # causal aligned to the bottom right: query j sees keys 0..lk-lq+j
            cols = torch.arange(lk, device=q.device)
            mask = cols[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        out.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[None, :, qs:qe],
                k[None, :, ks:ke],
                v[None, :, ks:ke],
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=q.shape[0] != k.shape[0],
            )[0]
        )
    return torch.cat(out, dim=1).transpose(0, 1)[None]  # [h, T, d] -> [1, T, h, d]
