"""Per-token log-probabilities of completions under a model, for the policy-gradient loss.

Only the L completion positions go through the LM head: the backbone's hidden states are
sliced to [N, L, H] first, and the head runs over row chunks in fp32, so no [N, P+L, V]
tensor (and, without autograd, no [N, L, V] one beyond a chunk) is ever materialised.

Positions: the Qwen-VL families (``mapo.models.families``) need 3-D rope positions built from ``mm_token_type_ids`` and the image
grids on the unpadded tokens. We build them with the model's own ``get_rope_index`` once per
distinct prompt and pass ``position_ids``; given neither, transformers 5.x silently falls back
to plain 1-D positions and the log-probs are wrong (docs/facts.md, "CPU machines").

Shared prompt pass (``share_prompt``, on by default): the G rollouts of a group share their
prompt, so the backbone runs each distinct prompt once with ``use_cache=True``, the key/value
cache is gathered to the N rows (a differentiable index_select, so gradients flow back into
the one prompt pass), and only the completion tokens run on top of it. A group then costs
P + G*L token positions instead of G*(P+L) in the reference, old-policy and policy forwards
and in the backward (180 instead of 544 for SynthEmo's P=52, L=16, G=8; docs/benchmarks.md).
Same numbers as the full pass up to float rounding (tests/test_logprobs.py). It needs a
Qwen-VL-style backbone (``get_rope_index`` + ``language_model``) and images; text-only
batches, other architectures and batches without repeated prompts take the full pass. Under
gradient checkpointing in training (which disables the cache) the shared pass runs instead as
one packed sequence without a cache (``mapo.models.packing``): by varlen key segments on
flash_attention_2 / 3 and sdpa (``mapo.models.varlen_attention``), by a 4-D mask on eager.

Families: a route that is not exact for the model's family (its ``mapo.models.families``
entry; e.g. packing through Qwen3.5's linear-attention layers) logs once, is counted
(``route_fallbacks``) and takes the plain padded route. The shared-vision and packed routes
hand the forward every per-image output of the vision tower (``image_features``), Qwen3-VL's
DeepStack features included; docs/models.md has the table of what is exact per family.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter

import torch

from mapo.models.batching import PolicyInputs
from mapo.models.families import family_of_model
from mapo.models.packing import (
    MASK_BACKENDS,
    VARLEN_BACKENDS,
    pack_layout,
    packed_image_order,
    unpack_rows,
)
from mapo.models.varlen_attention import install as install_varlen

log = logging.getLogger(__name__)
_CHUNK_ELEMENTS = 1 << 26  # logits per head chunk: 64 M fp32 = 256 MiB


def _backbone_kwargs(model: torch.nn.Module, inputs: PolicyInputs, share_vision: bool) -> dict:
    base = model.model
    kwargs = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False)
    if inputs.pixel_values is None:
        # Text only: positions that skip the left padding, as generate() uses.
        positions = inputs.attention_mask.long().cumsum(-1) - 1  # [N, P+L]
        kwargs["position_ids"] = positions.masked_fill(inputs.attention_mask == 0, 1)
        return kwargs
    if hasattr(base, "get_rope_index"):
        kwargs["position_ids"] = _rope_positions(base, inputs)  # [3, N, P+L]
    else:  # let the model build the positions from the token types and the row grids
        kwargs["mm_token_type_ids"] = inputs.mm_token_type_ids
        kwargs["image_grid_thw"] = inputs.row_image_grid_thw()
    accepts_features = "mm_encoder_outputs" in inspect.signature(base.forward).parameters
    if share_vision and accepts_features and hasattr(base, "get_image_features"):
        # Encode each distinct image once; the G rows of a group reuse its features.
        kwargs["mm_encoder_outputs"] = {
            "image": image_features(base, inputs, inputs.row_images().tolist())
        }
    else:
        kwargs["pixel_values"] = inputs.row_pixel_values()  # [row patches, D]
        kwargs["image_grid_thw"] = inputs.row_image_grid_thw()  # [row images, 3], row order
    return kwargs


def image_features(base: torch.nn.Module, inputs: PolicyInputs, order: list[int]):
    """The vision tower's outputs for the distinct images, each once, re-ordered (and repeated)
    to ``order``: one distinct-image index per image placeholder run of the forward.

    Every per-image field is kept: ``pooler_output`` (the merged features the placeholders
    take) and, on Qwen3-VL, ``deepstack_features`` (one tuple per DeepStack level, added to the
    first decoder layers' hidden states at the image positions), so the forward gets exactly
    what it computes itself from ``pixel_values``."""
    out = base.get_image_features(inputs.pixel_values, inputs.image_grid_thw, return_dict=True)
    count = len(out.pooler_output)  # distinct images

    def select(value):
        if isinstance(value, tuple) and len(value) == count:  # one tensor per image
            return tuple(value[i] for i in order)
        if isinstance(value, list) and all(isinstance(v, tuple) for v in value):
            return [select(v) for v in value]  # one tuple per level
        return None  # whole-batch fields (last_hidden_state, ...): the forward reads none

    fields = {k: select(v) for k, v in out.items()}
    return type(out)(**{k: v for k, v in fields.items() if v is not None})


def _one_row_per_prompt(inputs: PolicyInputs) -> torch.Tensor:
    """[B] long: a row index for each distinct prompt (all rows of a prompt share its P columns)."""
    index = inputs.prompt_index
    rep = torch.zeros(int(index.max()) + 1, dtype=torch.long, device=index.device)
    rep[index] = torch.arange(inputs.num_rows, device=index.device)
    return rep


def _rope_positions(base: torch.nn.Module, inputs: PolicyInputs) -> torch.Tensor:
    """[3, N, P+L] 3-D rope positions (Qwen2/2.5/3-VL, Qwen3.5), from the model's own ``get_rope_index`` run
    once per distinct prompt (not per rollout). The completion continues the prompt's last
    text segment, so its positions are the prompt's last position + 1, 2, ..."""
    p, length = inputs.prompt_len, inputs.completion_len
    # one representative row per distinct prompt (all rows of a prompt share its P columns)
    rep = _one_row_per_prompt(inputs)
    prompt_pos, _ = base.get_rope_index(
        inputs.input_ids[rep, :p],
        mm_token_type_ids=inputs.mm_token_type_ids[rep, :p],
        image_grid_thw=inputs.image_grid_thw,  # distinct images, in distinct-prompt order
        attention_mask=inputs.attention_mask[rep, :p],
    )  # [3, B, P]; prompts are left-padded, so column P-1 is each prompt's last token
    prompt_pos = prompt_pos[:, inputs.prompt_index]  # [3, N, P]
    steps = torch.arange(1, length + 1, device=prompt_pos.device)
    completion_pos = prompt_pos[:, :, -1:] + steps  # [3, N, L]
    return torch.cat([prompt_pos, completion_pos], dim=-1)


def completion_hidden_states(
    model: torch.nn.Module,
    inputs: PolicyInputs,
    *,
    share_vision: bool = True,
    share_prompt: bool,  # model.share_prompt
    padding_free: bool,  # model.padding_free
) -> torch.Tensor:
    """[N, L, H] final hidden states at the positions that predict the completion tokens.

    ``model`` is a transformers causal LM with the usual ``model.model`` backbone and
    ``get_output_embeddings()`` head (Qwen2/2.5-VL, Qwen2, Llama, ...). ``padding_free`` runs the rows
    padding-free as one sequence (``mapo.models.packing``); under gradient checkpointing the
    shared prompt pass takes that route too, since checkpointing disables the cache."""
    packed = padding_free or (share_prompt and _checkpointing(model) and packs_shared_prompt(model))
    if packed and route_allowed(model, "packed"):
        return packed_hidden_states(model, inputs, share_prompt=share_prompt)
    if share_prompt and can_share_prompt(model, inputs) and route_allowed(model, "shared_prompt"):
        return _shared_prompt_hidden_states(model, inputs)
    if share_vision and inputs.pixel_values is not None:
        share_vision = route_allowed(model, "shared_vision")
    hidden = model.model(**_backbone_kwargs(model, inputs, share_vision)).last_hidden_state
    p, length = inputs.prompt_len, inputs.completion_len
    return hidden[:, p - 1 : p - 1 + length]  # [N, L, H]: column P-1+j predicts token j


_FALLBACKS: Counter = Counter()  # route -> forwards that took the plain route instead


def route_allowed(model: torch.nn.Module, route: str) -> bool:
    """Whether ``route`` is exact for the model's family (``mapo.models.families``; other
    models take every route). A route that is not says so once, is counted (``fallbacks``)
    and the caller takes the plain route."""
    family = family_of_model(model)
    if family is None or route in family.routes:
        return True
    if not _FALLBACKS[route]:
        log.warning(
            "the %s route is not exact for model family %s (exact: %s); it takes the plain "
            "padded route (counted in perf/route_fallbacks/%s)",
            route,
            family.model_type,
            ", ".join(family.routes),
            route,
        )
    _FALLBACKS[route] += 1
    return False


def route_fallbacks() -> dict[str, float]:
    """perf/route_fallbacks/<route>: forwards so far that took the plain route instead (only
    the routes that did, so a run without any logs no such metric)."""
    return {f"perf/route_fallbacks/{k}": float(v) for k, v in sorted(_FALLBACKS.items())}


def _checkpointing(model: torch.nn.Module) -> bool:
    return getattr(model, "is_gradient_checkpointing", False) and model.training


def attention_backend(model: torch.nn.Module) -> str:
    """The text decoder's attention backend (its config's, which its attention layers read)."""
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "_attn_implementation", None) or "sdpa"


