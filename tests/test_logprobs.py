"""Completion log-probs against an unpadded, one-sequence-at-a-time reference forward."""

from __future__ import annotations

import pytest
import torch

from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.models.processor import suppressed_token_ids
from mapo.pipeline.quickrun import model_load_args
from mapo.types import Completions

pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.fixture(scope="module")
def model(tiny_model_dir, sharpen):
    return sharpen(load_policy(tiny_model_dir, **model_load_args()).eval())


@pytest.fixture(scope="module")
def special(tiny_processor, model):
    tok = tiny_processor.tokenizer
    eos = model.generation_config.eos_token_id
    return {
        "suppress": suppressed_token_ids(tok, eos_token_ids=eos, vocab_size=len(tok)),
        "pad": tok.pad_token_id,
        "eos": tok.eos_token_id,
    }


def plain(special) -> dict:
    """Most tests' ``token_logprobs`` settings: the sampler at temperature 1 with the suppressed
    ids, each prompt once, padded rows."""
    return dict(
        temperature=1.0, suppress_ids=special["suppress"], share_prompt=True, padding_free=False
    )


def _completions(special, prompt_index, lengths, seed=0) -> Completions:
    """Random non-special completions; every other one ends with eos."""
    gen = torch.Generator().manual_seed(seed)
    allowed = [i for i in range(special["eos"]) if i not in special["suppress"]]
    token_ids = []
    for row, n in enumerate(lengths):
        ids = [allowed[int(j)] for j in torch.randint(len(allowed), (n,), generator=gen)]
        token_ids.append(ids[:-1] + [special["eos"]] if row % 2 else ids)
    return Completions(
        prompt_index=list(prompt_index),
        token_ids=token_ids,
        text=[""] * len(token_ids),
        truncated=[False] * len(token_ids),
    )


