"""A run's identity: the settings that change what a training step computes. A resume compares
the checkpoint's identity with the current config before any model loads and refuses a change.

Resuming with another estimator, batch size, G or seed would continue the checkpoint's weights
under other rules: metrics.json would name the new estimator, the records would mix steps of
different sizes, and a new seed would rebuild the cold start and the KL reference from another
model. So a difference is an error that names each key with its old and new value, unless the
user lists the key in `resume.allow_changed` (conf/config.yaml).

Not part of the identity (free to change on resume): `steps` (grow it to extend a run; but with
`optim.schedule=cosine` the decay spans `steps`, so there it is compared too), logging,
evaluation and checkpoint intervals, paths other than the data and model, `records_text`,
`export_hf`, and speed knobs that leave the maths alone (attention kernel, gradient
checkpointing, shared prompt/prefill, the rollout engine's memory settings) and the memory-only
micro-batch knobs `algorithm.micro_batch_size` and `algorithm.max_tokens_per_micro_batch`
(lowering them after running out of memory is the usual fix; the update is the same sum).
Every other `algorithm.*` key is compared.

Where the identity lives: inside every checkpoint (`checkpoint["run_identity"]`, by
`IdentityInCheckpoint`), in the checkpoint's sha256 sidecar (so reading it needs no
`torch.load`), and in `<run dir>/run_identity.json` (for DeepSpeed checkpoint folders, which
have no sidecar).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from mapo.algorithm.config import ConfigError
from mapo.atomic import atomic_write
from mapo.trainer.checkpoint_integrity import try_read_sidecar

log = logging.getLogger(__name__)

IDENTITY_FILE = "run_identity.json"
# Config subtrees (or single keys) whose value changes what a step computes.
IDENTITY_KEYS = (
    "seed",
    "algorithm",
    "optim",
    "reward",
    "model.name",
    "model.path",
    "model.size",
    "model.family",
    "model.seed",
    "model.dtype",
    "model.freeze_vision",
    "model.coldstart",
    "model.lora.rank",
    "model.lora.alpha",
    "model.lora.dropout",
    "model.lora.target_modules",
    "model.lora.vision",
    "model.lora.lr",
    "data.name",
    "data.task",
    "data.template",
    "data.train",
    "data.synthetic",
    "data.on_bad_row",
    "data.max_prompt_tokens",
    "data.min_pixels",
    "data.max_pixels",
    "data.max_image_pixels",
    "rollout.engine",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.max_new_tokens",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.precision",
)
# Inside IDENTITY_KEYS but memory only: how a step's rows are split, not what it computes.
MEMORY_KEYS = ("algorithm.micro_batch_size", "algorithm.max_tokens_per_micro_batch")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: resolved value} for every identity key present in `cfg` (JSON-able)."""
    out: dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        node = OmegaConf.select(cfg, key, default=None)
        if node is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        _flatten(key, value, out)
    for key in MEMORY_KEYS:
        out.pop(key, None)
    if OmegaConf.select(cfg, "optim.schedule", default=None) == "cosine":
        out["steps"] = cfg.steps  # the decay spans `steps`: extending it changes past-step LRs
    return json.loads(json.dumps(out, default=str))  # tuples -> lists, as they come back


def stored_identity(ckpt: Path) -> dict[str, Any] | None:
    """The identity saved with checkpoint `ckpt`: its sidecar, else its run dir's file, else
    the checkpoint itself (read weights-only and memory-mapped: no code runs, no copy)."""
    if ckpt.is_file():
        meta = try_read_sidecar(ckpt)  # the loader refuses a damaged one later
        if meta and isinstance(meta.get("run_identity"), dict):
            return meta["run_identity"]
    path = ckpt.resolve().parent.parent / IDENTITY_FILE  # <run dir>/checkpoints/<ckpt>
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    return _identity_inside(ckpt) if ckpt.is_file() else None


