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

from mapo.algorithm.config import ConfigError
from mapo.analysis.report_image import finish_report
from mapo.console import filter_warnings
from mapo.pipeline.build import (
    build_trainer,
    filter_long,
    make_scorer,
    prepare_data,
    prepare_model,
    to_prompt_fn,
)
from mapo.pipeline.export import export_hf
from mapo.pipeline.run_identity import (
    IdentityInCheckpoint,
    resolve_resume,
    run_identity,
    write_identity,
)
from mapo.pipeline.validate import check_world_size, run_dir_is_explicit, validate

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one experiment; returns (metrics, objects) so tests can inspect both."""
    filter_warnings()  # also for notebooks and scripts that call train() without train.py
    plan, ckpt_path, identity = _start(cfg)
    run_dir = plan.run_dir
    data = prepare_data(cfg)
    model_path = prepare_model(cfg, data)
    processor, policy, reference = _load_models(cfg, plan, model_path)
    to_prompt = to_prompt_fn(cfg, processor)
    train_rows = filter_long(
        data["train"], to_prompt, processor, cfg.data.max_prompt_tokens, "train"
    )
    rollout_cb, evaluation = _callbacks(cfg, plan, data, model_path, policy, processor,
                                        to_prompt, len(data["train"]) - len(train_rows))  # fmt: skip
    trainer = build_trainer(cfg, [rollout_cb, evaluation, IdentityInCheckpoint(identity)],
                            run_dir, plan.algo.updates_per_rollout)  # fmt: skip
    check_world_size(plan.algo, trainer.world_size)
    module = _module(cfg, plan, trainer, policy, processor, reference, train_rows)
    steps = torch.utils.data.DataLoader(
        list(range(cfg.steps)), batch_size=1
    )  # step ticks; prompts come from the stream
    trainer.fit(module, train_dataloaders=steps, ckpt_path=ckpt_path,
                weights_only=True)  # a checkpoint never runs code on load  # fmt: skip

    if cfg.export_hf:
        out = run_dir / "hf_model"
        export_hf(
            module, processor, out, trainer, base=model_path, merged=cfg.model.lora.export_merged
        )
    if trainer.is_global_zero:  # report.png, also logged to TensorBoard
        finish_report(run_dir, trainer.loggers, step=module.rl_step)
    metrics = _read_metrics(run_dir)
    metrics["train"] = dict(module.last_metrics)
    return metrics, {"module": module, "trainer": trainer, "engine": rollout_cb.engine, "run_dir": run_dir,
                     "model_path": model_path}  # fmt: skip


def _start(cfg: DictConfig):
    """Validate (fail fast), make the run dir, check a resume against the run's identity,
    write that identity and seed everything. Returns (plan, checkpoint to resume, identity)."""
    plan = validate(cfg)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_resume(cfg, plan.run_dir, run_dir_is_explicit(cfg))  # refuses a changed run
    identity = run_identity(cfg)
    write_identity(plan.run_dir, identity)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return plan, ckpt_path, identity


def _load_models(cfg: DictConfig, plan, model_path):
    """(processor, policy, frozen reference or None when kl_coef = 0) from model.*."""
    from mapo.models.loading import load_policy, load_processor, load_reference

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
    lora = m.lora
    if lora.rank > 0:  # the reference is the policy with its adapters off: no second model
        try:  # a target that matches no layer is known only now
            _apply_lora(policy, lora)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return processor, policy, None
    reference = load_reference(model_path, **kw) if plan.algo.needs_reference else None
    return processor, policy, reference


def _apply_lora(policy, lora) -> None:
    from mapo.models.lora import apply_lora

    apply_lora(
        policy,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        vision=lora.vision,
    )


def _callbacks(cfg, plan, data, model_path, policy, processor, to_prompt, long_train: int):
    """The rollout callback (engine, sampling, scorer) and the evaluation callback."""
    from mapo.rollout import build_engine
    from mapo.trainer.callbacks import Evaluation, RolloutCallback
    from mapo.trainer.evaluation import EvalSets

    engine_factory = partial(
        build_engine, cfg.rollout.engine, policy, processor, model_path, cfg.rollout
    )
    scorer = make_scorer(cfg)
    sets, eval_dropped = EvalSets.build(
        data["in_domain"], data["eval"], to_prompt, processor, cfg.data.max_prompt_tokens
    )
    rollout_cb = RolloutCallback(engine_factory, to_prompt, plan.algo, plan.sampling, scorer)
    evaluation = Evaluation(
        rollout_cb, sets, scorer, plan.eval_sampling, plan.run_dir, before=cfg.eval.before, after=cfg.eval.after,
        every_n_steps=cfg.eval.every_n_steps, batch_size=cfg.rollout.eval.batch_size,
        extra={"config": {"experiment_name": cfg.experiment_name, "estimator": plan.algo.estimator,
                          "model_path": str(model_path), "skipped_rows": data["skipped"],
                          "filtered_long_prompts": {"train": long_train, **eval_dropped}}},
    )  # fmt: skip
    return rollout_cb, evaluation


def _module(cfg, plan, trainer, policy, processor, reference, train_rows):
    """The RL module with its rollout records and this rank's prompt stream."""
    from mapo.analysis.records import RecordWriter
    from mapo.models.processor import policy_suppressed_ids
    from mapo.trainer.module import MAPOModule
    from mapo.trainer.prompt_stream import PromptStream

    records = RecordWriter(plan.run_dir, rank=trainer.global_rank, with_text=cfg.records_text)
    module = MAPOModule(
        policy, processor, plan.algo, plan.optim, reference=reference,
        sampling=plan.sampling, total_steps=cfg.steps,
        suppress_ids=policy_suppressed_ids(policy, processor), records=records,
        share_prompt=cfg.model.share_prompt,
        padding_free=cfg.model.padding_free,
    )  # fmt: skip
    module.stream = PromptStream(
        train_rows, seed=cfg.seed, rank=trainer.global_rank, world_size=trainer.world_size
    )
    return module


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