def _reference_logprobs(model, processor, prompt, completion, suppress, *, mm_types=True):
    """One sequence, no padding, the processor's own inputs, the model's full forward."""
    images = list(prompt.images) or None
    enc = processor(text=[prompt.text], images=images, return_tensors="pt")
    comp = torch.tensor([completion])
    ids = torch.cat([enc["input_ids"], comp], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if images:
        kwargs.update(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
    if mm_types:
        kwargs["mm_token_type_ids"] = torch.cat(
            [enc["mm_token_type_ids"], torch.zeros_like(comp)], dim=1
        )
    logits = model(**kwargs).logits[0].float()  # [P+L, V]
    logits[:, suppress] = float("-inf")
    p = enc["input_ids"].shape[1]
    logp = logits[p - 1 : p - 1 + len(completion)].log_softmax(-1)
    return logp.gather(-1, comp[0, :, None]).squeeze(-1)  # [L]


# two rollouts per prompt, unequal lengths; prompt 1 has two images of different shapes
PROMPT_INDEX = [0, 0, 1, 1, 2, 2]
LENGTHS = [5, 11, 3, 8, 1, 7]


@torch.no_grad()
def test_matches_unpadded_per_sequence_forward(model, tiny_processor, tiny_prompts, special):
    comps = _completions(special, PROMPT_INDEX, LENGTHS)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    assert inputs.completion_ids.shape == (6, max(LENGTHS))
    assert inputs.pixel_values.shape[0] == int(inputs.image_grid_thw.prod(-1).sum())
    assert inputs.image_grid_thw.shape[0] == 4  # each distinct image once, not per rollout
    logp = token_logprobs(model, inputs, **plain(special))
    assert logp.dtype == torch.float32 and logp.shape == inputs.completion_mask.shape
    for row, (p, ids) in enumerate(zip(comps.prompt_index, comps.token_ids)):
        ref = _reference_logprobs(model, tiny_processor, tiny_prompts[p], ids, special["suppress"])
        torch.testing.assert_close(logp[row, : len(ids)], ref, atol=1e-5, rtol=0)
        assert torch.all(logp[row, len(ids) :] == 0)


@torch.no_grad()
def test_omitting_mm_token_type_ids_gives_wrong_logprobs(
    model, tiny_processor, tiny_prompts, special
):
    # transformers 5.x falls back to 1-D positions without mm_token_type_ids (docs/facts.md, "CPU machines")
    comp = _completions(special, [1], [8]).token_ids[0]
    good = _reference_logprobs(model, tiny_processor, tiny_prompts[1], comp, special["suppress"])
    bad = _reference_logprobs(
        model, tiny_processor, tiny_prompts[1], comp, special["suppress"], mm_types=False
    )
    assert (good - bad).abs().max() > 0.1


@pytest.mark.parametrize("with_image", [False, True])
@torch.no_grad()
def test_text_only_prompts_match_reference(
    model, tiny_processor, make_tiny_prompt, special, with_image
):
    # text-only prompts alone, and mixed into a batch with an image prompt
    prompts = [make_tiny_prompt("Count to three."), make_tiny_prompt("Which emotion is it?")]
    if with_image:
        prompts.insert(1, make_tiny_prompt("And this one?", [(56, 56)], seed=9))
    comps = _completions(special, [0, 1, 1, len(prompts) - 1], [4, 6, 2, 5], seed=1)
    inputs = build_policy_inputs(tiny_processor, prompts, comps, pad_token_id=special["pad"])
    assert (inputs.pixel_values is None) == (not with_image)
    logp = token_logprobs(model, inputs, **plain(special))
    for row, (p, ids) in enumerate(zip(comps.prompt_index, comps.token_ids)):
        ref = _reference_logprobs(model, tiny_processor, prompts[p], ids, special["suppress"])
        torch.testing.assert_close(logp[row, : len(ids)], ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_micro_batches_and_shuffled_selection_match_full_batch(
    model, tiny_processor, tiny_prompts, special
):
    comps = _completions(special, PROMPT_INDEX, LENGTHS, seed=2)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    full = token_logprobs(model, inputs, **plain(special))
    parts = [token_logprobs(model, mb, **plain(special)) for mb in inputs.micro_batches(4)]
    torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=0)
    order = [5, 2, 0, 3]
    sub = inputs.select(order)
    # only the images of the selected rows' prompts are kept, in the right order
    rows = [tiny_prompts[PROMPT_INDEX[i]] for i in order]
    enc = tiny_processor(
        text=[r.text for r in rows],
        images=[im for r in rows for im in r.images],
        padding=True,
        return_tensors="pt",
    )
    assert torch.equal(sub.row_pixel_values(), enc["pixel_values"])
    assert sub.image_grid_thw.shape[0] == 4 and sub.images_per_prompt.tolist() == [1, 2, 1]
    alone = inputs.select([4])
    assert alone.image_grid_thw.shape[0] == 1
    torch.testing.assert_close(
        token_logprobs(model, sub, **plain(special)),
        full[order],
        atol=1e-5,
        rtol=0,
    )


def test_row_pixels_equal_the_processor_run_per_row(tiny_processor, tiny_prompts, special):
    comps = _completions(special, [2, 1, 1, 0], [3, 3, 3, 3])
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    rows = [tiny_prompts[p] for p in comps.prompt_index]
    enc = tiny_processor(
        text=[p.text for p in rows],
        images=[im for p in rows for im in p.images],
        padding=True,
        return_tensors="pt",
    )
    assert torch.equal(inputs.row_pixel_values(), enc["pixel_values"])
    assert torch.equal(inputs.row_image_grid_thw(), enc["image_grid_thw"])


@torch.no_grad()
def test_shared_vision_encoding_equals_per_row_pixels(model, tiny_processor, tiny_prompts, special):
    comps = _completions(special, PROMPT_INDEX, LENGTHS, seed=3)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    shared = token_logprobs(model, inputs, **plain(special))
    per_row = token_logprobs(
        model,
        inputs,
        temperature=1.0,
        suppress_ids=special["suppress"],
        share_vision=False,
        share_prompt=True,
        padding_free=False,
    )
    torch.testing.assert_close(shared, per_row, atol=1e-6, rtol=0)


def test_gradients_reach_vision_and_text(tiny_model_dir, tiny_processor, tiny_prompts, special):
    model = load_policy(tiny_model_dir, **model_load_args())
    comps = _completions(special, PROMPT_INDEX, LENGTHS, seed=4)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    token_logprobs(model, inputs, **plain(special)).sum().backward()
    for name in ("visual.patch_embed", "visual.merger", "language_model.layers.0", "lm_head"):
        grads = [p.grad for n, p in model.named_parameters() if name in n]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_suppressed_pad_token_gives_no_nan(tiny_model_dir, tiny_processor, tiny_prompts, special):
    model = load_policy(tiny_model_dir, **model_load_args())
    # pad the completions with a suppressed id: the padded slots must not produce -inf/NaN
    pad = tiny_processor.tokenizer.convert_tokens_to_ids("<|vision_pad|>")
    assert pad in special["suppress"]
    comps = _completions(special, PROMPT_INDEX, LENGTHS, seed=5)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=pad)
    logp, ent = token_logprobs(
        model,
        inputs,
        temperature=1.0,
        suppress_ids=special["suppress"],
        return_entropy=True,
        share_prompt=True,
        padding_free=False,
    )
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert torch.all(logp[~inputs.completion_mask] == 0)
    ratio = torch.exp(logp - logp.detach())  # the PPO ratio: NaN if any slot were -inf
    (ratio * inputs.completion_mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@torch.no_grad()
def test_entropy_and_temperature(model, tiny_processor, tiny_prompts, special):
    comps = _completions(special, [0, 1], [4, 6], seed=6)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    logp, ent = token_logprobs(
        model,
        inputs,
        temperature=0.7,
        suppress_ids=special["suppress"],
        return_entropy=True,
        share_prompt=True,
        padding_free=False,
    )
    # direct computation from the full forward's logits at the completion positions
    out = model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        mm_token_type_ids=inputs.mm_token_type_ids,
        pixel_values=inputs.row_pixel_values(),
        image_grid_thw=inputs.row_image_grid_thw(),
    )
    p = inputs.prompt_len
    logits = out.logits[:, p - 1 : p - 1 + inputs.completion_len].float() / 0.7
    logits[..., special["suppress"]] = float("-inf")
    full = logits.log_softmax(-1)
    probs = full.exp()
    want_ent = -(probs * full.nan_to_num(neginf=0.0)).sum(-1) * inputs.completion_mask
    want = full.gather(-1, inputs.completion_ids[..., None]).squeeze(-1) * inputs.completion_mask
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=0)
    assert (ent[inputs.completion_mask] > 0).all()