def _identity_inside(ckpt: Path) -> dict[str, Any] | None:
    import torch

    try:
        found = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: the loader names the file and the fix
        return None
    identity = found.get("run_identity") if isinstance(found, dict) else None
    return identity if isinstance(identity, dict) else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for keys both identities have and that differ. A key only one side has
    (a setting added or removed by a code update) is not a difference."""
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}


def _allowed(key: str, allow: list[str]) -> bool:
    return any(a == "*" or key == a or key.startswith(a + ".") for a in allow)


def check_resume(cfg: DictConfig, ckpt: Path) -> None:
    """Raise ConfigError if `ckpt` was saved by a run whose identity differs from `cfg`'s in a
    key that `resume.allow_changed` does not list."""
    old = stored_identity(ckpt)
    if old is None:
        log.warning("checkpoint %s carries no run identity: the config cannot be compared", ckpt)
        return
    allow = list(OmegaConf.select(cfg, "resume.allow_changed", default=None) or [])
    diff = differences(old, run_identity(cfg))
    refused = {k: v for k, v in diff.items() if not _allowed(k, allow)}
    if diff and not refused:
        log.warning("resuming %s with changed settings (resume.allow_changed): %s", ckpt, diff)
        return
    if refused:
        lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"ckpt_path={ckpt} was saved by a run with other settings ({lines}). Resuming would "
            "mix two runs in one folder (records, metrics, cold start and KL reference). Fix: "
            "use the checkpoint run's values (listed here; its whole config stays in <run "
            "dir>/.hydra/config.yaml: a refused start puts it back), "
            "or start a new run (ckpt_path=null and a new hydra.run.dir), or allow the change "
            f"explicitly: resume.allow_changed=[{','.join(refused)}]"
        )


def folder_holds_this_run(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether `<run dir>/run_identity.json` names the run `cfg` describes (keys that
    `resume.allow_changed` lists may differ)."""
    try:
        old = json.loads((run_dir / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return False
    allow = list(OmegaConf.select(cfg, "resume.allow_changed", default=None) or [])
    return all(_allowed(k, allow) for k in differences(old, run_identity(cfg)))


def resolve_resume(cfg: DictConfig, run_dir: Path, explicit_run_dir: bool) -> str | None:
    """The checkpoint `ckpt_path` names (None: start fresh), checked against the config.

    `ckpt_path=last` means `<run dir>/checkpoints/last.ckpt`. Without an explicit run dir the
    run dir is a new timestamped folder, which has no checkpoint: that is an error naming the
    command, not a silent fresh start. An explicit run dir without a checkpoint yet starts
    fresh (what a job script that always passes `ckpt_path=last` needs)."""
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path != "last":
        ckpt = Path(str(cfg.ckpt_path))
    else:
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not explicit_run_dir:
            raise ConfigError(_no_run_dir_message(run_dir))
        if not ckpt.exists():
            log.warning("ckpt_path=last but %s does not exist: starting from scratch", ckpt)
            if (run_dir / IDENTITY_FILE).exists():  # a run killed before its first save
                check_resume(cfg, ckpt)
            return None
    check_resume(cfg, ckpt)
    return str(ckpt)


def _no_run_dir_message(run_dir: Path) -> str:
    found = sorted(run_dir.parent.glob("*/checkpoints/last.ckpt"), key=os.path.getmtime)
    runs = [str(p.parent.parent) for p in reversed(found)][:5]
    example = runs[0] if runs else "DIR"
    return (
        "ckpt_path=last resumes the run in hydra.run.dir, but no hydra.run.dir was given, so "
        f"this is a new folder ({run_dir}) with nothing to resume. Fix: python train.py "
        f"{shlex.quote(f'hydra.run.dir={example}')} ckpt_path=last (plus the run's other "
        "overrides). Runs with a "
        f"last.ckpt next to this one, newest first: {runs or 'none'}"
    )


def write_identity(run_dir: Path, identity: Mapping[str, Any]) -> None:
    """Atomically write `<run dir>/run_identity.json` (every rank writes the same content)."""
    data = (json.dumps(identity, indent=1, sort_keys=True) + "\n").encode()
    atomic_write(run_dir / IDENTITY_FILE, lambda f: f.write(data))


class IdentityInCheckpoint(Callback):
    """Stores the run identity in every checkpoint (and so in its sidecar)."""

    def __init__(self, identity: Mapping[str, Any]):
        self.identity = dict(identity)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_identity"] = self.identity
