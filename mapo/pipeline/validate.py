"""Fail fast: everything that can be checked without loading a model, checked first.

The one home of the config's rules: `validate` turns the config into typed objects
(`RunSettings`; the dataclasses themselves check nothing) and raises a `ConfigError` or
`FileNotFoundError` that says how to fix the value, within seconds of `python train.py`.
`config_keys.py` is the schema it reads (unknown keys, wrong types).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS
from mapo.algorithm.config import AlgorithmConfig, ConfigError
from mapo.algorithm.loss_config import LossConfig
from mapo.algorithm.losses import KL_ESTIMATORS, LOSS_AGGREGATIONS
from mapo.algorithm.policy_losses import POLICY_LOSSES, policy_loss_error
from mapo.algorithm.rollout_correction import MASKED_IS, MODES, REJECT, TRUNCATE, RolloutCorrection
from mapo.data.prepare import prepare_hint
from mapo.models.loading import check_model_folder
from mapo.pipeline import run_folder
from mapo.pipeline.config_keys import check_known_keys, check_number_types, check_types
from mapo.pipeline.validate_engine import check_engine_settings
from mapo.registry import import_plugins
from mapo.rollout import ENGINES
from mapo.types import OptimConfig, SamplingConfig


@dataclass
class RunSettings:
    """The validated, typed view of a config."""

    algo: AlgorithmConfig
    optim: OptimConfig
    sampling: SamplingConfig
    eval_sampling: SamplingConfig
    run_dir: Path


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


def check_world_size(algo: AlgorithmConfig, world: int) -> None:
    """Every rank takes the same share of prompts, so both batch sizes split evenly."""
    if algo.rollout_batch_size % world or algo.mini_batch_size % world:
        raise ConfigError(
            f"algorithm.rollout_batch_size={algo.rollout_batch_size} and mini_batch_size="
            f"{algo.mini_batch_size} must be multiples of the world size {world} (trainer.devices x "
            "trainer.num_nodes): every rank takes the same share of prompts"
        )


# (key, test, rule): values that would otherwise fail (or silently misbehave) only after the
# model has loaded. Structural rules live in AlgorithmConfig / OptimConfig / LossConfig.
_VALUE_RULES = (
    (
        "rollout.temperature",
        lambda v: v > 0,
        "> 0: training needs G different samples and log-probs divide by it",
    ),
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
    ("data.max_image_pixels", lambda v: v is None or v >= 1, ">= 1, or null for no cap"),
    (
        "model.dtype",
        lambda v: v in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
        "auto, float32, bfloat16 or float16",
    ),
    ("model.share_prompt", lambda v: v is None or isinstance(v, bool), "true or false"),
    ("model.padding_free", lambda v: v is None or isinstance(v, bool), "true or false"),
    ("rollout.share_prefill", lambda v: v is None or isinstance(v, bool), "true or false"),
    ("rollout.sync_bucket_mb", lambda v: v is None or v > 0, "> 0 MB, or null (all at once)"),
    ("eval.every_n_steps", lambda v: v >= 0, ">= 0 (0 disables)"),
    ("callbacks.model_checkpoint.every_n_train_steps", lambda v: v is None or v >= 0, ">= 0"),
    ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32): seeds numpy too"),
)


def _check_values(cfg: DictConfig, algo: AlgorithmConfig) -> None:
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
    check_world_size(algo, world)
    if cfg.ckpt_path not in (None, "last") and not os.path.exists(str(cfg.ckpt_path)):
        raise FileNotFoundError(
            f"checkpoint not found: ckpt_path={cfg.ckpt_path}\n  fix: give an existing .ckpt, "
            "ckpt_path=last (resume in hydra.run.dir) or ckpt_path=null"
        )


def check_algorithm(algo: AlgorithmConfig) -> None:
    """Every rule of the ``algorithm`` block (each message names the value to set)."""
    if algo.estimator not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(
            f"algorithm.estimator={algo.estimator!r} is unknown; known: {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    if algo.std not in ("population", "unbiased"):
        raise ConfigError(f"algorithm.std={algo.std!r}; use 'population' or 'unbiased'")
    if algo.group_size < 2:
        raise ConfigError(
            f"algorithm.group_size={algo.group_size}: group-relative advantages need at least "
            "2 rollouts per prompt (one rollout has nothing to be relative to); the paper uses 12"
        )
    for name in ("rollout_batch_size", "mini_batch_size", "micro_batch_size", "ppo_epochs"):
        if getattr(algo, name) < 1:
            raise ConfigError(f"algorithm.{name}={getattr(algo, name)} must be >= 1")
    if algo.rollout_batch_size % algo.mini_batch_size:
        raise ConfigError(
            f"algorithm.rollout_batch_size={algo.rollout_batch_size} is not a multiple of "
            f"mini_batch_size={algo.mini_batch_size}: each optimizer step must see whole "
            "prompts' groups; e.g. the paper uses 512 and 128"
        )
    if (algo.mini_batch_size * algo.group_size) % algo.micro_batch_size:
        raise ConfigError(
            f"algorithm.micro_batch_size={algo.micro_batch_size} must divide mini_batch_size x "
            f"group_size = {algo.mini_batch_size * algo.group_size} rollouts so every "
            "micro-batch has the same size"
        )
    budget = algo.max_tokens_per_micro_batch
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    ):
        raise ConfigError(
            f"algorithm.max_tokens_per_micro_batch={budget!r} must be a positive integer "
            "(tokens per forward, at least the longest prompt + rollout.max_new_tokens) or null"
        )
    if not 0 <= algo.filter_low < algo.filter_high <= 1:
        raise ConfigError(
            f"algorithm.filter_low/high = {algo.filter_low}/{algo.filter_high} must satisfy "
            "0 <= low < high <= 1 (DAPO keeps groups with mean reward in (0.01, 0.99))"
        )
    if algo.filter_max_tries < 1:
        raise ConfigError("algorithm.filter_max_tries must be >= 1")
    _check_rollout_correction(algo.rollout_correction)
    _check_loss(algo.loss_config())


def _check_loss(loss: LossConfig) -> None:
    """The loss settings' rules (each message names the value to set)."""
    if loss.clip_low <= 0 or loss.clip_high <= 0:
        raise ConfigError(
            f"algorithm.clip_low={loss.clip_low} and clip_high={loss.clip_high} must be "
            "positive; the paper uses 0.2 / 0.2, DAPO 0.2 / 0.28"
        )
    if loss.clip_low >= 1:
        raise ConfigError(f"algorithm.clip_low={loss.clip_low} must be < 1 (the floor is 1 - it)")
    if loss.dual_clip is not None and loss.dual_clip <= 1:
        raise ConfigError(f"algorithm.dual_clip={loss.dual_clip} must be > 1 (verl: 3.0) or null")
    if loss.kl_coef < 0:
        raise ConfigError(f"algorithm.kl_coef={loss.kl_coef} must be >= 0 (0: no KL term)")
    if loss.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(
            f"algorithm.kl_estimator={loss.kl_estimator!r} is unknown; known: {sorted(KL_ESTIMATORS)}"
        )
    if loss.loss_agg not in LOSS_AGGREGATIONS:
        raise ConfigError(
            f"algorithm.loss_agg={loss.loss_agg!r} is unknown; known: {list(LOSS_AGGREGATIONS)}"
        )
    if loss.sapo_tau_pos <= 0 or loss.sapo_tau_neg <= 0:
        raise ConfigError(
            f"algorithm.sapo_tau_pos={loss.sapo_tau_pos} and sapo_tau_neg={loss.sapo_tau_neg} "
            "must be > 0 (the SAPO paper uses 1.0 and 1.05)"
        )
    if loss.policy_loss not in POLICY_LOSSES:
        raise ConfigError(
            f"algorithm: unknown policy_loss {loss.policy_loss!r}; known: {sorted(POLICY_LOSSES)}"
        )
    problem = policy_loss_error(loss.policy_loss, loss.loss_agg, loss.dual_clip)
    if problem is not None:
        raise ConfigError(f"algorithm: {problem}")


