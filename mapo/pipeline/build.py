"""Build what a run needs from its config: data, the policy folder, prompts, scorer, trainer."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mapo.algorithm.config import ConfigError

log = logging.getLogger(__name__)


def make_scorer(cfg: DictConfig):
    """Score every completion with the run's reward kind, `data.task` (validated against the
    reward registry, so a plugin's reward is used by naming it there); a row's `task` column
    names the data's kind (math | emotion) and picks the default prompt template."""
    from mapo.rewards import score_batch

    def scorer(prompts, completions) -> dict[str, Any]:
        kinds = [cfg.data.task] * len(completions.prompt_index)
        answers = [prompts[i].answer for i in completions.prompt_index]
        rb = score_batch(
            kinds,
            completions.text,
            answers,
            format_weight=cfg.reward.format_weight,
            grader=cfg.reward.grader,
            timeout_s=cfg.reward.timeout_s,
            budget_s=cfg.reward.budget_s,
        )
        return {
            "overall": torch.as_tensor(rb.overall, dtype=torch.float64),
            "format": torch.as_tensor(rb.format, dtype=torch.float64),
            "accuracy": torch.as_tensor(rb.accuracy, dtype=torch.float64),
            # counters (summed when DAPO pools several generations): every one is logged
            "timeouts": float(rb.timeouts),
            "errors": float(rb.errors),
            "rejected": float(rb.rejected),
            "pooled": float(rb.pooled),
            "scored": float(len(rb.overall)),
        }

    return scorer


def prepare_data(cfg: DictConfig) -> dict[str, Any]:
    """Generate the synthetic sets if missing; load and validate every split."""
    from mapo.data.loader import load_split, require_rows

    syn = cfg.data.get("synthetic")
    if syn is not None:  # cached: reused when meta.json matches
        from mapo.data.synthetic import write_synthetic

        options = syn.get("options")
        write_synthetic(
            syn.name,
            cfg.data.root,
            seed=syn.seed,
            n_train=syn.n_train,
            n_test=syn.n_test,
            options=OmegaConf.to_container(options, resolve=True) if options else None,
        )
    load = partial(
        load_split, on_bad_row=cfg.data.on_bad_row, max_image_pixels=cfg.data.max_image_pixels
    )
    train = load(cfg.data.train)
    require_rows(train, "data.train", cfg.data.train)
    evals = {
        name: load(path) for name, path in {**cfg.data.in_domain, **cfg.data.out_of_domain}.items()
    }
    for name, split in evals.items():
        require_rows(split, f"evaluation set {name!r}", split.files[0] if split.files else name)
    for name, split in [("train", train), *evals.items()]:
        if split.num_skipped:
            log.warning(
                "data %s: skipped %d bad rows %s", name, split.num_skipped, dict(split.skipped)
            )
    limit = cfg.data.eval_limit
    return {
        "train": list(train.rows),
        "eval": {n: list(s.rows)[:limit] if limit else list(s.rows) for n, s in evals.items()},
        "in_domain": next(iter(cfg.data.in_domain)),
        "skipped": {n: s.num_skipped for n, s in [("train", train), *evals.items()]},
    }


def prepare_model(cfg: DictConfig, data: dict[str, Any]) -> Path:
    """The policy's folder: cfg.model.path, or the tiny model built (and cold-started) offline."""
    if cfg.model.path is not None:
        return Path(cfg.model.path) if os.path.exists(str(cfg.model.path)) else cfg.model.path
    from mapo.models.tiny import tiny_model_path

    base = tiny_model_path(
        Path(cfg.paths.cache_dir),
        seed=cfg.model.seed,
        size=cfg.model.size,
        family=cfg.model.family,
    )
    cs = cfg.model.coldstart
    if not cs.enabled:
        return base
    from mapo.models.coldstart import coldstarted_model_path

    cover = cfg.data.get("coldstart") or {}  # the data's own cold-start coverage (SynthMix)
    sources = cover.get("sources")
    return coldstarted_model_path(
        base,
        data["train"],
        template=cfg.data.template,
        cache_dir=Path(cfg.paths.cache_dir),
        steps=cs.steps,
        batch_size=cs.batch_size,
        lr=cs.lr,
        seed=cfg.seed,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
        sources=None if sources is None else list(sources),
        gold_labels=bool(cover.get("gold_labels", False)),
    )


def to_prompt_fn(cfg: DictConfig, processor: Any):
    from mapo.data.prompts import load_template, to_prompt

    template = load_template(cfg.data.template)
    return partial(
        to_prompt,
        processor=processor,
        template=template,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )


def filter_long(rows: list[dict], to_prompt, processor, limit: int, name: str) -> list[dict]:
    """Drop (never truncate) rows whose prompt exceeds `limit` tokens; log the count."""
    from mapo.data.prompts import filter_prompts_by_tokens

    kept, dropped = filter_prompts_by_tokens(rows, processor, limit, prompt_of=to_prompt)
    if dropped:
        log.warning("data %s: filtered %d prompts longer than %d tokens", name, dropped, limit)
    if not kept:
        raise ConfigError(
            f"data {name}: every prompt is longer than data.max_prompt_tokens={limit}"
        )
    return kept


def build_trainer(
    cfg: DictConfig, callbacks: list, run_dir: Path, updates_per_rollout: int
) -> pl.Trainer:
    """Lightning counts optimizer steps (updates_per_rollout per RL step) under manual
    optimization; `steps` and checkpoint intervals in the config are RL steps."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    extra = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if not c:
            continue
        if name == "model_checkpoint" and c.get("every_n_train_steps"):
            c = OmegaConf.merge(
                c, {"every_n_train_steps": c.every_n_train_steps * updates_per_rollout}
            )
        extra.append(hydra.utils.instantiate(c))
    from mapo.trainer.checkpointing import AtomicCheckpointIO

    trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_steps=cfg.steps * updates_per_rollout,
        logger=loggers or False,
        callbacks=callbacks + extra,
        plugins=[AtomicCheckpointIO()],  # crash-safe last.ckpt
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        _convert_="partial",
    )
    if cfg.model.lora.rank > 0 and hasattr(trainer.strategy, "exclude_frozen_parameters"):
        # DeepSpeed checkpoints keep the adapter only, like the others (docs/lora.md): the
        # frozen base is rebuilt from model.path on resume
        trainer.strategy.exclude_frozen_parameters = True
    return trainer
