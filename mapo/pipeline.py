"""What train.py runs: validate the config, build data/model/engine, fit, export.

Everything that can be checked without loading a model is checked first (`validate`), so a
bad config or a missing path fails within seconds with a message that says how to fix it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mapo.config import AlgorithmConfig, ConfigError
from mapo.module import OptimConfig
from mapo.rollout import ENGINES
from mapo.rollout.base import SamplingConfig

log = logging.getLogger(__name__)
_HUB_NAME = "org/name"


@dataclass
class Plan:
    """The validated, typed view of a config."""

    algo: AlgorithmConfig
    optim: OptimConfig
    sampling: SamplingConfig
    eval_sampling: SamplingConfig
    run_dir: Path


def run_dir_of(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _check_path(value: Any, what: str, how: str) -> None:
    if value is None:
        return
    p = str(value)
    looks_like_hub = (
        p.count("/") == 1 and not p.startswith((".", "/", "~")) and not os.path.exists(p)
    )
    if looks_like_hub and not os.environ.get("HF_HUB_OFFLINE"):
        return  # a hub name on a machine that can reach the hub
    if not any(ch in p for ch in "*?[") and not os.path.exists(p):
        raise FileNotFoundError(f"{what} not found: {p}\n  fix: {how}")


# (key, test, rule): values that would otherwise fail (or silently misbehave) only after the
# model has loaded. Structural rules live in AlgorithmConfig / OptimConfig / LossConfig.
_VALUE_RULES = (
    ("rollout.temperature", lambda v: v > 0, "> 0: training needs G different samples and "
     "log-probs divide by it"),
    ("rollout.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("rollout.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("rollout.eval.temperature", lambda v: v >= 0, ">= 0 (0 is greedy)"),
    ("rollout.eval.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("rollout.eval.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("rollout.eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("algorithm.eps", lambda v: v >= 0, ">= 0 (the paper's worked numbers use 0; default 1e-6)"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.grad_clip", lambda v: v is None or v > 0, "> 0, or null for no clipping"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("reward.grader", lambda v: v in ("mathruler", "math_verify"), "mathruler or math_verify"),
    ("reward.timeout_s", lambda v: v > 0, "> 0 seconds"),
    ("reward.budget_s", lambda v: v > 0, "> 0 seconds"),
    ("data.on_bad_row", lambda v: v in ("error", "skip"), "error or skip"),
    ("data.max_prompt_tokens", lambda v: v >= 1, ">= 1 (longer prompts are dropped, not cut)"),
    ("data.eval_limit", lambda v: v is None or v >= 0, "null (every row) or >= 0"),
    ("data.min_pixels", lambda v: 1 <= v, ">= 1"),
    ("data.max_pixels", lambda v: v >= 1, ">= data.min_pixels"),
    ("model.dtype", lambda v: v in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16",
     "fp16"), "auto, float32, bfloat16 or float16"),
    ("model.share_prompt", lambda v: v is None or isinstance(v, bool), "true or false"),
    ("rollout.share_prefill", lambda v: v is None or isinstance(v, bool), "true or false"),
    ("rollout.sync_bucket_mb", lambda v: v is None or v > 0, "> 0 MB, or null (all at once)"),
    ("eval.every_n_steps", lambda v: v >= 0, ">= 0 (0 disables)"),
    ("callbacks.model_checkpoint.every_n_train_steps", lambda v: v is None or v >= 0, ">= 0"),
    ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32): seeds numpy too"),
)  # fmt: skip


def _check_values(cfg: DictConfig) -> None:
    for key, ok, rule in _VALUE_RULES:
        value = OmegaConf.select(cfg, key, default=None)
        try:
            good = ok(value) and not (key == "data.max_pixels" and value < cfg.data.min_pixels)
        except TypeError:  # None or a string where a number belongs
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} must be {rule}")
    t = cfg.trainer
    ints = all(isinstance(x, int) for x in (t.devices, t.num_nodes))
    world = t.devices * t.num_nodes if ints else 1  # "auto": checked again once the trainer exists
    a = cfg.algorithm
    if a.rollout_batch_size % world or a.mini_batch_size % world:
        raise ConfigError(
            f"algorithm.rollout_batch_size={a.rollout_batch_size} and mini_batch_size="
            f"{a.mini_batch_size} must be multiples of the world size {world} (trainer.devices x "
            "trainer.num_nodes): every rank takes the same share of prompts"
        )
    if cfg.ckpt_path not in (None, "last") and not os.path.exists(str(cfg.ckpt_path)):
        raise FileNotFoundError(
            f"checkpoint not found: ckpt_path={cfg.ckpt_path}\n  fix: give an existing .ckpt, "
            "ckpt_path=last (resume in hydra.run.dir) or ckpt_path=null"
        )


def validate(cfg: DictConfig) -> Plan:
    """Fail fast, before any model or dataset loads."""
    algo = AlgorithmConfig.from_dict(OmegaConf.to_container(cfg.algorithm, resolve=True))
    optim = OptimConfig(**{k: (tuple(v) if k == "betas" else v) for k, v in cfg.optim.items()})
    if cfg.rollout.engine not in ENGINES:
        raise ConfigError(
            f"rollout.engine={cfg.rollout.engine!r} is unknown; known: {sorted(ENGINES)}"
        )
    from mapo.rewards import known_kinds

    if cfg.data.task not in known_kinds():
        raise ConfigError(
            f"data.task={cfg.data.task!r} has no reward; known: {sorted(known_kinds())}"
        )
    if not 0 <= cfg.reward.format_weight <= 1:
        raise ConfigError(
            f"reward.format_weight={cfg.reward.format_weight} must be in [0, 1]: APD/MAPO divide by "
            "the group mean and need non-negative rewards"
        )
    if cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps} must be >= 1")
    _check_values(cfg)
    from mapo.data.prompts import load_template

    load_template(cfg.data.template)  # raises naming the known templates
    if cfg.model.path is None and cfg.model.name != "tiny":
        raise ConfigError("model.path is null; set model.path=/path/to/model (a local HF folder)")
    _check_path(cfg.model.path, "model folder (model.path)",
                "download Qwen2.5-VL-7B-Instruct to a local folder and pass model.path=/that/folder "
                "(or set MAPO_MODEL_DIR to the folder that contains it)")  # fmt: skip
    if cfg.data.get("synthetic") is None:
        how = (f"prepare it with `python -m mapo.data.prepare {cfg.data.name} --src RAW --out DIR` and "
               "pass data.root=DIR's parent (or set MAPO_DATA_DIR); see docs/data.md")  # fmt: skip
        _check_path(cfg.data.train, "training data (data.train)", how)
        for name, path in {**cfg.data.in_domain, **cfg.data.out_of_domain}.items():
            _check_path(path, f"evaluation set {name!r}", how)
    r = cfg.rollout
    # seed=None: training rollouts draw from the global RNG (seeded once, saved in checkpoints),
    # so every step gets fresh noise and a resumed run continues the same random stream.
    sampling = SamplingConfig(n=algo.group_size, temperature=r.temperature, top_p=r.top_p,
                              max_new_tokens=r.max_new_tokens, seed=None)  # fmt: skip
    ev = r.eval
    eval_sampling = SamplingConfig(n=1, temperature=ev.temperature, top_p=ev.top_p,
                                   max_new_tokens=ev.max_new_tokens, seed=cfg.seed)  # fmt: skip
    return Plan(algo, optim, sampling, eval_sampling, run_dir_of(cfg))


def make_scorer(cfg: DictConfig):
    from mapo.rewards import score_batch

    def scorer(prompts, completions) -> dict[str, Any]:
        kinds = [prompts[i].task for i in completions.prompt_index]
        answers = [prompts[i].answer for i in completions.prompt_index]
        rb = score_batch(kinds, completions.text, answers, format_weight=cfg.reward.format_weight,
                         grader=cfg.reward.grader, timeout_s=cfg.reward.timeout_s,
                         budget_s=cfg.reward.budget_s)  # fmt: skip
        return {
            "overall": torch.as_tensor(rb.overall, dtype=torch.float64),
            "format": torch.as_tensor(rb.format, dtype=torch.float64),
            "accuracy": torch.as_tensor(rb.accuracy, dtype=torch.float64),
            "timeouts": float(rb.timeouts), "errors": float(rb.errors),
        }  # fmt: skip

    return scorer


def prepare_data(cfg: DictConfig) -> dict[str, Any]:
    """Generate the synthetic sets if missing; load and validate every split."""
    from mapo.data.loader import load_split

    syn = cfg.data.get("synthetic")
    if syn is not None:  # cached: reused when meta.json matches
        from mapo.data.synthetic import write_synthetic

        write_synthetic(
            syn.name, cfg.data.root, seed=syn.seed, n_train=syn.n_train, n_test=syn.n_test
        )
    load = partial(load_split, on_bad_row=cfg.data.on_bad_row)
    train = load(cfg.data.train)
    evals = {
        name: load(path) for name, path in {**cfg.data.in_domain, **cfg.data.out_of_domain}.items()
    }
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

    base = tiny_model_path(Path(cfg.paths.cache_dir), seed=cfg.model.seed, size=cfg.model.size)
    cs = cfg.model.coldstart
    if not cs.enabled:
        return base
    from mapo.models.coldstart import coldstarted_model_path

    return coldstarted_model_path(
        base, data["train"], template=cfg.data.template, cache_dir=Path(cfg.paths.cache_dir),
        steps=cs.steps, batch_size=cs.batch_size, lr=cs.lr, seed=cfg.seed,
        min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
    )  # fmt: skip


def _to_prompt_fn(cfg: DictConfig, processor: Any):
    from mapo.data.prompts import load_template, to_prompt

    template = load_template(cfg.data.template)
    return partial(to_prompt, processor=processor, template=template,
                   min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)  # fmt: skip


def _filter_long(rows: list[dict], to_prompt, processor, limit: int, name: str) -> list[dict]:
    """Drop (never truncate) rows whose prompt exceeds `limit` tokens; log the count."""
    from mapo.data.prompts import count_prompt_tokens

    kept = [r for r in rows if count_prompt_tokens(to_prompt(r), processor) <= limit]
    if len(kept) < len(rows):
        log.warning(
            "data %s: filtered %d prompts longer than %d tokens", name, len(rows) - len(kept), limit
        )
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
    from mapo.checkpointing import AtomicCheckpointIO

    return hydra.utils.instantiate(
        cfg.trainer, max_steps=cfg.steps * updates_per_rollout, logger=loggers or False,
        callbacks=callbacks + extra, plugins=[AtomicCheckpointIO()],  # crash-safe last.ckpt
        default_root_dir=str(run_dir), use_distributed_sampler=False, _convert_="partial",
    )  # fmt: skip


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one experiment; returns (metrics, objects) so tests can inspect both."""
    from mapo.callbacks import Evaluation, RolloutCallback
    from mapo.evaluation import EvalSets
    from mapo.models.loading import load_policy, load_processor, load_reference
    from mapo.module import MAPOModule
    from mapo.prompt_stream import PromptStream
    from mapo.records import RecordWriter
    from mapo.rollout import build_engine

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
    to_prompt = _to_prompt_fn(cfg, processor)
    train_rows = _filter_long(
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
    if (
        plan.algo.rollout_batch_size % trainer.world_size
        or plan.algo.mini_batch_size % trainer.world_size
    ):
        raise ConfigError(
            f"algorithm.rollout_batch_size={plan.algo.rollout_batch_size} and mini_batch_size="
            f"{plan.algo.mini_batch_size} must be multiples of the world size {trainer.world_size}"
        )
    records = RecordWriter(run_dir, rank=trainer.global_rank, with_text=cfg.records_text)
    module = MAPOModule(
        policy, processor, plan.algo, plan.optim, reference=reference, scorer=scorer,
        temperature=plan.sampling.temperature, total_steps=cfg.steps,
        suppress_ids=_suppress_ids(policy, processor), records=records,
        share_prompt=cfg.model.get("share_prompt", True),
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


def _suppress_ids(policy: Any, processor: Any) -> list[int]:
    """Token ids the engines never sample (vision pads and other specials but eos, unused
    vocabulary rows), computed as the engines do; the training log-probs mask the same ids so
    both sides see the same distribution."""
    from mapo.models.processor import suppressed_token_ids

    tok = getattr(processor, "tokenizer", processor)
    eos = policy.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [tok.eos_token_id])
    vocab = policy.get_output_embeddings().weight.shape[0]
    return suppressed_token_ids(tok, eos_token_ids=eos, vocab_size=vocab)


def _ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
        return None
    return str(last)


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def export_hf(module: Any, processor: Any, out: Path, trainer: pl.Trainer) -> None:
    """Save the policy as a Hugging Face folder that transformers and vLLM load directly.
    Under ZeRO-3 the parameters are gathered from every rank first (collective)."""
    policy = module.policy
    params = list(policy.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    else:
        state = None
    if trainer.global_rank != 0:
        return
    tmp = out.with_name(out.name + ".tmp")
    policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    processor.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("exported the policy to %s", out)