def _check_rollout_correction(rc: RolloutCorrection) -> None:
    """algorithm.rollout_correction's rules (docs/rollout_correction.md)."""
    name = "algorithm.rollout_correction"
    if rc.mode not in MODES:
        raise ConfigError(
            f"{name}.mode={rc.mode!r} is unknown; use one of {list(MODES)} "
            "(none disables the correction)"
        )
    if isinstance(rc.cap, bool) or not isinstance(rc.cap, (int, float)) or not rc.cap > 1:
        raise ConfigError(
            f"{name}.cap={rc.cap!r} must be > 1: the weights are min(ratio, C) or the band "
            "[lo, C], and C <= 1 would cut on-policy tokens; verl's default is 2.0, TRL's 3.0"
        )
    if rc.cap_lower is None:
        return
    if rc.mode in TRUNCATE:
        raise ConfigError(
            f"{name}.cap_lower={rc.cap_lower!r} applies to the mask modes "
            f"{list(REJECT + MASKED_IS)}; {rc.mode} truncates from above only (as verl's and "
            "TRL's do): set cap_lower=null"
        )
    low = rc.cap_lower
    if isinstance(low, bool) or not isinstance(low, (int, float)) or not 0 <= low < rc.cap:
        raise ConfigError(
            f"{name}.cap_lower={low!r} must be in [0, cap={rc.cap}) or null (the peer's "
            "default: 1/cap for the verl rejection modes, no lower bound for token_mis / "
            "seq_mis as in TRL)"
        )


