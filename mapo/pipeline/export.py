"""Export the trained policy as a Hugging Face folder (transformers and vLLM load it directly)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


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
