"""Compose a Hydra config and run the pipeline from Python (notebooks, tests, benchmarks).

from mapo.pipeline.quickrun import compose_config, run
metrics, objs = run(["experiment=synth_emo_grpo", "steps=20"], run_dir="outputs/my_run")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_LOAD_KEYS = ("dtype", "attn_implementation", "trust_remote_code")  # model.*, both loaders'


def compose_config(
    overrides: Sequence[str] = (), *, run_dir: str | Path | None = None, config_name: str = "config"
) -> DictConfig:
    """The config `python train.py OVERRIDES` would see; `run_dir` replaces Hydra's run dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve
    return cfg


def run(
    overrides: Sequence[str] = (), *, run_dir: str | Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train like `python train.py OVERRIDES hydra.run.dir=RUN_DIR`; returns (metrics, objects)."""
    from mapo.pipeline.run import train

    return train(compose_config(overrides, run_dir=run_dir))


def algorithm_config(name: str = "mapo", **changes: Any):
    """``AlgorithmConfig`` of ``conf/algorithm/<name>.yaml`` with ``changes`` applied (tests,
    benchmarks, notebooks: the YAML is the one home of the defaults)."""
    from mapo.algorithm.config import AlgorithmConfig
    from mapo.pipeline.validate import check_algorithm

    algo = AlgorithmConfig.from_dict({**_yaml(f"algorithm/{name}.yaml"), **changes})
    check_algorithm(algo)
    return algo


def optim_config(**changes: Any):
    """``OptimConfig`` of ``conf/optim/adamw.yaml`` with ``changes`` applied."""
    from mapo.pipeline.validate import check_optim
    from mapo.types import OptimConfig

    values = {**_yaml("optim/adamw.yaml"), **changes}
    optim = OptimConfig(**{**values, "betas": tuple(values["betas"])})
    check_optim(optim)
    return optim


def lora_config(**changes: Any) -> dict[str, Any]:
    """The ``model.lora`` block of ``conf/model/tiny.yaml`` with ``changes`` applied: the
    keyword arguments of ``mapo.models.lora.apply_lora`` (lr and export_merged left out)."""
    block = {**_yaml("model/tiny.yaml")["lora"], **changes}
    return {k: block[k] for k in ("rank", "alpha", "dropout", "target_modules", "vision")}


def tiny_model_args(**changes: Any) -> dict[str, Any]:
    """``seed``, ``size`` and ``family`` of ``conf/model/tiny.yaml`` with ``changes`` applied:
    the keyword arguments of ``mapo.models.tiny.tiny_model_path`` / ``build_tiny_vlm``."""
    block = {**_yaml("model/tiny.yaml"), **changes}
    return {k: block[k] for k in ("seed", "size", "family")}


def model_load_args(**changes: Any) -> dict[str, Any]:
    """``dtype``, ``attn_implementation``, ``trust_remote_code``, ``freeze_vision`` and
    ``gradient_checkpointing`` of ``conf/model/tiny.yaml`` with ``changes`` applied: the keyword
    arguments of ``mapo.models.loading.load_policy``."""
    block = {**_yaml("model/tiny.yaml"), **changes}
    return {k: block[k] for k in (*_LOAD_KEYS, "freeze_vision", "gradient_checkpointing")}


def reference_load_args(**changes: Any) -> dict[str, Any]:
    """``dtype``, ``attn_implementation`` and ``trust_remote_code`` of ``conf/model/tiny.yaml``
    with ``changes`` applied: the keyword arguments of ``mapo.models.loading.load_reference``."""
    block = {**_yaml("model/tiny.yaml"), **changes}
    return {k: block[k] for k in _LOAD_KEYS}


def reward_args(**changes: Any) -> dict[str, Any]:
    """``conf/reward/default.yaml`` (format_weight, grader, timeout_s, budget_s) with
    ``changes`` applied: the keyword arguments of ``mapo.rewards.score`` / ``score_batch``."""
    block = {**_yaml("reward/default.yaml"), **changes}
    return {k: block[k] for k in ("format_weight", "grader", "timeout_s", "budget_s")}


def pixel_args(data: str, **changes: Any) -> dict[str, Any]:
    """``min_pixels`` and ``max_pixels`` of ``conf/data/<data>.yaml`` with ``changes``
    applied: the keyword arguments of ``mapo.data.prompts.to_prompt`` and the cold start."""
    return {**_data_keys(data, "min_pixels", "max_pixels"), **changes}


def synthetic_args(data: str, **changes: Any) -> dict[str, Any]:
    """``seed``, ``n_train`` and ``n_test`` of ``data.synthetic`` in ``conf/data/<data>.yaml``
    with ``changes`` applied: keyword arguments of ``mapo.data.synthetic.write_synthetic``."""
    block = _data_keys(data, "synthetic")["synthetic"]
    return {**{k: block[k] for k in ("seed", "n_train", "n_test")}, **changes}


def vllm_engine_args(**changes: Any) -> dict[str, Any]:
    """``VLLMEngine``'s keyword arguments from ``conf/rollout/vllm.yaml`` (``seed`` from the
    root config) with ``changes`` applied."""
    from mapo.rollout import vllm_engine_args as from_rollout

    return {**from_rollout(compose_config(["rollout=vllm"]).rollout), **changes}


def _yaml(path: str) -> dict[str, Any]:
    """A config group file with its defaults list merged in first (``- mapo``, ``_self_``)."""
    from omegaconf import OmegaConf

    block = OmegaConf.to_container(OmegaConf.load(CONF_DIR / path), resolve=True)
    merged: dict[str, Any] = {}
    folder = path.rsplit("/", 1)[0]
    for base in block.pop("defaults", []):
        if base != "_self_":
            merged.update(_yaml(f"{folder}/{base}.yaml"))
    return {**merged, **block}


def _data_keys(data: str, *keys: str) -> dict[str, Any]:
    """``keys`` of ``conf/data/<data>.yaml``, read without resolving the file's paths (they
    interpolate the root config)."""
    from omegaconf import OmegaConf

    block = OmegaConf.load(CONF_DIR / f"data/{data}.yaml")
    return OmegaConf.to_container(OmegaConf.masked_copy(block, list(keys)))