def check_lora_values(rank, alpha, dropout, target_modules) -> None:
    """ConfigError naming the ``model.lora`` key unless the values make an adapter."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"model.lora.rank={rank!r} must be an integer >= 0 (0: full fine-tuning)")
    if rank == 0:
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"model.lora.alpha={alpha!r} must be > 0 (the scale is alpha / rank)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.lora.dropout={dropout!r} must be in [0, 1)")
    if isinstance(target_modules, str) or not isinstance(target_modules, Sequence):
        raise ConfigError(
            f"model.lora.target_modules={target_modules!r} must be a list of projection names, "
            "e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
        )
    if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
        raise ConfigError(
            f"model.lora.target_modules={list(target_modules)!r} must name at least one "
            "projection, e.g. [q_proj, v_proj]"
        )


def _lora_optim(lora: DictConfig, optim: OptimConfig) -> OptimConfig:
    """Check model.lora; with adapters on, model.lora.lr (when set) is the optimizer's lr."""
    targets = lora.target_modules
    targets = list(targets) if OmegaConf.is_list(targets) else targets
    check_lora_values(lora.rank, lora.alpha, lora.dropout, targets)
    if not isinstance(lora.vision, bool) or not isinstance(lora.export_merged, bool):
        raise ConfigError("model.lora.vision and model.lora.export_merged must be true or false")
    if lora.rank == 0 or lora.lr is None:
        return optim
    if isinstance(lora.lr, bool) or not isinstance(lora.lr, (int, float)) or lora.lr <= 0:
        raise ConfigError(f"model.lora.lr={lora.lr!r} must be > 0, or null for optim.lr")
    return dataclasses.replace(optim, lr=float(lora.lr))


def check_optim(optim: OptimConfig) -> None:
    if optim.schedule not in ("constant", "cosine"):
        raise ConfigError(f"optim.schedule={optim.schedule!r}; use constant or cosine")
    if optim.impl not in ("torch", "fused"):
        raise ConfigError(f"optim.impl={optim.impl!r}; use torch (any device) or fused (CUDA)")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr={optim.lr} must be > 0 (the paper uses 1e-6)")


