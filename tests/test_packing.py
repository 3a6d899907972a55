"""Padding-free packing (mapo/models/packing.py) against the padded forward: log-probs,
entropies and gradients, shared and unshared, with and without gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from packing_inputs import INDEX, LENGTHS, _grads, _inputs

from mapo.models import varlen_attention
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.models.packing import pack_layout
from mapo.pipeline.quickrun import model_load_args

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_layout_counts_real_tokens_and_resets_positions(tiny_processor, tiny_prompts, special):
    inputs = _inputs(tiny_processor, tiny_prompts, special)
    prompt_lens = inputs.attention_mask[:, : inputs.prompt_len].sum(-1)  # [N]
    comp = torch.tensor(LENGTHS) - 1
    unshared = pack_layout(inputs, share_prompt=False)
    assert unshared.num_tokens == int((prompt_lens + comp).sum())
    shared = pack_layout(inputs, share_prompt=True)
    distinct = {b: int(prompt_lens[i]) for i, b in enumerate(INDEX)}
    assert shared.num_tokens == sum(distinct.values()) + int(comp.sum())
    # one segment per row: text positions restart at 0 at each row's first token
    text = unshared.text_positions()
    starts = torch.nonzero(text == 0).flatten().tolist()
    assert len(starts) == len(INDEX)
    assert text.max() == int((prompt_lens + comp).max()) - 1
    # every packed token is a real (unpadded) token of its source row
    assert bool(inputs.attention_mask[shared.source_row, shared.source_col].all())


def test_shared_mask_lets_each_completion_see_its_prompt_and_itself(
    tiny_processor, tiny_prompts, special
):
    inputs = _inputs(tiny_processor, tiny_prompts, special, index=[0, 0], lengths=[3, 4])
    layout = pack_layout(inputs, share_prompt=True)
    mask = layout.attention_mask(torch.float32, "sdpa")[0, 0]
    p = int(inputs.attention_mask[0, : inputs.prompt_len].sum())
    # tokens: prompt (p), row 0 (2 tokens), row 1 (3 tokens)
    assert mask.shape == (p + 5, p + 5)
    assert bool(mask[:p, :p].tril().eq(torch.ones(p, p).tril().bool()).all())
    assert not bool(mask[: p - 1, p - 1 + 1 :].any())  # the prompt does not see completions
    row1 = slice(p + 2, p + 5)
    assert bool(mask[row1, :p].all())  # row 1 sees the whole prompt
    assert not bool(mask[row1, p : p + 2].any())  # and not row 0
    eager = layout.attention_mask(torch.float32, "eager")[0, 0]
    assert bool(((eager == 0) == mask).all())


@torch.no_grad()
@pytest.mark.parametrize("backend", ["sdpa", "eager"])  # per-segment SDPA calls / one 4-D mask
@pytest.mark.parametrize("share", [False, True])
def test_packed_logprobs_equal_the_padded_forward(
    tiny_model_dir, tiny_processor, tiny_prompts, special, sharpen, share, backend, monkeypatch
):
    model = sharpen(
        load_policy(tiny_model_dir, **model_load_args(attn_implementation=backend)).eval()
    )
    inputs = _inputs(tiny_processor, tiny_prompts, special, seed=3)
    kw = dict(
        temperature=1.0, suppress_ids=special["suppress"], return_entropy=True, share_prompt=False
    )
    lp_ref, ent_ref = token_logprobs(model, inputs, padding_free=False, **kw)
    kw["share_prompt"] = share
    segmented = []
    kernel = varlen_attention.segmented_sdpa
    monkeypatch.setattr(
        varlen_attention, "segmented_sdpa", lambda *a: segmented.append(1) or kernel(*a)
    )
    lp, ent = token_logprobs(model, inputs, padding_free=True, **kw)
    layers = model.config.text_config.num_hidden_layers
    assert len(segmented) == (layers if backend == "sdpa" else 0)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    assert float(lp_ref.abs().max()) > 1.0  # sharpened: a wrong position would cost nats


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("share", [False, True])
def test_packed_gradients_equal_the_padded_forward(
    tiny_model_dir, tiny_processor, tiny_prompts, special, share, checkpointing
):
    inputs = _inputs(tiny_processor, tiny_prompts, special, seed=4)
    reference = _grads(
        load_policy(tiny_model_dir, **model_load_args()), inputs, special, share_prompt=False
    )
    model = load_policy(tiny_model_dir, **model_load_args())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # checkpointing acts in training mode only
    got = _grads(model, inputs, special, share_prompt=share, padding_free=True)
    assert got.keys() == reference.keys()
    assert any("visual" in n for n in got)
    for name, g in reference.items():
        scale = g.abs().max().clamp_min(1e-8)
        assert float((got[name] - g).abs().max() / scale) < 1e-4, name


def test_shared_prompt_under_checkpointing_takes_the_packed_pass(
    tiny_model_dir, tiny_processor, tiny_prompts, special
):
    """The 7B recipe: share_prompt with gradient checkpointing, no explicit pack. The backbone
    runs once over one packed row (not per rollout), with gradients equal to the full pass."""
    inputs = _inputs(tiny_processor, tiny_prompts, special, seed=5)
    reference = _grads(
        load_policy(tiny_model_dir, **model_load_args()), inputs, special, share_prompt=False
    )
    model = load_policy(tiny_model_dir, **model_load_args())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    shapes = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    got = _grads(model, inputs, special, share_prompt=True)
    hook.remove()
    layout = pack_layout(inputs, share_prompt=True)
    assert shapes == [(1, layout.num_tokens)]
    for name, g in reference.items():
        scale = g.abs().max().clamp_min(1e-8)
        assert float((got[name] - g).abs().max() / scale) < 1e-4, name