def packs_shared_prompt(model: torch.nn.Module) -> bool:
    """Whether the text backend can run a packed shared prompt: by varlen key segments
    (flash-attn, sdpa) or a 4-D mask (eager)."""
    backend = attention_backend(model)
    return backend in MASK_BACKENDS or backend in VARLEN_BACKENDS


def packed_hidden_states(
    model: torch.nn.Module, inputs: PolicyInputs, *, share_prompt: bool
) -> torch.Tensor:
    """[N, L, H] as ``completion_hidden_states``, from one padding-free packed sequence."""
    base = model.model
    backend = attention_backend(model)
    varlen = backend in VARLEN_BACKENDS
    layout = pack_layout(inputs, share_prompt=share_prompt)
    rows, cols = layout.source_row, layout.source_col
    kwargs: dict = dict(input_ids=inputs.input_ids[rows, cols][None], use_cache=False)
    if inputs.pixel_values is not None and hasattr(base, "get_rope_index"):
        positions = _rope_positions(base, inputs)[:, rows, cols][:, None]  # [3, 1, T]
    else:
        flat = inputs.attention_mask.long().cumsum(-1) - 1  # [N, P+L], skips left padding
        positions = flat[rows, cols][None]  # [1, T]
    if varlen:  # no mask: explicit query / key segments for the varlen kernel
        install_varlen(backend)
        text = layout.text_positions()[None, None]
        positions = positions if positions.ndim == 3 else positions[None].expand(3, -1, -1)
        kwargs["position_ids"] = torch.cat([text.to(positions), positions])  # [4, 1, T]
        kwargs["varlen_segments"] = layout.varlen_segments()
    else:
        kwargs["position_ids"] = positions
        kwargs["attention_mask"] = layout.attention_mask(model.dtype, backend).to(
            inputs.input_ids.device
        )
    if inputs.pixel_values is not None:
        order = packed_image_order(inputs, layout).tolist()
        kwargs["mm_encoder_outputs"] = {"image": image_features(base, inputs, order)}
    hidden = base(**kwargs).last_hidden_state[0]  # [T, H]
    return unpack_rows(hidden, layout)  # [N, L, H]


