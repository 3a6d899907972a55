"""Every model family, every log-prob route: the trainer's per-token log-probs and their
gradients equal a plain Hugging Face forward of each rollout row on its own (the processor's
prompt with its images, then the completion tokens, unpadded, the model's own positions).

The batch has images of different sizes (one prompt with two), completion lengths from 1 to
23 tokens, and two single-rollout prompts; each route runs with gradient checkpointing on
and off. The tiny model of each family is sharpened (conftest.sharpen) so that a position or
feature bug costs whole nats, not 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mapo.models.batching import build_policy_inputs
from mapo.models.families import FAMILIES, get_family
from mapo.models.loading import load_policy, load_processor
from mapo.models.logprobs import token_logprobs
from mapo.models.micro_batching import StepLayout
from mapo.models.processor import policy_suppressed_ids
from mapo.pipeline.quickrun import model_load_args
from mapo.types import Completions, Prompt

pytestmark = pytest.mark.usefixtures("torch_threads")

FAMILY_NAMES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]
PROMPT_INDEX = [0, 0, 0, 1, 2]  # prompts 1 and 2 have a single rollout
LENGTHS = [23, 1, 6, 15, 3]
IMAGE_SIZES = [[(56, 56)], [(56, 56), (84, 28)], [(112, 56)]]  # (width, height)

# route: (share_prompt, padding_free, share_vision, token budget)
ROUTES = {
    "padded": (False, False, False, None),
    "shared_vision": (False, False, True, None),
    "shared_prompt": (True, False, True, None),
    "packed": (False, True, True, None),
    "packed_shared": (True, True, True, None),
    "budget_padded": (True, False, True, 60),
    "budget_packed": (True, True, True, 60),
}


def _prompt(processor, question: str, sizes, seed: int) -> Prompt:
    rng = np.random.default_rng(seed)
    images = tuple(Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes)
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return Prompt(uid=f"{question}-{seed}", text=text, images=images, answer="awe", task="emotion")


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_setup(request, tmp_path_factory, sharpen):
    from mapo.models.tiny import tiny_model_path
    from mapo.pipeline.quickrun import tiny_model_args

    path = tiny_model_path(
        tmp_path_factory.mktemp(request.param), **tiny_model_args(family=request.param)
    )
    processor = load_processor(path)
    model = sharpen(load_policy(path, **model_load_args()))
    questions = ["Which emotion?", "How many dots are there in both images?", "Count the dots."]
    prompts = [_prompt(processor, q, s, i) for i, (q, s) in enumerate(zip(questions, IMAGE_SIZES))]
    suppress = policy_suppressed_ids(model, processor)
    tok = processor.tokenizer
    allowed = [i for i in range(len(tok)) if i not in set(suppress) and i != tok.eos_token_id]
    gen = torch.Generator().manual_seed(0)
    token_ids = [
        [allowed[int(j)] for j in torch.randint(len(allowed), (n,), generator=gen)] for n in LENGTHS
    ]
    comps = Completions(
        prompt_index=list(PROMPT_INDEX),
        token_ids=token_ids,
        text=[""] * len(token_ids),
        truncated=[False] * len(token_ids),
    )
    inputs = build_policy_inputs(processor, prompts, comps, pad_token_id=tok.pad_token_id)
    weights = torch.randn(inputs.completion_mask.shape, generator=gen)
    ref, ref_grads = _reference(model, processor, prompts, comps, suppress, weights)
    return dict(
        processor=processor,
        prompts=prompts,
        model=model,
        inputs=inputs,
        suppress=suppress,
        weights=weights,
        ref=ref,
        ref_grads=ref_grads,
        name=request.param,
    )


def _reference(model, processor, prompts, comps, suppress, weights):
    """Per-row log-probs [N, L] and the gradients of sum(weights * log-probs), each row run on
    its own through the model's full forward (its own positions from mm_token_type_ids)."""
    model.zero_grad(set_to_none=True)
    rows = torch.zeros(weights.shape)
    for row, (p, ids) in enumerate(zip(comps.prompt_index, comps.token_ids)):
        enc = processor(text=[prompts[p].text], images=list(prompts[p].images), return_tensors="pt")
        comp = torch.tensor([ids])
        input_ids = torch.cat([enc["input_ids"], comp], dim=1)
        logits = (
            model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=enc["pixel_values"],
                image_grid_thw=enc["image_grid_thw"],
                mm_token_type_ids=torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], 1),
            )
            .logits[0]
            .float()
        )
        logits[:, suppress] = float("-inf")
        n = enc["input_ids"].shape[1]
        logp = logits[n - 1 : n - 1 + len(ids)].log_softmax(-1).gather(-1, comp[0, :, None])[:, 0]
        (logp * weights[row, : len(ids)]).sum().backward()
        rows[row, : len(ids)] = logp.detach()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return rows, grads


