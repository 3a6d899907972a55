"""Per-phase wall time of TRL's GRPOTrainer steps, named as our trainer names its phases
(``time/rollout``, ``time/scoring``, ``time/logprobs``, ``time/update``), by wrapping TRL's and
transformers' methods in the worker process (neither is modified):

* generation: ``GRPOTrainer._generate`` (prompt tokenisation, ``model.generate``, EOS masking);
* scoring: ``GRPOTrainer._calculate_rewards``;
* old/ref log-probs: ``GRPOTrainer._get_per_token_logps_and_entropies`` called without grad
  (the reference forward, and the old-policy forward when TRL runs one);
* update: ``training_step`` minus its ``_prepare_inputs`` (which holds the three above), plus
  gradient clipping (``Trainer._clip_grad_norm``) and ``optimizer.step`` (timed from the
  ``on_pre_optimizer_step`` to the ``on_optimizer_step`` callback).

Wrapping costs microseconds per call.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict


class PhaseTimer:
    """Seconds per wrapped name, accumulated over a step and kept per step by ``tick``."""

    def __init__(self):
        self.acc: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._optimizer_start = 0.0

    def wrap(self, owner, name: str, key: str, when=None) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            clock = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.acc[key] += time.perf_counter() - clock

        setattr(owner, name, timed)

    def optimizer_start(self) -> None:
        self._optimizer_start = time.perf_counter()

    def optimizer_end(self) -> None:
        self.acc["optimizer"] += time.perf_counter() - self._optimizer_start

    def tick(self) -> None:
        a = self.acc
        self.steps.append(
            {
                "time/rollout": a["generate"],
                "time/scoring": a["rewards"],
                "time/logprobs": a["frozen_logprobs"],
                "time/update": a["training_step"]
                - a["prepare_inputs"]
                + a["clip"]
                + a["optimizer"],
            }
        )
        self.acc = defaultdict(float)


def instrument(timer: PhaseTimer):
    """Wrap GRPOTrainer's phases; returns the TrainerCallback that times optimizer.step."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    timer.wrap(GRPOTrainer, "_generate", "generate")
    timer.wrap(GRPOTrainer, "_calculate_rewards", "rewards")
    timer.wrap(
        GRPOTrainer,
        "_get_per_token_logps_and_entropies",
        "frozen_logprobs",
        when=lambda: not torch.is_grad_enabled(),
    )
    timer.wrap(GRPOTrainer, "training_step", "training_step")
    timer.wrap(GRPOTrainer, "_prepare_inputs", "prepare_inputs")
    timer.wrap(GRPOTrainer, "_clip_grad_norm", "clip")

    class OptimizerClock(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            timer.optimizer_start()

        def on_optimizer_step(self, args, state, control, **kwargs):
            timer.optimizer_end()

    return OptimizerClock()
