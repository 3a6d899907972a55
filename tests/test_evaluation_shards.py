"""Evaluation on several ranks: every rank makes the same number of generate calls (ZeRO-3
generation is collective), each prompt is scored on exactly one rank, and a filler call's
answer is never scored."""

import pytest

from mapo.trainer.evaluation import EvalSets, evaluate, rank_chunks
from mapo.types import Completions, Prompt, SamplingConfig


def _prompts(n: int, name: str = "set") -> list[Prompt]:
    return [Prompt(f"{name}{i}", f"q{i}", (), str(i), "math", name) for i in range(n)]


@pytest.mark.parametrize(
    "n, world, batch, sizes",
    [
        (513, 2, 256, {0: [(256, 256), (1, 1)], 1: [(256, 256), (1, 0)]}),  # one call more
        (1, 2, 4, {0: [(1, 1)], 1: [(1, 0)]}),  # rank 1 has no prompt at all
        (5, 2, 2, {0: [(2, 2), (1, 1)], 1: [(2, 2), (1, 0)]}),  # shards of 3 and 2 prompts
        (0, 2, 4, {0: [], 1: []}),
        (7, 1, 3, {0: [(3, 3), (3, 3), (1, 1)]}),
    ],
)
def test_every_rank_makes_the_same_number_of_calls(n, world, batch, sizes):
    prompts = _prompts(n)
    for rank in range(world):
        chunks = rank_chunks(prompts, rank, world, batch)
        assert [(len(c), real) for c, real in chunks] == sizes[rank]
        assert len(chunks) == len(rank_chunks(prompts, 0, world, batch))
    scored = [
        p.uid
        for r in range(world)
        for c, real in rank_chunks(prompts, r, world, batch)
        for p in c[:real]
    ]
    assert sorted(scored) == sorted(p.uid for p in prompts)  # each prompt once, on one rank


class _CountingEngine:
    """Answers every prompt with its own gold answer, and counts generate calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += 1
        text = [p.answer for p in prompts]
        return Completions(
            list(range(len(prompts))), [[1]] * len(prompts), text, [False] * len(prompts)
        )


def _scorer(prompts, comps):
    ok = [float(t == p.answer) for p, t in zip(prompts, comps.text)]
    return {"accuracy": ok, "overall": ok, "format": ok}


def test_ranks_evaluate_every_prompt_once_in_equal_numbers_of_calls():
    sets = EvalSets("in", {"in": _prompts(5, "in"), "ood": _prompts(1, "ood")})
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=4)
    engines, blocks, preds = [], [], []
    for rank in range(2):
        engine = _CountingEngine()
        block, rows = evaluate(
            engine,
            sets,
            _scorer,
            sampling,
            batch_size=2,
            rank=rank,
            world_size=2,
            progress=False,
            keep_predictions=True,
        )
        engines.append(engine)
        blocks.append(block)
        preds += rows
    assert engines[0].calls == engines[1].calls == 3  # in: 2 calls each; ood: rank 1 a filler
    assert sorted(r["id"] for r in preds) == sorted([f"in{i}" for i in range(5)] + ["ood0"])
    assert all(r["accuracy"] == 1.0 for r in preds)
    # without a process group each block is its rank's own count: the filler is not in it
    assert [b["n"] for b in blocks] == [{"in": 3, "ood": 1}, {"in": 2, "ood": 0}]
