"""Export the trained policy as a Hugging Face folder (transformers and vLLM load it directly)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from mapo.console.progress import phase
from mapo.models.sharding import gathered_state_dict, is_sharded

log = logging.getLogger(__name__)


def export_hf(module: Any, processor: Any, out: Path, trainer: pl.Trainer) -> None:
    """Save the policy as a Hugging Face folder that transformers and vLLM load directly.
    Under ZeRO-3 the parameters are gathered from every rank first (collective)."""
    policy = module.policy
    state = None  # not sharded: save_pretrained reads the weights itself
    if is_sharded(policy):
        with gathered_state_dict(policy) as full:
            state = {k: v.detach().cpu().clone() for k, v in full.items()}
    if trainer.global_rank != 0:
        return
    tmp = out.with_name(out.name + ".tmp")
    with phase(f"exporting the policy to {out}"):
        policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        processor.save_pretrained(tmp)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(tmp, out)
