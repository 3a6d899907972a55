"""A run folder holds exactly one run.

- A lock: `<run dir>/.lock` is held (`fcntl.flock`) for the whole of `train()` by the process
  that trains there, with its pid in the file, so a second `train.py` on the same folder is
  refused naming the holder. The kernel drops the lock when the process dies (even SIGKILL),
  so a killed run never leaves the folder locked. Only rank 0 of a multi-process run locks: the
  other ranks are that run.
- A fresh start (`ckpt_path=null`, or a checkpoint from outside this folder) into a folder
  that already holds a run (its `run_identity.json` or a checkpoint) is refused: it would mix
  two runs' records, metrics and checkpoints.
- Hydra writes `.hydra/config.yaml` before any check can run; a start that is refused puts back
  the copy saved by the last start that was accepted (`.hydra/accepted/`), so the folder keeps
  describing the run it holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from mapo.algorithm.config import ConfigError

LOCK_FILE = ".lock"
HYDRA_DIR = ".hydra"
ACCEPTED = "accepted"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in _RANK_VARS)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the duration; ConfigError when another process holds it."""
    if not _is_rank_zero():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"run folder {run_dir} is in use by another train.py (pid {holder}); two runs in "
                "one folder overwrite each other's checkpoints and records. Fix: wait for it to "
                "end (or stop it), or use another folder: hydra.run.dir=NEW_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def holds_a_run(run_dir: Path, identity_file: str) -> bool:
    """Whether `run_dir` already holds a run: its identity file or any checkpoint."""
    ckpts = run_dir / "checkpoints"
    return (run_dir / identity_file).exists() or (ckpts.is_dir() and any(ckpts.iterdir()))


def refuse_second_run(
    run_dir: Path, ckpt_path: str | None, requested: object, identity_file: str, same_run: bool
) -> None:
    """ConfigError when a fresh start, or a start from a checkpoint elsewhere whose run is not
    the folder's (`same_run`: the folder's identity file names this config's run), would write
    into a folder that holds a run already. `ckpt_path=last` (`requested`) in a folder whose run
    was killed before its first checkpoint restarts that run: its identity was compared."""
    if not _is_rank_zero():  # rank 0 decided for the run; the others find its identity file
        return
    if requested == "last" or not holds_a_run(run_dir, identity_file):
        return
    ours = (run_dir / "checkpoints").resolve()
    if ckpt_path is not None and (same_run or ours in Path(ckpt_path).resolve().parents):
        return  # a resume of this folder's own run (from a backup copy, say)
    what = "a fresh run" if ckpt_path is None else f"a run from ckpt_path={ckpt_path}"
    raise ConfigError(
        f"run folder {run_dir} already holds a run; {what} there would mix two runs' "
        "checkpoints, records and metrics. Fix: resume it with ckpt_path=last, or start the new "
        "run in a new folder: hydra.run.dir=NEW_DIR"
    )


def save_accepted_config(run_dir: Path) -> None:
    """Keep a copy of the Hydra files of a start that passed every check."""
    src = run_dir / HYDRA_DIR
    if not src.is_dir():
        return
    dst = src / ACCEPTED
    dst.mkdir(exist_ok=True)
    for f in src.glob("*.yaml"):
        shutil.copy2(f, dst / f.name)


def restore_accepted_config(run_dir: Path) -> None:
    """Put back the Hydra files of the last accepted start (a refused start wrote its own)."""
    src = run_dir / HYDRA_DIR / ACCEPTED
    if src.is_dir():
        for f in src.glob("*.yaml"):
            shutil.copy2(f, run_dir / HYDRA_DIR / f.name)


def run_dir_of(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_dir_is_explicit(cfg: DictConfig) -> bool:
    """Whether the user chose the run dir (hydra.run.dir / run_dir), not Hydra's timestamp."""
    if cfg.get("run_dir"):
        return True
    from hydra.core.hydra_config import HydraConfig

    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.hydra}
    return bool(keys & {"hydra.run.dir", "hydra.sweep.dir"})
