"""What one RL step logs: the scalars (TensorBoard / every logger, x-axis = RL step), the
histograms (certainty, advantages, sampler/trainer log-ratios) and the rollout records."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mapo.algorithm.advantages import AdvantageResult, is_success
from mapo.types import RolloutBatch


def log_step(
    module: Any,  # the MAPOModule
    rollouts: RolloutBatch,
    advantages: AdvantageResult,
    update: dict[str, float],
    timings: dict[str, float],
    mismatch: Any = None,  # rollout_correction.StepMismatch, when the engine gave log-probs
) -> None:
    """Log the step's metrics and records; keeps the scalars in ``module.last_metrics``."""
    lengths = torch.tensor([len(x) for x in rollouts.completions.token_ids])
    truncated = torch.tensor(rollouts.completions.truncated)
    metrics, hists = step_metrics(module, rollouts, advantages, update, timings, lengths)
    module.last_metrics = metrics
    step = rollouts.step
    if module.global_rank == 0:  # x-axis = RL step (module.log would use optimizer steps)
        named = {f"train/{k}" if "/" not in k else k: v for k, v in metrics.items()}
        for logger in module.loggers:
            logger.log_metrics(named, step=step)
    hists["certainty/lambda"] = advantages.stats.lam.float()
    hists["certainty/p"] = advantages.stats.p.float()
    hists["advantage/values"] = advantages.advantages.float()
    if mismatch is not None:
        hists["mismatch/log_ratio"] = mismatch.log_ratio
    log_histograms(module, hists, step)
    if module.records is not None:
        write_records(module, rollouts, advantages, lengths, truncated, mismatch)


def step_metrics(
    module: Any,
    rollouts: RolloutBatch,
    advantages: AdvantageResult,
    update: dict[str, float],
    timings: dict[str, float],
    lengths: Tensor,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """(scalars, histograms) of the step: rewards and their counters, advantages, responses,
    the update's actor/* means, the learning rate, rollout metrics and timings."""
    from mapo.analysis.mechanism import mechanism_metrics
    from mapo.analysis.metrics import advantage_metrics, response_metrics, reward_metrics
    from mapo.models.logprobs import route_fallbacks

    rewards = rollouts.rewards
    truncated = torch.tensor(rollouts.completions.truncated)
    metrics: dict[str, float] = {}
    metrics.update(reward_metrics(rewards["overall"], rewards["format"], rewards["accuracy"]))
    metrics["reward/success_rate"] = float(is_success(rewards["overall"]).float().mean())
    for k in ("timeouts", "errors", "rejected", "pooled"):
        if k in rewards:
            metrics[f"reward/{k}"] = float(rewards[k])
    if rewards.get("scored"):
        metrics["reward/pooled_frac"] = float(rewards.get("pooled", 0.0)) / float(rewards["scored"])
    scalars, hists = _split_hists(advantage_metrics(advantages))
    metrics.update(scalars)
    # what the estimator assigns per certainty bucket, and what GRPO would on the same rewards
    metrics.update(
        mechanism_metrics(
            advantages,
            rewards["overall"],
            rollouts.group_ids,
            rewards["accuracy"],
            eps=module.algo.eps,
            std=module.algo.std,
        )
    )
    metrics.update(response_metrics(lengths, truncated, None))
    metrics.update({f"actor/{k}": v for k, v in update.items()})
    metrics["actor/lr"] = float(module.optimizers().param_groups[0]["lr"])
    metrics.update(rollouts.metrics)
    metrics.update(timings)
    metrics.update(route_fallbacks())  # empty unless a family took the plain route
    return metrics, hists


def write_records(
    module: Any,
    rollouts: RolloutBatch,
    advantages: AdvantageResult,
    lengths: Tensor,
    truncated: Tensor,
    mismatch: Any,
) -> None:
    """One rollout-records file for the step (mapo/analysis/records.py)."""
    from mapo.analysis.records import records_table

    prompts = [rollouts.prompts[i] for i in rollouts.completions.prompt_index]
    table = records_table(
        step=rollouts.step,
        group_ids=rollouts.group_ids,
        rewards=rollouts.rewards,
        result=advantages,
        prompt_ids=[p.uid for p in prompts],
        sources=[p.source for p in prompts],
        estimator=module.algo.estimator,
        response_lengths=lengths,
        truncated=truncated,
        std=module.algo.std,
        eps=module.algo.eps,
        texts=rollouts.completions.text if module.records.with_text else None,
        logprob_sums=mismatch.seq_logprobs() if mismatch is not None else None,
    )
    module.records.write(rollouts.step, table)


def log_histograms(module: Any, hists: dict[str, Tensor], step: int) -> None:
    logger = module.logger
    writer = getattr(logger, "experiment", None) if logger is not None else None
    if writer is None or not hasattr(writer, "add_histogram") or module.global_rank != 0:
        return
    for name, values in hists.items():
        if values.numel():
            writer.add_histogram(name, values.detach().cpu(), global_step=step)


def _split_hists(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, Tensor]]:
    scalars, hists = {}, {}
    for k, v in metrics.items():
        if isinstance(v, Tensor) and v.numel() > 1:
            hists[k] = v
        else:
            scalars[k] = float(v)
    return scalars, hists
