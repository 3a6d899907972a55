"""What eval.py runs: one model, the experiment's evaluation sets, a printed table.

Outputs in the run directory: `summary.json` (the metrics.json block under "eval"),
`summary.md` (the paper-style table) and `predictions.parquet` (one row per sample).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mapo.algorithm.config import ConfigError
from mapo.pipeline.build import make_scorer, prepare_data, prepare_model, to_prompt_fn
from mapo.pipeline.run_folder import run_dir_of
from mapo.pipeline.validate import validate
from mapo.rollout import build_engine
from mapo.trainer.evaluation import EvalSets, evaluate

log = logging.getLogger(__name__)


def _load_model(cfg: DictConfig, data: dict[str, Any]) -> tuple[Any, Any, str]:
    """(policy, processor, folder the engine builds from) for cfg.model_to_eval."""
    from mapo.models.loading import load_policy, load_processor

    target = cfg.model_to_eval
    kw = dict(
        dtype=cfg.model.dtype,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        freeze_vision=False,  # nothing trains here, and generation keeps its KV cache
        gradient_checkpointing=False,
    )
    if target is not None and str(target).endswith(".ckpt"):
        if not os.path.exists(target):
            raise ConfigError(
                f"model_to_eval={target}: no such checkpoint; pass "
                "model_to_eval=RUN_DIR/checkpoints/last.ckpt of an existing run"
            )
        from mapo.trainer.checkpointing import AtomicCheckpointIO

        # the training loader: checksum verified, weights_only (data, never code); before the
        # model builds, so a refused file costs nothing
        state = AtomicCheckpointIO().load_checkpoint(target, map_location="cpu")["state_dict"]
        base = prepare_model(cfg, data)
        policy = load_policy(base, **kw)
        policy_state = {
            k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")
        }
        if not policy_state:
            raise ValueError(
                f"{target} holds no 'policy.*' weights; is it a checkpoint of this trainer?"
            )
        policy.load_state_dict(policy_state)
        return policy.eval(), load_processor(base), str(base)
    path = target if target is not None else prepare_model(cfg, data)
    return load_policy(path, **kw).eval(), load_processor(path), str(path)


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    settings = validate(cfg)
    out = run_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg)
    policy, processor, folder = _load_model(cfg, data)
    if cfg.rollout.engine == "vllm" and str(cfg.model_to_eval or "").endswith(".ckpt"):
        raise ValueError(
            "rollout=vllm needs a Hugging Face folder; export the checkpoint first or use rollout=hf"
        )
    engine = build_engine(cfg.rollout.engine, policy, processor, folder, cfg.rollout)
    to_prompt = to_prompt_fn(cfg, processor)
    sets, dropped = EvalSets.build(
        data["in_domain"], data["eval"], to_prompt, processor, cfg.data.max_prompt_tokens
    )
    with torch.no_grad():
        block, preds = evaluate(
            engine,
            sets,
            make_scorer(cfg),
            settings.eval_sampling,
            batch_size=cfg.eval_batch_size,
            keep_predictions=True,
        )
    summary = {
        "eval": block,
        "after": block,
        "config": {
            "experiment_name": f"{cfg.experiment_name} [eval {Path(str(folder)).name}]",
            "estimator": f"eval:{Path(str(folder)).name}",
            "model": str(cfg.model_to_eval or folder),
            "filtered_long_prompts": dropped,
            "sampling": vars(settings.eval_sampling),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.save_predictions and preds:
        import pandas as pd

        pd.DataFrame(preds).to_parquet(out / "predictions.parquet")
    from mapo.analysis.report import load_rows, to_markdown

    (out / "metrics.json").write_text(
        json.dumps(summary, indent=2)
    )  # so `python -m mapo.analysis.report` reads it
    table = to_markdown(load_rows(out, "after", label_by="estimator"))
    (out / "summary.md").write_text(table)
    print(table)
    print(f"A_S={block['A_S']:.4f}  A_T={block['A_T']:.4f}  A_avg={block['A_avg']:.4f}   ({out})")
    return summary
