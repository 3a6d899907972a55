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
from mapo.pipeline import run_folder
from mapo.pipeline.build import (
    build_trainer,
    filter_long,
    make_scorer,
    prepare_data,
    prepare_model,
    to_prompt_fn,
)
from mapo.pipeline.export import export_hf
from mapo.pipeline.run_folder import run_dir_is_explicit, run_dir_of
from mapo.pipeline.run_identity import (
    IDENTITY_FILE,
    IdentityInCheckpoint,
    folder_holds_this_run,
    resolve_resume,
    run_identity,
    write_identity,
)
from mapo.pipeline.validate import check_world_size, validate

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one experiment; returns (metrics, objects) so tests can inspect both."""
    filter_warnings()  # also for notebooks and scripts that call train() without train.py
    with run_folder.locked(run_dir_of(cfg)):  # one process per run folder
        return _train(cfg)


def _train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    settings, ckpt_path, identity = _start(cfg)
    run_dir = settings.run_dir
    if cfg.trainer.get("deterministic"):
        # Bit-identical reruns: with several intra-op threads the CPU kernels' reduction
        # order depends on how many threads they get, which varies under load; one thread
        # fixes it (Lightning also turns on torch.use_deterministic_algorithms).
        torch.set_num_threads(1)
    data = prepare_data(cfg)
    model_path = prepare_model(cfg, data)
    processor, policy, reference = _load_models(cfg, settings, model_path)
    to_prompt = to_prompt_fn(cfg, processor)
    train_rows = filter_long(
        data["train"], to_prompt, processor, cfg.data.max_prompt_tokens, "train"
    )
    rollout_cb, evaluation = _callbacks(
        cfg,
        settings,
        data,
        model_path,
        policy,
        processor,
        to_prompt,
        len(data["train"]) - len(train_rows),
    )
    trainer = build_trainer(
        cfg,
        [rollout_cb, evaluation, IdentityInCheckpoint(identity)],
        run_dir,
        settings.algo.updates_per_rollout,
    )
    check_world_size(settings.algo, trainer.world_size)
    module = _module(cfg, settings, trainer, policy, processor, reference, train_rows)
    steps = torch.utils.data.DataLoader(
        list(range(cfg.steps)), batch_size=1
    )  # step ticks; prompts come from the stream
    trainer.fit(
        module, train_dataloaders=steps, ckpt_path=ckpt_path, weights_only=True
    )  # a checkpoint never runs code on load

    if cfg.export_hf:
        out = run_dir / "hf_model"
        export_hf(
            module, processor, out, trainer, base=model_path, merged=cfg.model.lora.export_merged
        )
    if trainer.is_global_zero:  # report.png, also logged to TensorBoard
        finish_report(run_dir, trainer.loggers, step=module.rl_step)
    metrics = _read_metrics(run_dir)
    metrics["train"] = dict(module.last_metrics)
    return metrics, {
        "module": module,
        "trainer": trainer,
        "engine": rollout_cb.engine,
        "run_dir": run_dir,
        "model_path": model_path,
    }


def _start(cfg: DictConfig):
    """Validate (fail fast), make the run dir, check a resume against the run's identity,
    write that identity and seed everything. Returns (settings, checkpoint to resume, identity)."""
    try:
        settings = validate(cfg)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = resolve_resume(cfg, settings.run_dir, run_dir_is_explicit(cfg))  # a changed run
        same_run = folder_holds_this_run(cfg, settings.run_dir)
        run_folder.refuse_second_run(
            settings.run_dir, ckpt_path, cfg.ckpt_path, IDENTITY_FILE, same_run
        )
    except Exception:  # the folder keeps describing the run it holds
        run_folder.restore_accepted_config(run_dir_of(cfg))
        raise
    run_folder.save_accepted_config(settings.run_dir)
    identity = run_identity(cfg)
    write_identity(settings.run_dir, identity)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return settings, ckpt_path, identity


def _load_models(cfg: DictConfig, settings, model_path):
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
    reference = load_reference(model_path, **kw) if settings.algo.needs_reference else None
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


def _callbacks(cfg, settings, data, model_path, policy, processor, to_prompt, long_train: int):
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
    rollout_cb = RolloutCallback(
        engine_factory, to_prompt, settings.algo, settings.sampling, scorer
    )
    evaluation = Evaluation(
        rollout_cb,
        sets,
        scorer,
        settings.eval_sampling,
        settings.run_dir,
        before=cfg.eval.before,
        after=cfg.eval.after,
        every_n_steps=cfg.eval.every_n_steps,
        batch_size=cfg.rollout.eval.batch_size,
        extra={
            "config": {
                "experiment_name": cfg.experiment_name,
                "estimator": settings.algo.estimator,
                "model_path": str(model_path),
                "skipped_rows": data["skipped"],
                "filtered_long_prompts": {"train": long_train, **eval_dropped},
            }
        },
    )
    return rollout_cb, evaluation


def _module(cfg, settings, trainer, policy, processor, reference, train_rows):
    """The RL module with its rollout records and this rank's prompt stream."""
    from mapo.analysis.records import RecordWriter
    from mapo.models.processor import policy_suppressed_ids
    from mapo.trainer.module import MAPOModule
    from mapo.trainer.prompt_stream import PromptStream

    records = RecordWriter(settings.run_dir, rank=trainer.global_rank, with_text=cfg.records_text)
    module = MAPOModule(
        policy,
        processor,
        settings.algo,
        settings.optim,
        reference=reference,
        sampling=settings.sampling,
        total_steps=cfg.steps,
        suppress_ids=policy_suppressed_ids(policy, processor),
        records=records,
        share_prompt=cfg.model.share_prompt,
        padding_free=cfg.model.padding_free,
    )
    module.stream = PromptStream(
        train_rows, seed=cfg.seed, rank=trainer.global_rank, world_size=trainer.world_size
    )
    return module


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
