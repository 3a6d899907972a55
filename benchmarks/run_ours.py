"""Worker: this project's real trainer (`mapo.pipeline.run.train`) on the benchmark settings.

    python -m benchmarks.run_ours '<Settings json>'   (prints one RESULT line)

The step clock is a Lightning callback added through the config (`callbacks.step_clock`), so
`train(cfg)` runs exactly as train.py would; it also keeps each step's `module.last_metrics`
(the per-phase timings time/rollout, time/scoring, time/logprobs, time/update, time/step).
"""

from __future__ import annotations

import sys
import tempfile
import time

import lightning.pytorch as pl

from benchmarks.common import Settings, StepClock, compose, emit, overrides, set_threads, summary


class StepClockCallback(pl.Callback):
    """Ticks at the end of every RL step and keeps that step's trainer metrics."""

    def __init__(self):
        self.clock = StepClock()
        self.metrics: list[dict[str, float]] = []
        self.lengths: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.clock.tick()
        self.metrics.append(dict(module.last_metrics))


def run(
    s: Settings,
    *extra: str,
    callback: type[StepClockCallback] = StepClockCallback,
    callback_kwargs: dict | None = None,
) -> tuple[dict, StepClockCallback]:
    """train(cfg) for `s` with `callback(**callback_kwargs)` (a StepClockCallback subclass) as
    the clock."""
    set_threads(s.threads)
    import torch
    from omegaconf import open_dict

    from mapo.pipeline.run import train

    extra = ("+trainer.enable_progress_bar=false", *shape_overrides(s), *extra)
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as run_dir:
        cfg = compose(overrides(s, run_dir, *extra))
        with open_dict(cfg):
            cfg.callbacks.step_clock = {
                "_target_": f"{callback.__module__}.{callback.__qualname__}",
                **(callback_kwargs or {}),
            }
        start = time.perf_counter()
        metrics, objs = train(cfg)
        total = time.perf_counter() - start
    cb = next(c for c in objs["trainer"].callbacks if isinstance(c, callback))
    result = summary(cb.clock.step_times(), s.warmup, s.prompts * s.group)
    timed = cb.metrics[s.warmup :]
    params = list(objs["module"].policy.parameters())
    result.update(
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        reference_loaded=objs["module"].reference is not None,
        side="ours",
        engine=s.engine,
        share_prompt=s.share_prompt,
        total_s=total,
        threads=torch.get_num_threads(),
        mean_completion_tokens=sum(m["response_length/mean"] for m in timed) / len(timed),
        phases=timed,
    )
    return result, cb


def shape_overrides(s: Settings) -> list[str]:
    """For a shape workload: its folder built, its lengths forced in this process, and the
    overrides that point the trainer at it; nothing for the toy workload."""
    if s.workload == "toy":
        return []
    from benchmarks import shape_setup

    folder = shape_setup.prepare(s)
    table = shape_setup.install(s, folder)
    if s.engine == "vllm" and s.fixed_length:  # the crossover: the engine's own n-sample requests
        shape_setup.force_vllm_length(s.fixed_length)
    elif s.engine == "vllm":  # the drawn lengths, one request per rollout
        shape_setup.force_vllm_lengths(folder, table)
    return shape_setup.our_overrides(s, folder)


def main(s: Settings) -> None:
    result, _ = run(s)
    emit(result)


if __name__ == "__main__":
    main(Settings.from_json(sys.argv[1]) if len(sys.argv) > 1 else Settings())
