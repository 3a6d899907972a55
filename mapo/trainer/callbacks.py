"""Callbacks: rollouts every step, evaluation before/during/after RL, the progress bar."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar

from mapo.algorithm.config import AlgorithmConfig
from mapo.atomic import atomic_write
from mapo.ranks import all_reduce
from mapo.trainer.evaluation import EvalSets, evaluate
from mapo.trainer.module import MAPOModule
from mapo.types import Prompt, RolloutBatch, RolloutEngine, SamplingConfig

# Group ids are the prompts' global draw indices (PromptStream.next): one id per drawn prompt,
# unique across the run and the same on every rank.


class RolloutCallback(Callback):
    """Every step: sync weights into the engine if they changed, draw prompts, generate G
    completions each, (DAPO) filter groups and resample, hand the module a RolloutBatch."""

    def __init__(
        self,
        engine_factory: Callable[[], RolloutEngine],
        to_prompt: Callable[[dict], Prompt],
        algo: AlgorithmConfig,
        sampling: SamplingConfig,
        scorer: Callable[[Sequence[Prompt], Any], dict[str, Any]],
    ):
        self.engine_factory, self.to_prompt, self.algo, self.scorer = (
            engine_factory,
            to_prompt,
            algo,
            scorer,
        )
        self.sampling = sampling
        self.engine: RolloutEngine | None = None
        self._synced_version: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Built here, not earlier: a colocated vLLM engine must see the trainer's process group.
        if self.engine is None:
            self.engine = self.engine_factory()
        if trainer.global_rank > 0:
            _seed_for_rank(trainer.global_rank)

    def _sync(self, module: MAPOModule) -> dict[str, float]:
        """time/weight_sync and perf/sync_bytes (the tensors sent to the engine this step)."""
        if self._synced_version == module.weights_version:
            return {"time/weight_sync": 0.0, "perf/sync_bytes": 0.0}
        clock = time.perf_counter()
        self.engine.sync_weights(module.policy)
        self._synced_version = module.weights_version
        return {
            "time/weight_sync": time.perf_counter() - clock,
            "perf/sync_bytes": float(getattr(self.engine, "last_sync_bytes", 0)),
        }

    def _generate(self, module: MAPOModule, n_prompts: int):
        rows, draw_ids = module.stream.next(n_prompts)
        prompts = [self.to_prompt(r) for r in rows]
        was_training = module.policy.training
        module.policy.eval()
        comps = self.engine.generate(prompts, self.sampling)
        module.policy.train(was_training)
        gids = torch.tensor(draw_ids, dtype=torch.long)[torch.tensor(comps.prompt_index)]
        return prompts, comps, gids  # comps.prompt_index is local to this call

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: MAPOModule, batch: Any, batch_idx: int
    ) -> None:
        clock = time.perf_counter()
        metrics = self._sync(module)
        world = trainer.world_size
        prompts, comps, gids = self._generate(module, self.algo.rollout_batch_size)
        if self.algo.filter_groups:  # DAPO scores while it filters
            prompts, comps, gids, rewards, dapo = self._dynamic_sampling(
                module, prompts, comps, gids, world
            )
            metrics.update(dapo)
            metrics["time/rollout"] = time.perf_counter() - clock
        else:
            metrics["time/rollout"] = time.perf_counter() - clock
            clock = time.perf_counter()
            rewards = self.scorer(prompts, comps)
            metrics["time/scoring"] = time.perf_counter() - clock
        module.rollout = RolloutBatch(module.rl_step, prompts, comps, gids, rewards, metrics)

    # ------------------------------------------------------------------ DAPO dynamic sampling
    def _dynamic_sampling(self, module, prompts, comps, gids, world):
        """Keep groups whose mean overall reward lies in (filter_low, filter_high); draw more
        prompts until every rank has its share of groups or filter_max_tries draws ran (all
        ranks draw together, so the prompt stream and the group ids agree across ranks).
        If still short, pad with the rejected groups of highest spread (they carry ~zero
        advantage) so that every rank runs the same number of forward passes (ZeRO-3 gathers
        parameters collectively in each forward)."""
        from mapo.rollout.merge import select_groups

        want = self.algo.rollout_batch_size // world
        pool = (prompts, comps, gids, self.scorer(prompts, comps))
        pool, keep, spread, tries, generations = self._draw_until_full(module, pool, want)
        kept, padded = _fill_with_rejected(keep[:want], spread, want)
        out = select_groups(pool, kept)
        stats = {
            "dapo/tries": float(tries),
            "dapo/generations": float(generations),
            "dapo/kept_groups": float(min(len(keep), want)),
            "dapo/padded_groups": float(padded),
            "dapo/candidate_groups": float(len(spread)),
        }
        return (*out, stats)

    def _draw_until_full(self, module, pool, want: int):
        """Filter the scored pool; while any rank has fewer than `want` kept groups and tries
        remain, draw another rollout batch (a full rank only skips the stream ahead).
        Returns (pool, kept group ids, every group's spread, tries, generations)."""
        from mapo.rollout.merge import concat_rollouts

        tries = generations = 1
        while True:
            keep, spread = _group_filter(
                pool[2], pool[3]["overall"], self.algo.filter_low, self.algo.filter_high
            )
            # Every rank draws as long as ANY rank is short: the prompt stream (and with it
            # the group ids) stays the same on all ranks; a rank that is full only skips ahead.
            short = len(keep) < want
            if tries >= self.algo.filter_max_tries or not _any_rank(short):
                return pool, keep, spread, tries, generations
            if short:
                more = self._generate(module, self.algo.rollout_batch_size)
                pool = concat_rollouts(pool, (*more, self.scorer(more[0], more[1])))
                generations += 1
            else:
                module.stream.next(self.algo.rollout_batch_size)
            tries += 1


def _fill_with_rejected(kept: list, spread: dict, want: int) -> tuple[list, int]:
    """Pad `kept` to `want` groups with the rejected ones of highest reward spread; returns
    (groups, how many were padded)."""
    if len(kept) >= want:
        return kept, 0
    rejected = [g for g in sorted(spread, key=spread.get, reverse=True) if g not in set(kept)]
    padded = want - len(kept)
    return kept + rejected[:padded], padded


def _seed_for_rank(rank: int) -> None:
    """Give this rank a random stream of its own. Every rank was seeded alike, and rollouts
    drawn with the same noise are correlated across ranks (two ranks of the tiny model sampled
    identical completions for different prompts). Rank 0 keeps its stream, so one-process runs
    are unchanged; a resumed run restores each rank's saved state over this one."""
    seed = int(np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _any_rank(flag: bool) -> bool:
    """True if ``flag`` holds on some rank."""
    return all_reduce([float(flag)], "max")[0] > 0


def _group_filter(gids: torch.Tensor, overall: torch.Tensor, low: float, high: float):
    """Group ids (in first-seen order) whose mean overall reward is in (low, high), and every
    group's reward spread (max - min) for padding decisions."""
    keep, spread, order = [], {}, []
    for g in gids.tolist():
        if g not in spread:
            order.append(g)
            spread[g] = 0.0
    overall = overall.double()
    for g in order:
        r = overall[gids == g]
        spread[g] = float(r.max() - r.min())
        if low < float(r.mean()) < high:
            keep.append(g)
    return keep, spread


class Evaluation(Callback):
    """A^S / A^T / average before RL, every `every_n_steps` steps, and after RL.

    Results go to the logger (`val/A_S`, ...) and to <run dir>/metrics.json (`before`,
    `after`, `history`), written atomically by rank 0."""

    def __init__(
        self,
        rollout: RolloutCallback,
        sets: EvalSets,
        scorer,
        sampling: SamplingConfig,
        run_dir: str | Path,
        *,
        before: bool,  # eval.before
        after: bool,  # eval.after
        every_n_steps: int,  # eval.every_n_steps
        batch_size: int,  # rollout.eval.batch_size
        extra: dict | None = None,
    ):
        self.rollout, self.sets, self.scorer, self.sampling = rollout, sets, scorer, sampling
        self.run_dir = Path(run_dir)
        self.before, self.after, self.every = before, after, every_n_steps
        self.batch_size = batch_size
        self.extra = extra or {}

    def _run(self, trainer: pl.Trainer, module: MAPOModule, tag: str) -> dict[str, Any]:
        self.rollout._sync(module)  # the engine the rollouts use, on the current weights
        was = module.policy.training
        module.policy.eval()
        block, preds = evaluate(
            self.rollout.engine,
            self.sets,
            self.scorer,
            self.sampling,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            keep_predictions=tag != "history",
            desc=f"evaluation {tag}"
            if tag != "history"
            else f"evaluation at step {module.rl_step}",
        )
        module.policy.train(was)
        block["step"] = module.rl_step
        # None marks a dataset with no samples (nothing to log)
        scalars = {
            f"val/{k}": float(v)
            for k, v in block.items()
            if k in ("A_S", "A_T", "A_avg") and v is not None
        }
        scalars.update(
            {f"val/acc/{k}": float(v) for k, v in block["datasets"].items() if v is not None}
        )
        if tag != "history":
            self._regression(trainer, tag, preds, block, scalars)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=module.rl_step)
        self._write(trainer, tag, block)
        return block

    def _regression(self, trainer, tag: str, preds: list, block: dict, scalars: dict) -> None:
        """Keep each prompt's correctness before RL (a file, so a resumed run has it) and,
        after RL, add the regression and gain rates to the block. Single-process only: each
        rank sees its own shard of the predictions."""
        from mapo.analysis.regression import correctness, regression_block

        if trainer.world_size != 1:
            return
        path = self.run_dir / "eval_correct_before.json"
        if tag == "before":
            data = json.dumps(correctness(preds), sort_keys=True).encode()
            atomic_write(path, lambda f: f.write(data))
        elif path.exists():
            reg = regression_block(json.loads(path.read_text()), correctness(preds))
            block["regression"] = reg
            scalars["val/regression_rate"] = float(reg["all"]["regression_rate"])
            scalars["val/gain_rate"] = float(reg["all"]["gain_rate"])

    def _write(self, trainer: pl.Trainer, tag: str, block: dict[str, Any]) -> None:
        if trainer.global_rank != 0:
            return
        path = self.run_dir / "metrics.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(self.extra)
        if tag == "history":
            data.setdefault("history", []).append(block)
        else:
            data[tag] = block
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))

    def on_train_start(self, trainer: pl.Trainer, module: MAPOModule) -> None:
        if self.before and module.rl_step == 0:
            self._run(trainer, module, "before")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every and module.rl_step % self.every == 0:
            self._run(trainer, module, "history")

    def on_train_end(self, trainer: pl.Trainer, module: MAPOModule) -> None:
        if self.after:
            self._run(trainer, module, "after")


class RLProgressBar(RichProgressBar):
    """Rich bar showing the step's reward, accuracy and time instead of every logged key."""

    KEYS = {
        "reward/overall": "reward",
        "reward/accuracy": "acc",
        "reward/format": "fmt",
        "actor/kl_ref": "kl",
        "time/step": "s/step",
    }

    def _get_train_description(self, current_epoch: int) -> str:
        return "RL steps"  # one epoch of step ticks: "Epoch 0/-2" would mean nothing here

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        last = getattr(pl_module, "last_metrics", {}) or {}
        return {short: f"{last[k]:.3g}" for k, short in self.KEYS.items() if k in last}


def rl_progress_bar() -> ProgressBar:
    """The RL loop's progress: the Rich bar in a terminal, a few plain lines in a pipe or log."""
    from mapo.console import interactive
    from mapo.console.progress import PlainRLProgressBar

    return RLProgressBar() if interactive() else PlainRLProgressBar()