def check_model_block(model: DictConfig) -> None:
    """The model folder and its family (``mapo.models.families``), before any model loads: the
    tiny model's ``model.family`` must be a supported family, and a local folder's config.json
    model_type must be one (and the one ``model.family`` names, where it names one)."""
    from mapo.models.families import UnsupportedFamily

    try:
        _check_model_block(model)
    except UnsupportedFamily as err:
        raise ConfigError(str(err)) from None


def _check_model_block(model: DictConfig) -> None:
    from mapo.models.families import family_of, get_family

    if model.path is None and model.name != "tiny":
        raise ConfigError("model.path is null; set model.path=/path/to/model (a local HF folder)")
    if model.family is not None:
        get_family(model.family)
    how = (
        "download Qwen2.5-VL-7B-Instruct to a local folder and pass model.path=/that/folder "
        "(or set MAPO_MODEL_DIR to the folder that contains it)"
    )
    _check_path(model.path, "model folder (model.path)", how)
    if model.path is None or not os.path.isdir(str(model.path)):
        return
    check_model_folder(model.path)  # before the data, with the fix
    found = family_of(model.path)
    if model.family is not None and found is not None and found.model_type != model.family:
        raise ConfigError(
            f"model.family={model.family} but {model.path}/config.json is model_type "
            f"{found.model_type}. Fix: model.family={found.model_type} (or model.family=null)"
        )


def _check_data_files(cfg: DictConfig) -> None:
    """The data files exist (each message names its own converter)."""
    if cfg.data.get("synthetic") is None:
        # each set's hint names its own converter (a missing MathVision set is told `prepare mathvision`)
        _check_path(cfg.data.train, "training data (data.train)", prepare_hint(cfg.data.name))
        for name, path in {**cfg.data.in_domain, **cfg.data.out_of_domain}.items():
            _check_path(path, f"evaluation set {name!r}", prepare_hint(name))


def validate(cfg: DictConfig) -> RunSettings:
    """Fail fast, before any model or dataset loads."""
    import_plugins(cfg.plugins)  # first: plugins add names the checks below look up
    check_known_keys(OmegaConf.to_container(cfg, resolve=False))  # `+rollout.temprature=0.5`
    check_types(AlgorithmConfig, OmegaConf.to_container(cfg.algorithm, resolve=True), "algorithm")
    check_types(OptimConfig, OmegaConf.to_container(cfg.optim, resolve=True), "optim")
    check_number_types(lambda key: OmegaConf.select(cfg, key, default="<absent>"))
    algo = AlgorithmConfig.from_dict(OmegaConf.to_container(cfg.algorithm, resolve=True))
    check_algorithm(algo)
    optim = OptimConfig(**{k: (tuple(v) if k == "betas" else v) for k, v in cfg.optim.items()})
    optim = _lora_optim(cfg.model.lora, optim)
    check_optim(optim)
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
    if not cfg.data.in_domain:
        raise ConfigError("data.in_domain is empty; name at least one evaluation set: NAME: PATH")
    if cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps} must be >= 1")
    _check_values(cfg, algo)
    from mapo.data.prompts import load_template

    load_template(cfg.data.template)  # raises naming the known templates
    check_model_block(cfg.model)
    _check_data_files(cfg)
    check_engine_settings(cfg)  # after the paths: a missing model is the first thing to fix
    r = cfg.rollout
    # seed=None: training rollouts draw from the global RNG (seeded once, saved in checkpoints),
    # so every step gets fresh noise and a resumed run continues the same random stream.
    sampling = SamplingConfig(
        n=algo.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        seed=None,
    )
    ev = r.eval
    eval_sampling = SamplingConfig(
        n=1,
        temperature=ev.temperature,
        top_p=ev.top_p,
        max_new_tokens=ev.max_new_tokens,
        seed=cfg.seed,
    )
    return RunSettings(algo, optim, sampling, eval_sampling, run_folder.run_dir_of(cfg))
