"""Accuracy evaluation on in-domain and out-of-domain sets: A^S, A^T and their average.

Shared by in-training validation (callbacks.PeriodicEvaluation), the before/after blocks of
metrics.json, and eval.py. Each rank evaluates a strided shard; the torchmetrics states are
summed across ranks, so the numbers are those of the whole set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mapo.analysis.metrics import EvalMetrics
from mapo.console.progress import Progress
from mapo.types import Prompt, RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)
Scorer = Callable[[Sequence[Prompt], Any], dict[str, Any]]


@dataclass
class EvalSets:
    in_domain: str
    prompts: dict[str, list[Prompt]]  # dataset name -> prompts (in-domain first)

    @property
    def out_of_domain(self) -> list[str]:
        return [n for n in self.prompts if n != self.in_domain]

    @classmethod
    def build(
        cls, in_domain: str, rows: dict[str, list[dict]], to_prompt, processor, max_tokens: int
    ) -> tuple[EvalSets, dict[str, int]]:
        """Prompts of every evaluation set, without those longer than ``max_tokens`` (dropped,
        never truncated: a cut prompt would be scored on a question the model never saw).
        Returns the sets and the number dropped per set, which metrics.json records."""
        from mapo.data.prompts import filter_prompts_by_tokens

        prompts, dropped = {}, {}
        for name, set_rows in rows.items():
            prompts[name], dropped[name] = filter_prompts_by_tokens(
                [to_prompt(r) for r in set_rows], processor, max_tokens
            )
            if dropped[name]:
                log.warning(
                    "eval set %s: dropped %d prompts longer than %d tokens",
                    name,
                    dropped[name],
                    max_tokens,
                )
            if set_rows and not prompts[name]:
                raise ValueError(
                    f"eval set {name}: every prompt is longer than data.max_prompt_tokens="
                    f"{max_tokens}; raise the limit or lower data.max_pixels"
                )
        return cls(in_domain, prompts), dropped


def evaluate(
    engine: RolloutEngine,
    sets: EvalSets,
    scorer: Scorer,
    sampling: SamplingConfig,
    *,
    batch_size: int,  # rollout.eval.batch_size
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    keep_predictions: bool = False,
    desc: str = "evaluation",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate one answer per prompt, score it, and return (metrics.json block, predictions).
    Rank 0 shows the progress (`mapo.console.progress.Progress`, labelled `desc`)."""
    metric = EvalMetrics(sets.in_domain, sets.out_of_domain)
    preds: list[dict[str, Any]] = []
    total = sum(len(p[rank::world_size]) for p in sets.prompts.values())
    one = SamplingConfig(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
    )
    with Progress(desc, total, unit="prompts", enabled=progress and rank == 0) as bar:
        for name, prompts in sets.prompts.items():
            for chunk, real in rank_chunks(prompts, rank, world_size, batch_size):
                comps = engine.generate(chunk, one)
                if not real:  # a filler call (see rank_chunks): generated, never scored
                    continue
                scores = scorer(chunk, comps)
                correct = torch.as_tensor(scores["accuracy"]).float() == 1.0
                metric.update(correct, name)
                if keep_predictions:
                    for i, p in enumerate(chunk):
                        preds.append(
                            {
                                "dataset": name,
                                "id": p.uid,
                                "answer": p.answer,
                                "prediction": comps.text[i],
                                "overall": float(scores["overall"][i]),
                                "format": float(scores["format"][i]),
                                "accuracy": float(scores["accuracy"][i]),
                            }
                        )
                bar.advance(len(chunk))
    return metric.to_block(), preds


def rank_chunks(
    prompts: Sequence[Prompt], rank: int, world_size: int, batch_size: int
) -> list[tuple[list[Prompt], int]]:
    """This rank's strided shard of ``prompts`` in generate calls of at most ``batch_size``,
    as (prompts to generate, how many of them are real). Every rank makes the same number of
    calls: under ZeRO-3 generation is collective (every forward gathers the sharded weights),
    so a rank with one call fewer would leave the others waiting. A rank whose shard runs out
    first makes each missing call with one prompt of the set, whose answer is dropped."""
    shard = list(prompts[rank::world_size])
    longest = -(-len(prompts) // world_size)  # the first rank's shard
    calls = -(-longest // batch_size)
    chunks = [shard[i * batch_size : (i + 1) * batch_size] for i in range(calls)]
    return [(chunk or [prompts[0]], len(chunk)) for chunk in chunks]
