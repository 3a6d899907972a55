"""The varlen (flash-attn) packed pass, shared prompt included, under gradient checkpointing.

No flash-attn kernel runs on this CPU, so the text decoder is given a reference kernel with
flash_attn_varlen_func's contract, written here in plain torch: per segment, softmax of the
scaled scores with the causal mask aligned to the bottom right, GQA by repeating the key /
value heads. Everything else is the production route: ``mapo.models.varlen_attention``'s
wrapper (key gather, offsets), the layout's segments, positions, the kwarg's way through the
checkpointed decoder layers, and unpacking. Compared with the padded full forward: log-probs
and gradients. The real kernel is checked on a GPU by tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch
from packing_inputs import _grads, _inputs
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

import mapo.models.logprobs as logprobs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.models.packing import pack_layout
from mapo.pipeline.quickrun import model_load_args

pytestmark = pytest.mark.usefixtures("torch_threads")

REFERENCE = "varlen_reference"
calls = {"segmented": 0}


def reference_varlen(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    dropout=0.0,
    scaling=None,
    is_causal=None,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    max_length_q=None,
    max_length_k=None,
    **kwargs,
):
    """flash_attn_varlen_func's contract on [1, h, T, d] inputs; plain sdpa without offsets."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    calls["segmented"] += 1
    assert attention_mask is None and is_causal
    q, k, v = query[0], key[0], value[0]  # [h, T, d], [h_kv, K, d]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
    v = v.repeat_interleave(q.shape[0] // v.shape[0], 0)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    cq, ck = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()
    assert max_length_q == max(b - a for a, b in zip(cq, cq[1:]))
    assert max_length_k == max(b - a for a, b in zip(ck, ck[1:]))
    out = []
    for (qs, qe), (ks, ke) in zip(zip(cq, cq[1:]), zip(ck, ck[1:])):
        lq, lk = qe - qs, ke - ks
        scores = q[:, qs:qe] @ k[:, ks:ke].transpose(-1, -2) * scale  # [h, lq, lk]
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out.append(probs @ v[:, ks:ke])
    return torch.cat(out, dim=1).transpose(0, 1)[None], None  # [1, T, h, d]


@pytest.fixture
def varlen_model(tiny_model_dir, monkeypatch):
    """load() -> the tiny policy whose text decoder runs the reference varlen kernel."""
    AttentionInterface.register(REFERENCE, reference_varlen)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)
    monkeypatch.setattr(logprobs, "VARLEN_BACKENDS", (*logprobs.VARLEN_BACKENDS, REFERENCE))

    def load():
        model = load_policy(tiny_model_dir, **model_load_args())
        model.config.text_config._attn_implementation = REFERENCE  # the vision tower keeps sdpa
        return model

    return load


def test_segments_give_each_completion_its_prompt_then_itself(
    tiny_processor,
    tiny_prompts,
    special,
):
    inputs = _inputs(tiny_processor, tiny_prompts, special, index=[0, 1, 0], lengths=[3, 2, 4])
    p0 = int(inputs.attention_mask[0, : inputs.prompt_len].sum())
    p1 = int(inputs.attention_mask[1, : inputs.prompt_len].sum())
    seg = pack_layout(inputs, share_prompt=True).varlen_segments()
    # packed: [prompt 0][row 0: 2][row 2: 3][prompt 1][row 1: 1]
    prompt0, row0 = list(range(p0)), list(range(p0, p0 + 2))
    row2 = list(range(p0 + 2, p0 + 5))
    prompt1, row1 = list(range(p0 + 5, p0 + 5 + p1)), [p0 + 5 + p1]
    keys = prompt0 + prompt0 + row0 + prompt0 + row2 + prompt1 + prompt1 + row1
    assert seg.key_index.tolist() == keys
    assert seg.cu_seq_lens_q.tolist() == [0, p0, p0 + 2, p0 + 5, p0 + 5 + p1, p0 + 6 + p1]
    lens_k = [p0, p0 + 2, p0 + 3, p1, p1 + 1]
    assert torch.diff(seg.cu_seq_lens_k).tolist() == lens_k
    assert (seg.max_length_q, seg.max_length_k) == (max(p0, p1), max(lens_k))
    unshared = pack_layout(inputs, share_prompt=False).varlen_segments()
    assert unshared.key_index.tolist() == list(range(p0 + 2 + p1 + 1 + p0 + 3))
    assert torch.equal(unshared.cu_seq_lens_q, unshared.cu_seq_lens_k)


@torch.no_grad()
@pytest.mark.parametrize("share", [False, True])
def test_varlen_logprobs_equal_the_padded_forward(
    tiny_model_dir,
    varlen_model,
    tiny_processor,
    tiny_prompts,
    special,
    sharpen,
    share,
):
    inputs = _inputs(tiny_processor, tiny_prompts, special, seed=3)
    kw = dict(temperature=1.0, suppress_ids=special["suppress"], return_entropy=True)
    lp_ref, ent_ref = token_logprobs(
        sharpen(load_policy(tiny_model_dir, **model_load_args()).eval()),
        inputs,
        share_prompt=False,
        padding_free=False,
        **kw,
    )
    calls["segmented"] = 0
    lp, ent = token_logprobs(
        sharpen(varlen_model().eval()), inputs, padding_free=True, share_prompt=share, **kw
    )
    assert calls["segmented"] > 0  # the segmented kernel ran, not a fallback
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    assert float(lp_ref.abs().max()) > 1.0  # sharpened: a wrong key would cost nats


def test_shared_prompt_under_checkpointing_on_a_varlen_backend(
    tiny_model_dir,
    varlen_model,
    tiny_processor,
    tiny_prompts,
    special,
):
    """The 7B recipe on its backend: flash-attn-style varlen, share_prompt and gradient
    checkpointing, no explicit pack. One packed shared sequence; gradients equal the full
    padded pass."""
    inputs = _inputs(tiny_processor, tiny_prompts, special, seed=5)
    reference = _grads(
        load_policy(tiny_model_dir, **model_load_args()), inputs, special, share_prompt=False
    )
    model = varlen_model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    shapes = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    calls["segmented"] = 0
    got = _grads(model, inputs, special, share_prompt=True)
    hook.remove()
    layout = pack_layout(inputs, share_prompt=True)
    assert shapes == [(1, layout.num_tokens)]  # shared: each prompt once
    layers = model.config.text_config.num_hidden_layers
    assert calls["segmented"] == 2 * layers  # forward + checkpoint recomputation, every layer
    assert got.keys() == reference.keys()
    for name, g in reference.items():
        scale = g.abs().max().clamp_min(1e-8)
        assert float((got[name] - g).abs().max() / scale) < 1e-4, name


def test_other_calls_reach_the_original_kernel(varlen_model):
    """The wrapper changes nothing for a call without segments (generation, evaluation)."""
    from mapo.models.varlen_attention import install

    install(REFERENCE)
    install(REFERENCE)  # idempotent: one wrapper, not two
    wrapped = AttentionInterface._global_mapping[REFERENCE]
    assert wrapped.args[0] is reference_varlen
    q = torch.randn(1, 4, 5, 8)
    kv = torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = 2, True, False
    want, _ = reference_varlen(module, q, kv, kv, None, is_causal=True)
    got, _ = wrapped(module, q, kv, kv, None, is_causal=True)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