def _route_logprobs(model, inputs, suppress, route):
    share_prompt, padding_free, share_vision, budget = ROUTES[route]
    kw = dict(
        temperature=1.0,
        suppress_ids=suppress,
        share_prompt=share_prompt,
        padding_free=padding_free,
        share_vision=share_vision,
    )
    if budget is None:
        return token_logprobs(model, inputs, **kw)
    layout = StepLayout(
        inputs,
        micro_batch_size=len(PROMPT_INDEX),
        max_tokens_per_micro_batch=budget,
        padding_free=padding_free,
        share_prompt=share_prompt,
    )
    micro = layout.micro_batches(torch.arange(inputs.num_rows))
    assert len(micro) > 1, "the budget must split the batch"
    parts = [token_logprobs(model, layout.inputs(mb), **kw) for mb in micro]
    return layout.scatter(micro, parts)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "ckpt"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_route_equals_per_row_forward(family_setup, route, checkpointing):
    s = family_setup
    model = s["model"].train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.zero_grad(set_to_none=True)
        logp = _route_logprobs(model, s["inputs"], s["suppress"], route)
        (logp * s["weights"]).sum().backward()
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
    torch.testing.assert_close(logp.detach(), s["ref"], atol=2e-5, rtol=0)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == s["ref_grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, s["ref_grads"][name], atol=2e-4, rtol=1e-3, msg=name)
    model.zero_grad(set_to_none=True)


def test_a_route_a_family_lacks_takes_the_plain_route_counted(family_setup):
    from mapo.models.logprobs import route_fallbacks

    s = family_setup
    before = route_fallbacks()
    with torch.no_grad():
        _route_logprobs(s["model"].eval(), s["inputs"], s["suppress"], "packed")
    after = route_fallbacks()
    key = "perf/route_fallbacks/packed"
    lacks = "packed" not in get_family(s["name"]).routes
    assert after.get(key, 0) - before.get(key, 0) == (1 if lacks else 0)


@torch.no_grad()
def test_hf_engine_generates(family_setup):
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    s = family_setup
    engine = HFEngine(s["model"].eval(), s["processor"], share_prefill=True)
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0)
    out = engine.generate(s["prompts"], sampling)
    assert len(out) == 9 and all(1 <= len(t) <= 6 for t in out.token_ids)
    inputs = build_policy_inputs(
        s["processor"], s["prompts"], out, pad_token_id=engine.pad_token_id
    )
    kw = dict(
        temperature=1.0, suppress_ids=engine.suppress_ids, share_prompt=True, padding_free=False
    )
    logp = token_logprobs(s["model"], inputs, **kw)
    for row, sampled in enumerate(out.logprobs):  # the sampler's log-probs are the trainer's
        torch.testing.assert_close(
            logp[row, : len(sampled)], torch.tensor(sampled), atol=2e-4, rtol=0
        )


def test_the_entry_names_the_model_modules(family_setup):
    model, family = family_setup["model"], get_family(family_setup["name"])
    layers = model.get_submodule(family.decoder_layers)
    assert len(layers) == model.config.get_text_config().num_hidden_layers
    assert model.get_submodule(family.vision_tower) is model.model.visual
    assert type(model).__name__ == family.model_class
    assert model.config.model_type == family.model_type


def test_every_family_is_tested():
    assert sorted(FAMILIES) == sorted(FAMILY_NAMES)


def test_unknown_family_is_refused_naming_the_supported_ones():
    from mapo.models.families import UnsupportedFamily

    with pytest.raises(UnsupportedFamily, match=r"'llava'.*supported families: \['qwen2_5_vl'"):
        get_family("llava")
