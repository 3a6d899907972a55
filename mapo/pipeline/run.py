"""What train.py runs: validate the config, build data/model/engine/trainer, fit, export.

The steps live one concern per file: `validate.py` (fail fast), `build.py` (data, model,
prompts, scorer, trainer), `export.py` (the Hugging Face folder).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from mapo.pipeline.build import (
    build_trainer,
    filter_long,
    make_scorer,
    prepare_data,
    prepare_model,
    to_prompt_fn,
)
from mapo.pipeline.export import export_hf
from mapo.pipeline.validate import check_world_size, validate

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one experiment; returns (metrics, objects) so tests can inspect both."""
    from mapo.models.loading import load_policy, load_processor, load_reference
    from mapo.models.processor import policy_suppressed_ids
    from mapo.rollout import build_engine
    from mapo.trainer.callbacks import Evaluation, RolloutCallback
    from mapo.trainer.evaluation import EvalSets
    from mapo.trainer.module import MAPOModule
    from mapo.trainer.prompt_stream import PromptStream
    from mapo.trainer.records import RecordWriter

    plan = validate(cfg)
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = prepare_data(cfg)
    model_path = prepare_model(cfg, data)

    m = cfg.model
    kw = dict(
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code,
    )
    processor = load_processor(model_path)
    policy = load_policy(
        model_path,
        freeze_vision=m.freeze_vision,
        gradient_checkpointing=m.gradient_checkpointing,
        **kw,
    )
    reference = load_reference(model_path, **kw) if plan.algo.needs_reference else None
    to_prompt = to_prompt_fn(cfg, processor)
    train_rows = filter_long(
        data["train"], to_prompt, processor, cfg.data.max_prompt_tokens, "train"
    )
    engine_factory = partial(
        build_engine, cfg.rollout.engine, policy, processor, model_path, cfg.rollout
    )
    scorer = make_scorer(cfg)

    sets, eval_dropped = EvalSets.build(
        data["in_domain"], data["eval"], to_prompt, processor, cfg.data.max_prompt_tokens
    )
    rollout_cb = RolloutCallback(engine_factory, to_prompt, plan.algo, plan.sampling, scorer)
    evaluation = Evaluation(
        rollout_cb, sets, scorer, plan.eval_sampling, run_dir, before=cfg.eval.before, after=cfg.eval.after,
        every_n_steps=cfg.eval.every_n_steps, batch_size=cfg.rollout.eval.batch_size,
        extra={"config": {"experiment_name": cfg.experiment_name, "estimator": plan.algo.estimator,
                          "model_path": str(model_path), "skipped_rows": data["skipped"],
                          "filtered_long_prompts": {"train": len(data["train"]) - len(train_rows),
                                                    **eval_dropped}}},
    )  # fmt: skip
    trainer = build_trainer(cfg, [rollout_cb, evaluation], run_dir, plan.algo.updates_per_rollout)
    check_world_size(plan.algo, trainer.world_size)
    records = RecordWriter(run_dir, rank=trainer.global_rank, with_text=cfg.records_text)
    module = MAPOModule(
        policy, processor, plan.algo, plan.optim, reference=reference, scorer=scorer,
        temperature=plan.sampling.temperature, total_steps=cfg.steps,
        suppress_ids=policy_suppressed_ids(policy, processor), records=records,
        share_prompt=cfg.model.get("share_prompt", True),
        padding_free=cfg.model.get("padding_free", False),
    )  # fmt: skip
    module.stream = PromptStream(
        train_rows, seed=cfg.seed, rank=trainer.global_rank, world_size=trainer.world_size
    )
    steps = torch.utils.data.DataLoader(
        list(range(cfg.steps)), batch_size=1
    )  # step ticks; prompts come from the stream
    trainer.fit(module, train_dataloaders=steps, ckpt_path=_ckpt_path(cfg, run_dir),
                weights_only=True)  # a checkpoint never runs code on load  # fmt: skip

    if cfg.export_hf:
        export_hf(module, processor, run_dir / "hf_model", trainer)
    metrics = _read_metrics(run_dir)
    metrics["train"] = dict(module.last_metrics)
    return metrics, {"module": module, "trainer": trainer, "engine": rollout_cb.engine, "run_dir": run_dir,
                     "model_path": model_path}  # fmt: skip


def _ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
        return None
    return str(last)


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