def can_share_prompt(model: torch.nn.Module, inputs: PolicyInputs) -> bool:
    """Whether the cache-based shared prompt pass applies (see the module docstring)."""
    base = getattr(model, "model", None)
    checkpointing = _checkpointing(model)
    return (
        inputs.pixel_values is not None
        and hasattr(base, "get_rope_index")
        and hasattr(base, "language_model")
        and not checkpointing
        and int(inputs.prompt_index.max()) + 1 < inputs.num_rows  # some prompt repeats
    )


def _shared_prompt_hidden_states(model: torch.nn.Module, inputs: PolicyInputs) -> torch.Tensor:
    base = model.model
    p, length = inputs.prompt_len, inputs.completion_len
    index = inputs.prompt_index  # [N]: distinct prompt of each row (0..B-1, all present)
    rep = _one_row_per_prompt(inputs)  # [B]
    positions = _rope_positions(base, inputs)  # [3, N, P+L]
    prompt = base(
        input_ids=inputs.input_ids[rep, :p],  # [B, P]
        attention_mask=inputs.attention_mask[rep, :p],
        position_ids=positions[:, rep, :p],  # [3, B, P]
        pixel_values=inputs.pixel_values,  # distinct images in distinct-prompt order
        image_grid_thw=inputs.image_grid_thw,
        use_cache=True,
    )
    first = prompt.last_hidden_state[index, -1:]  # [N, 1, H]: the prompt's last column
    if length == 1:
        return first
    cache = prompt.past_key_values
    cache.batch_select_indices(index)  # [B, h, P, d] -> [N, h, P, d], differentiable
    rest = base.language_model(
        input_ids=inputs.input_ids[:, p : p + length - 1],  # the last token predicts nothing
        attention_mask=inputs.attention_mask[:, : p + length - 1],
        position_ids=positions[:, :, p : p + length - 1],  # [3, N, L-1]
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # [N, L-1, H]
    return torch.cat([first, rest], dim=1)  # [N, L, H]


def _safe_token(num_tokens: int, suppress: torch.Tensor | None) -> int:
    """A token id that is not suppressed, gathered at padded slots so no -inf appears."""
    banned = set() if suppress is None else set(suppress.tolist())
    return next(i for i in range(num_tokens) if i not in banned)


def token_logprobs(
    model: torch.nn.Module,
    inputs: PolicyInputs,
    *,
    temperature: float,  # rollout.temperature: the sampler's
    suppress_ids: torch.Tensor | list[int] | None = None,
    return_entropy: bool = False,
    share_vision: bool = True,
    share_prompt: bool,  # model.share_prompt
    padding_free: bool,  # model.padding_free
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(completion token) [N, L] in fp32, 0 where ``completion_mask`` is False.

    ``temperature`` divides the logits (as the sampler does); ``suppress_ids`` are set to -inf
    before the softmax, matching generation with those ids suppressed. With
    ``return_entropy`` also returns the entropy of each position's distribution [N, L]
    (0 where masked). ``share_prompt`` runs each distinct prompt once (module docstring)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    hidden = completion_hidden_states(
        model,
        inputs,
        share_vision=share_vision,
        share_prompt=share_prompt,
        padding_free=padding_free,
    )  # [N, L, H]
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    suppress = None
    if suppress_ids is not None and len(suppress_ids) > 0:
        suppress = torch.as_tensor(suppress_ids, dtype=torch.long, device=hidden.device)
    mask = inputs.completion_mask
    ids = inputs.completion_ids.masked_fill(~mask, _safe_token(vocab, suppress))  # [N, L]

    n, length = ids.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(1, length * vocab))
    logps, entropies = [], []
    for s in range(0, n, chunk):
        logits = head(hidden[s : s + chunk]).float() / temperature  # [n, L, V] fp32
        if suppress is not None:
            logits = logits.index_fill(-1, suppress, float("-inf"))
        log_z = logits.logsumexp(-1)  # [n, L]
        logps.append(logits.gather(-1, ids[s : s + chunk, :, None]).squeeze(-1) - log_z)
        if return_entropy:
            # H = log Z - E_p[logit]; suppressed entries have p = 0 and must not add -inf * 0.
            probs = (logits - log_z[..., None]).exp()
            finite = logits.masked_fill(~torch.isfinite(logits), 0.0)
            entropies.append(log_z - (probs * finite).sum(-1))
    logp = torch.cat(logps).masked_fill(~mask, 0.0)  # [N, L]
    if not return_entropy:
        return logp
    return logp, torch.cat(entropies).masked_fill(~mask, 0.0)
