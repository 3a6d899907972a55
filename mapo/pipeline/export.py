"""Export the trained policy as a Hugging Face folder (transformers and vLLM load it directly).

With LoRA (model.lora.rank > 0) the export is the adapter as a peft folder (``hf_adapter``,
beside ``hf_model``) and, when model.lora.export_merged is set, the merged model in ``hf_model``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from mapo.console.progress import phase
from mapo.models.lora import has_lora, lora_scale, merged_state_dict, save_adapter
from mapo.models.sharding import gathered_state_dict, is_sharded

log = logging.getLogger(__name__)


def export_hf(
    module: Any, processor: Any, out: Path, trainer: pl.Trainer, *, base: Any, merged: bool
) -> None:
    """Save the policy as a Hugging Face folder that transformers and vLLM load directly.
    Under ZeRO-3 the parameters are gathered from every rank first (collective). With LoRA:
    the adapter folder for the base model at ``base``, and the merged model if ``merged``."""
    policy = module.policy
    lora = has_lora(policy)
    state = None  # not sharded: save_pretrained reads the weights itself
    if is_sharded(policy):
        with gathered_state_dict(policy) as full:
            state = {k: v.detach().cpu().clone() for k, v in full.items()}
    if trainer.global_rank != 0:
        return
    if lora:
        adapter = out.with_name("hf_adapter")
        with phase(f"exporting the LoRA adapter to {adapter}"):
            _replace(adapter, lambda tmp: _save_adapter(policy, processor, tmp, base, state))
        if not merged:
            return
        full = state if state is not None else policy.state_dict()
        state = merged_state_dict(full, lora_scale(policy))
    with phase(f"exporting the policy to {out}"):
        _replace(out, lambda tmp: _save_model(policy, processor, tmp, state))


def _save_adapter(policy, processor, folder: Path, base, state) -> None:
    save_adapter(policy, folder, base, state)
    processor.save_pretrained(folder)


def _save_model(policy, processor, folder: Path, state) -> None:
    policy.save_pretrained(folder, state_dict=state, safe_serialization=True)
    processor.save_pretrained(folder)


def _replace(out: Path, write) -> None:
    """Write into a temp folder beside ``out``, then put it in place of ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    write(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
