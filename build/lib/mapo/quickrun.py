"""Compose a Hydra config and run the pipeline from Python (notebooks, tests, benchmarks).

from mapo.quickrun import compose_config, run
metrics, objs = run(["experiment=synth_emo_grpo", "steps=20"], run_dir="outputs/my_run")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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
    from mapo.pipeline import train

    return train(compose_config(overrides, run_dir=run_dir))
