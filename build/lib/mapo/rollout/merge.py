"""Concatenate and sub-select rollout pools by group id (DAPO dynamic sampling)."""

from __future__ import annotations

from typing import Any

import torch

from mapo.rollout.base import Completions

# A pool is (prompts [B], completions [B*G], group_ids [B*G], rewards {key: [B*G] or counter}).
Pool = tuple[list, Completions, torch.Tensor, dict[str, Any]]


def _cat_rewards(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k in a:
        if isinstance(a[k], torch.Tensor) and a[k].ndim == 1:
            out[k] = torch.cat([a[k], b[k]])
        else:  # counters (timeouts, errors)
            out[k] = a[k] + b[k]
    return out


def concat_rollouts(a: Pool, b: Pool) -> Pool:
    pa, ca, ga, ra = a
    pb, cb, gb, rb = b
    off = len(pa)
    comps = Completions(
        prompt_index=ca.prompt_index + [i + off for i in cb.prompt_index],
        token_ids=ca.token_ids + cb.token_ids,
        text=ca.text + cb.text,
        truncated=ca.truncated + cb.truncated,
        logprobs=(ca.logprobs + cb.logprobs)
        if ca.logprobs is not None and cb.logprobs is not None
        else None,
    )
    return pa + pb, comps, torch.cat([ga, gb]), _cat_rewards(ra, rb)


def select_groups(pool: Pool, keep: list[int]) -> Pool:
    """The sub-pool of the groups in `keep` (in that order), prompt-major."""
    prompts, comps, gids, rewards = pool
    rows: list[int] = []
    new_prompts, new_index = [], []
    for new_p, g in enumerate(keep):
        idx = (gids == g).nonzero().flatten().tolist()
        new_prompts.append(prompts[comps.prompt_index[idx[0]]])
        rows.extend(idx)
        new_index.extend([new_p] * len(idx))
    sel = torch.tensor(rows, dtype=torch.long)
    out = Completions(
        prompt_index=new_index,
        token_ids=[comps.token_ids[i] for i in rows],
        text=[comps.text[i] for i in rows],
        truncated=[comps.truncated[i] for i in rows],
        logprobs=[comps.logprobs[i] for i in rows] if comps.logprobs is not None else None,
    )
    new_rewards = {
        k: (v[sel] if isinstance(v, torch.Tensor) and v.ndim == 1 else v)
        for k, v in rewards.items()
    }
    return new_prompts, out, gids[sel], new_rewards
