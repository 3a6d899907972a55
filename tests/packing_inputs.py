"""Shared inputs of the packed-pass tests (test_packing.py, test_varlen_attention.py): padded
``PolicyInputs`` of random completions, and parameter gradients of a weighted log-prob sum."""

from __future__ import annotations

import torch

from mapo.models.batching import build_policy_inputs
from mapo.models.logprobs import token_logprobs
from mapo.types import Completions

# rows of three prompts, unequal lengths, out of prompt order; prompt 1 has two images
INDEX = [2, 0, 2, 1, 0, 2, 0, 1]
LENGTHS = [12, 1, 6, 9, 4, 1, 12, 3]


def _inputs(processor, prompts, special, index=INDEX, lengths=LENGTHS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    allowed = [i for i in range(special["eos"]) if i not in special["suppress"]]
    ids = [
        [allowed[int(j)] for j in torch.randint(len(allowed), (n,), generator=gen)] for n in lengths
    ]
    comps = Completions(
        prompt_index=list(index), token_ids=ids, text=[""] * len(ids), truncated=[False] * len(ids)
    )
    return build_policy_inputs(processor, prompts, comps, pad_token_id=special["pad"])


def _grads(model, inputs, special, **kw):
    kw.setdefault("padding_free", False)
    weights = torch.randn(inputs.completion_mask.shape, generator=torch.Generator().manual_seed(0))
    logp, ent = token_logprobs(
        model, inputs, temperature=1.0, suppress_ids=special["suppress"], return_entropy=True, **kw
    )
    ((logp * weights).sum() + 0.1 * ent.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
