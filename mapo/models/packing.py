"""Padding-free packing: the rows of a padded ``PolicyInputs`` laid end to end in ONE sequence.

A micro-batch of N rows (prompt left-padded to P, completion right-padded to L) costs
N * (P + L) token positions in the projections and MLP; packed, it costs only the real tokens.
With ``share_prompt`` each distinct prompt appears once and its G completions follow it, each
attending to the prompt and to itself only, so a group costs P_b + sum_i L_i positions: the
shared prompt pass as one ordinary forward (no key/value cache), which is why it also works
under gradient checkpointing (the cache-based pass in ``mapo.models.logprobs`` does not).

Layout of the packed sequence (T tokens), in row order:
    shared:   [prompt 0][completion rows of prompt 0 ...][prompt 1][completions of 1 ...] ...
    unshared: [prompt of row 0][completion 0][prompt of row 1][completion 1] ...
Each completion contributes L_i - 1 tokens (its last token predicts nothing). The hidden state
predicting completion token j of row i sits at ``gather[i, j]``: the prompt's last token for
j = 0, the row's completion token j - 1 otherwise.

Attention backends (docs/benchmarks.md, "Realistic shapes"):
  * flash_attention_2 / 3 (GPU) and sdpa (CPU and GPU): no mask. ``varlen_segments`` cuts the
    packed sequence into query segments (each prompt, each completion) with their key segments
    (a completion's keys are its prompt's tokens, then its own); ``mapo.models.varlen_attention``
    gathers the keys and values and runs the flash-attn varlen kernel with separate query / key
    offsets and bottom-right causal alignment, or for sdpa one SDPA call per segment. Shared
    and unshared layouts both take it; attention costs sum P_b^2 + sum L_i (P_b + L_i), as in
    the cache-based pass, not T^2.
  * eager: a 4-D mask (token q sees token k iff k <= q, same segment, and k is either the
    segment's shared prompt or q's own row). Padding leaves the projections and the MLP, not
    the attention product, which stays T x T (masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mapo.models.batching import PolicyInputs

# How each attention backend runs a packed sequence (module docstring):
VARLEN_BACKENDS = ("flash_attention_2", "flash_attention_3", "sdpa")  # by varlen segments
MASK_BACKENDS = ("eager",)  # by one 4-D mask over the whole sequence


@dataclass(frozen=True)
class VarlenSegments:
    """Query / key segments of a packed sequence for a varlen attention kernel (S segments)."""

    key_index: Tensor  # [K] long: packed position of each key/value, segment after segment
    cu_seq_lens_q: Tensor  # [S+1] int32 query offsets into the packed sequence
    cu_seq_lens_k: Tensor  # [S+1] int32 key offsets into key_index
    max_length_q: int
    max_length_k: int
    offsets: tuple[tuple[int, int, int, int], ...]  # host copy: (q start, q end, k start, k end)


@dataclass(frozen=True)
class PackedLayout:
    source_row: Tensor  # [T] long: padded row each packed token comes from
    source_col: Tensor  # [T] long: padded column each packed token comes from
    owner: Tensor  # [T] long: segment (distinct prompt if shared, else row) of each token
    row: Tensor  # [T] long: row of each completion token, -1 on (shared) prompt tokens
    gather: Tensor  # [N, L] long: packed position predicting completion token j of row i
    shared: bool

    @property
    def num_tokens(self) -> int:  # T
        return int(self.source_row.numel())

    def attention_mask(self, dtype: torch.dtype, backend: str) -> Tensor:
        """[1, 1, T, T] mask for ``backend``: bool (True = attend) for sdpa, additive for eager."""
        pos = torch.arange(self.num_tokens, device=self.owner.device)
        causal = pos[None, :] <= pos[:, None]  # [q, k]
        same = self.owner[None, :] == self.owner[:, None]
        visible = (self.row[None, :] == -1) | (self.row[None, :] == self.row[:, None])
        allowed = (causal & same & visible)[None, None]
        if backend == "sdpa":
            return allowed
        if backend == "eager":
            return torch.zeros(allowed.shape, dtype=dtype).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        raise ValueError(f"no 4-D mask for attention backend {backend!r}; use {MASK_BACKENDS}")

    def varlen_segments(self) -> VarlenSegments:
        """Query and key segments for a varlen kernel (module docstring). Query segments are
        the maximal runs of one (segment, row) in packed order: a prompt's tokens, or one
        completion's. A prompt's keys are its own tokens; a completion's keys are its prompt's
        tokens (the shared run of its segment, or its own row's prompt unshared) followed by
        its own tokens, so causal alignment at the bottom right gives token j of the
        completion the whole prompt and completion tokens 0..j."""
        run = self.owner * (int(self.row.max()) + 2) + (self.row + 1)  # [T] one id per run
        change = torch.ones_like(run, dtype=torch.bool)
        change[1:] = run[1:] != run[:-1]
        starts = torch.nonzero(change).flatten().tolist()
        ends = starts[1:] + [self.num_tokens]
        owner = self.owner.tolist()  # one device sync, not one per run
        prompt_of: dict[int, tuple[int, int]] = {}  # segment -> its prompt run
        keys, cu_q, cu_k = [], [0], [0]
        for s, e in zip(starts, ends):
            seg = owner[s]
            own = torch.arange(s, e)
            if seg not in prompt_of:  # a segment's first run is its prompt
                prompt_of[seg] = (s, e)
                keys.append(own)
            else:
                ps, pe = prompt_of[seg]
                keys.append(torch.cat([torch.arange(ps, pe), own]))
            cu_q.append(cu_q[-1] + e - s)
            cu_k.append(cu_k[-1] + int(keys[-1].numel()))
        offsets = tuple(zip(cu_q, cu_q[1:], cu_k, cu_k[1:]))
        device = self.owner.device
        return VarlenSegments(
            key_index=torch.cat(keys).to(device),
            cu_seq_lens_q=torch.tensor(cu_q, dtype=torch.int32, device=device),
            cu_seq_lens_k=torch.tensor(cu_k, dtype=torch.int32, device=device),
            max_length_q=max(qe - qs for qs, qe, _, _ in offsets),
            max_length_k=max(ke - ks for _, _, ks, ke in offsets),
            offsets=offsets,
        )

    def text_positions(self) -> Tensor:
        """[T] position of each token inside its segment (0 at each segment start): the text
        row of the [4, 1, T] positions of the varlen route (the Qwen-VL text decoders read row 0
        as text positions; the segments themselves come from ``varlen_segments``)."""
        starts = torch.ones_like(self.owner, dtype=torch.bool)
        starts[1:] = self.owner[1:] != self.owner[:-1]
        index = torch.arange(self.num_tokens, device=self.owner.device)
        first = torch.cummax(torch.where(starts, index, 0), dim=0).values
        return index - first


def pack_layout(inputs: PolicyInputs, *, share_prompt: bool) -> PackedLayout:
    """The packed layout of ``inputs`` (see the module docstring)."""
    p = inputs.prompt_len
    lengths = inputs.completion_mask.sum(-1).tolist()  # [N] L_i
    prompt_cols = [
        torch.nonzero(inputs.attention_mask[i, :p]).flatten() for i in range(inputs.num_rows)
    ]
    rows_of = _rows_by_prompt(inputs) if share_prompt else [[i] for i in range(inputs.num_rows)]
    src_row, src_col, owner, row_ids = [], [], [], []
    gather = torch.zeros(inputs.completion_mask.shape, dtype=torch.long)
    cursor = 0

    def emit(row: int, cols: Tensor, seg: int, as_row: int) -> None:
        nonlocal cursor
        src_row.append(torch.full_like(cols, row))
        src_col.append(cols)
        owner.append(torch.full_like(cols, seg))
        row_ids.append(torch.full_like(cols, as_row))
        cursor += int(cols.numel())

    for seg, rows in enumerate(rows_of):
        rep = rows[0]
        emit(rep, prompt_cols[rep], seg, -1 if share_prompt else rep)
        last_prompt = cursor - 1
        for i in rows:
            if not share_prompt and i != rep:
                raise AssertionError("unshared segments hold one row")
            gather[i, 0] = last_prompt
            n = max(lengths[i] - 1, 0)
            gather[i, 1 : n + 1] = torch.arange(cursor, cursor + n)
            emit(i, torch.arange(p, p + n), seg, i)
    cat = torch.cat
    return PackedLayout(
        source_row=cat(src_row),
        source_col=cat(src_col),
        owner=cat(owner),
        row=cat(row_ids),
        gather=gather,
        shared=share_prompt,
    )


def _rows_by_prompt(inputs: PolicyInputs) -> list[list[int]]:
    """Row indices of each distinct prompt, prompts in index order (0..B-1): the order of the
    distinct images in ``pixel_values``."""
    groups: list[list[int]] = [[] for _ in range(int(inputs.prompt_index.max()) + 1)]
    for i, b in enumerate(inputs.prompt_index.tolist()):
        groups[b].append(i)
    return [g for g in groups if g]


def packed_image_order(inputs: PolicyInputs, layout: PackedLayout) -> Tensor:
    """Distinct-image index of every image placeholder run in the packed sequence, in order."""
    if layout.shared:
        return torch.arange(int(inputs.image_grid_thw.shape[0]))
    return inputs.row_images()


def unpack_rows(packed: Tensor, layout: PackedLayout) -> Tensor:
    """[T, ...] per-token values -> [N, L, ...] at the positions predicting each completion
    token (padding slots gather position 0 and must be masked by the caller)."""
    return packed[layout.gather.to(packed.device)]
