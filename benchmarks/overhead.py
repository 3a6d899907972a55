"""Where one RL step of our trainer spends its time: generation, reward scoring, old/reference
log-probs, forward (loss), backward, optimizer, and everything else, as shares of the wall
time between consecutive step ends.

    python -m benchmarks.overhead [--size tiny --engine hf --prompts 16 --group 8 ...]
    python -m benchmarks.overhead --workload shape --prompts 2 --group 8 --gradient-checkpointing
                                   # the realistic shape (benchmarks/shape_setup.py)

The trainer's own timings (module.last_metrics: time/rollout, time/scoring, time/logprobs,
time/update) give the big phases; this script wraps a few functions for the finer split
(build_policy_inputs, the advantage kernel, log_step, manual_backward, grad clipping,
optimizer step / zero_grad). Wrapping costs microseconds per call; mapo/ is not modified.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections import defaultdict

from benchmarks.common import load_average, settings_from_args, settings_parser
from benchmarks.run_ours import StepClockCallback, run

_ACC: dict[str, float] = defaultdict(float)  # seconds per wrapped category, this step


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        clock = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _ACC[name] += time.perf_counter() - clock

    return wrapper


def instrument() -> None:
    """Wrap the functions whose time the trainer does not report separately."""
    import torch
    from lightning.pytorch.core.optimizer import LightningOptimizer

    import mapo.trainer.module as mm

    mm.build_policy_inputs = _timed("inputs", mm.build_policy_inputs)
    mm.compute_advantages_with_stats = _timed("advantages", mm.compute_advantages_with_stats)
    mm.log_step = _timed("logging", mm.log_step)
    mm.MAPOModule.manual_backward = _timed("backward", mm.MAPOModule.manual_backward)
    torch.nn.utils.clip_grad_norm_ = _timed("optimizer", torch.nn.utils.clip_grad_norm_)
    LightningOptimizer.step = _timed("optimizer", LightningOptimizer.step)
    torch.optim.Optimizer.zero_grad = _timed("optimizer", torch.optim.Optimizer.zero_grad)


class PhaseClock(StepClockCallback):
    """The step clock, also keeping (and resetting) the wrapped categories per step."""

    def __init__(self):
        super().__init__()
        self.wrapped: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        self.wrapped.append(dict(_ACC))
        _ACC.clear()


def breakdown(wall: float, m: dict[str, float], w: dict[str, float]) -> dict[str, float]:
    """Seconds per category for one step; the categories add up to `wall`."""
    main = {
        "generation": m["time/rollout"],  # weight sync + prompt encoding + generate
        "reward scoring": m["time/scoring"],
        "old/ref log-probs": m["time/logprobs"] - w.get("inputs", 0.0),
        "forward (loss)": m["time/update"] - w.get("backward", 0.0) - w.get("optimizer", 0.0),
        "backward": w.get("backward", 0.0),
        "optimizer (clip, step, zero)": w.get("optimizer", 0.0),
    }
    rest = {
        "  inputs (tokens, images, masks)": w.get("inputs", 0.0),
        "  advantages": w.get("advantages", 0.0),
        "  metrics + records (log_step)": w.get("logging", 0.0),
    }
    rest["  Lightning loop, callbacks, rest"] = wall - sum(main.values()) - sum(rest.values())
    return {**main, "everything else": sum(rest.values()), **rest}


def max_new_tokens(s) -> int:
    if s.workload == "toy":
        return s.max_new_tokens
    from benchmarks.shape_setup import max_new_tokens as shape_cap

    return shape_cap(s)  # the cap; every completion's length is forced below it


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = settings_parser(__doc__.split("\n\n")[0])
    ap.add_argument(
        "--no-share-prompt",
        dest="share_prompt",
        action="store_false",
        help="model.share_prompt=false: every rollout runs its whole prompt",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="model.gradient_checkpointing=true",
    )
    a = ap.parse_args(argv)
    s = settings_from_args(
        a, share_prompt=a.share_prompt, gradient_checkpointing=a.gradient_checkpointing
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(s.threads))
    if s.engine == "vllm":  # vLLM's CPU worker binds its own OMP threads: as many as torch's
        bind = "0" if s.threads == 1 else f"0-{s.threads - 1}"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    load = load_average()
    instrument()
    result, cb = run(s, callback=PhaseClock)
    walls = cb.clock.step_times()[s.warmup - 1 :]  # walls[i] is step warmup + i
    steps = [
        breakdown(wall, m, w)
        for wall, m, w in zip(walls, cb.metrics[s.warmup :], cb.wrapped[s.warmup :])
    ]
    wall = statistics.mean(walls)
    mean = {k: statistics.mean(st[k] for st in steps) for k in steps[0]}
    print(
        f"overhead: {s.size if s.workload == 'toy' else s.workload} VLM, engine {s.engine}, "
        f"{s.prompts} prompts x G={s.group}, "
        f"max_new_tokens {max_new_tokens(s)}, beta {s.beta}, {s.updates} update(s), "
        f"{s.threads} thread(s), shared prompt pass {s.share_prompt}, gradient "
        f"checkpointing {s.gradient_checkpointing}, mean of {len(steps)} "
        f"steps after {s.warmup} warm-up; "
        f"load average {load} -> {load_average()}"
    )
    print(f"  {'phase':36s} {'ms/step':>9s} {'share':>7s}")
    for k, v in mean.items():
        print(f"  {k:36s} {v * 1e3:9.1f} {v / wall:7.1%}")
    print(f"  {'step (wall, end to end)':36s} {wall * 1e3:9.1f} {1:7.1%}")
    print(f"everything_else_share {mean['everything else'] / wall:.3f}")
    return {**mean, "wall": wall}


if __name__ == "__main__":
    main()
