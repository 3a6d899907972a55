"""DAPO dynamic sampling across ranks: every rank draws as long as any rank is short, so the
prompt stream and the group ids stay equal on all ranks (one process; the other rank's need is
simulated). The 2-process run is tests/test_topology.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import mapo.trainer.callbacks as callbacks
from mapo.pipeline.quickrun import algorithm_config
from mapo.trainer.callbacks import RolloutCallback
from mapo.trainer.prompt_stream import PromptStream
from mapo.types import Completions, Prompt, SamplingConfig

G = 2


class _Engine:
    """Completions whose text is the prompt's uid; the scorer below rewards by uid."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += 1
        n = len(prompts) * G
        return Completions(
            [i for i in range(len(prompts)) for _ in range(G)],
            [[1]] * n,
            [p.uid for p in prompts for _ in range(G)],
            [False] * n,
        )


def _scorer(good: set[str]):
    def score(prompts, comps):
        # good prompts: mixed group (kept), others: all zero (dropped)
        overall = [float(t in good and j % 2 == 0) for j, t in enumerate(comps.text)]
        o = torch.tensor(overall, dtype=torch.float64)
        return {"overall": o, "format": o, "accuracy": o}

    return score


def _callback(stream, good, world=2):
    algo = algorithm_config(
        estimator="grpo",
        group_size=G,
        rollout_batch_size=4,
        mini_batch_size=4,
        micro_batch_size=8,
        filter_groups=True,
        filter_max_tries=4,
    )
    cb = RolloutCallback(
        lambda: None,
        lambda row: Prompt(str(row), "", (), "", "emotion"),
        algo,
        SamplingConfig(n=G, temperature=1.0, top_p=1.0, max_new_tokens=64),
        _scorer(good),
    )
    cb.engine = _Engine()
    module = SimpleNamespace(
        stream=stream, device=torch.device("cpu"), policy=torch.nn.Linear(1, 1)
    )
    prompts, comps, gids = cb._generate(module, 4)
    return cb, module, cb._dynamic_sampling(module, prompts, comps, gids, world)


def test_a_full_rank_keeps_drawing_while_another_is_short(monkeypatch):
    # This rank (rank 0 of 2) gets rows 0, 2 on the first draw: both good, so it is full at
    # once; the other rank stays short for two more draws.
    answers = iter([True, True, False])  # "is any rank short?" after each try
    monkeypatch.setattr(callbacks, "_any_rank", lambda short: short or next(answers))
    stream = PromptStream(list(range(40)), seed=0, rank=0, world_size=2)
    order = stream._perm.tolist()
    cb, module, (prompts, comps, gids, rewards, stats) = _callback(
        stream, {str(order[0]), str(order[2])}
    )
    assert stats["dapo/tries"] == 3  # the other rank's draws
    assert stats["dapo/generations"] == 1  # this rank generated once, then only skipped ahead
    assert cb.engine.calls == 1
    assert stream.drawn == 3 * 4 and stream.cursor == 12  # in step with the other rank
    assert sorted(set(gids.tolist())) == [0, 2]  # its own draw ids of the first draw
    assert stats["dapo/kept_groups"] == 2 and stats["dapo/padded_groups"] == 0


def test_a_short_rank_draws_until_full_or_out_of_tries(monkeypatch):
    monkeypatch.setattr(callbacks, "_any_rank", lambda short: short)
    stream = PromptStream(list(range(40)), seed=0, rank=1, world_size=2)
    cb, module, (prompts, comps, gids, rewards, stats) = _callback(stream, set())
    assert stats["dapo/tries"] == stats["dapo/generations"] == 4  # filter_max_tries
    assert stats["dapo/kept_groups"] == 0 and stats["dapo/padded_groups"] == 2
    assert all(g % 2 == 1 for g in gids.tolist())  # rank 1 of 2: odd draw ids only
    assert stream.drawn == 4 * 4


def test_one_process_needs_no_collective():
    assert callbacks._any_rank(True) is True
    assert callbacks._any_rank(False) is False