def test_completion_with_image_placeholder_is_rejected(tiny_processor, tiny_prompts, special):
    comps = _completions(special, [0], [3])
    comps.token_ids[0][1] = tiny_processor.image_token_id
    with pytest.raises(ValueError, match="Suppress special tokens"):
        build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])


# -- the shared prompt pass (one backbone pass per distinct prompt, cache gathered to rows) --

# three prompts, uneven groups (3, 1, 4 rollouts), rows interleaved, lengths 1..12
SHARED_INDEX = [2, 0, 2, 1, 0, 2, 0, 2]
SHARED_LENGTHS = [12, 1, 6, 9, 4, 1, 12, 3]


def _rows_seen_by_backbone(model, fn):
    """Run ``fn`` and return the batch size of every backbone (model.model) call."""
    sizes = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        out = fn()
    finally:
        hook.remove()
    return out, sizes


@torch.no_grad()
def test_shared_prompt_pass_equals_full_pass(model, tiny_processor, tiny_prompts, special):
    comps = _completions(special, SHARED_INDEX, SHARED_LENGTHS, seed=7)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    kw = dict(
        temperature=1.0, suppress_ids=special["suppress"], return_entropy=True, padding_free=False
    )
    (lp_s, ent_s), sizes_s = _rows_seen_by_backbone(
        model, lambda: token_logprobs(model, inputs, share_prompt=True, **kw)
    )
    (lp_f, ent_f), sizes_f = _rows_seen_by_backbone(
        model, lambda: token_logprobs(model, inputs, share_prompt=False, **kw)
    )
    assert sizes_s == [3] and sizes_f == [8]  # the prompts ran once each, not once per row
    torch.testing.assert_close(lp_s, lp_f, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_s, ent_f, atol=1e-5, rtol=0)
    # and both against the independent unpadded per-sequence forward
    for row, (p, ids) in enumerate(zip(comps.prompt_index, comps.token_ids)):
        ref = _reference_logprobs(model, tiny_processor, tiny_prompts[p], ids, special["suppress"])
        torch.testing.assert_close(lp_s[row, : len(ids)], ref, atol=1e-5, rtol=0)


def test_shared_prompt_pass_gives_the_same_gradients(
    tiny_model_dir, tiny_processor, tiny_prompts, special
):
    comps = _completions(special, SHARED_INDEX, SHARED_LENGTHS, seed=8)
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=special["pad"])
    weights = torch.randn(inputs.completion_mask.shape, generator=torch.Generator().manual_seed(0))
    grads = {}
    for share in (True, False):
        model = load_policy(tiny_model_dir, **model_load_args())
        logp, ent = token_logprobs(
            model,
            inputs,
            temperature=1.0,
            suppress_ids=special["suppress"],
            return_entropy=True,
            share_prompt=share,
            padding_free=False,
        )
        ((logp * weights).sum() + 0.1 * ent.sum()).backward()
        grads[share] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    assert any("visual" in n for n in grads[True])  # the prompt pass carries the vision tower
    for name, g in grads[False].items():
        scale = g.abs().max().clamp_min(1e-8)
        assert float((grads[True][name] - g).abs().max() / scale) < 1e-4, name


@torch.no_grad()
def test_shared_prompt_pass_falls_back_where_it_cannot_apply(
    model, tiny_processor, tiny_prompts, make_tiny_prompt, special
):
    from mapo.models.logprobs import can_share_prompt

    repeated = build_policy_inputs(
        tiny_processor,
        tiny_prompts,
        _completions(special, [0, 0, 1], [4, 2, 3]),
        pad_token_id=special["pad"],
    )
    distinct = build_policy_inputs(
        tiny_processor,
        tiny_prompts,
        _completions(special, [0, 1, 2], [4, 2, 3]),
        pad_token_id=special["pad"],
    )
    assert can_share_prompt(model, repeated) and not can_share_prompt(model, distinct)
    text_only = [make_tiny_prompt("Count to three."), make_tiny_prompt("Which emotion is it?")]
    text = build_policy_inputs(
        tiny_processor,
        text_only,
        _completions(special, [0, 0, 1], [4, 2, 3]),
        pad_token_id=special["pad"],
    )
    assert not can_share_prompt(model, text)
    _, sizes = _rows_seen_by_backbone(
        model,
        lambda: token_logprobs(model, text, **plain(special)),
    )
    assert sizes == [3]  # the full pass
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.train()
        assert not can_share_prompt(model, repeated)  # checkpointing drops the cache
        model.eval()
        assert can_share_prompt(model, repeated)
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
