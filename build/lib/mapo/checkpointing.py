"""Checkpoint files that survive a crash mid-save and never run code when loaded.

Lightning 2.6.6's `TorchCheckpointIO` is not crash-safe enough for long RL runs. Its
`_atomic_save` writes through an fsspec transaction whose temp file comes from
`tempfile.mkstemp()`, i.e. the *system* temp folder, not the checkpoint's folder, and commits with
`shutil.move`:

- same file system: a rename, but nothing is fsynced, so after a power loss or a node reboot the
  new name can point at an empty or partial file;
- different file systems (local /tmp, runs on NFS/Lustre: the usual cluster layout): `shutil.move`
  *copies* into `last.ckpt`, and a kill during the copy leaves a truncated `last.ckpt`;
- a SIGKILL leaks the temp file (a whole checkpoint) in /tmp every time.

`AtomicCheckpointIO` writes to a hidden temp file next to the target, fsyncs it, renames it over
the target with `os.replace` (atomic on POSIX) and fsyncs the folder. A reader sees the old
checkpoint or the new one, never a mix. Temp files left by a killed run are removed by the next
save of the same name.

Loading uses `torch.load(weights_only=True)` unless a caller explicitly passes False: a
checkpoint may hold tensors, numbers, strings and containers, but nothing whose unpickling runs
code. `MAPOModule.on_save_checkpoint` stores its RNG states as lists for that reason. Errors name
the file, say what is wrong and how to go on.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_MARK = ".tmp-"  # temp files are ".<name>.tmp-<pid>-<random>" in the target's folder


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message says what to do."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems refuse to open a folder; the rename still holds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_files(path: _PATH) -> list[Path]:
    """Temp files an interrupted save of `path` left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}{TMP_MARK}*"))


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """`torch.save(obj, path)` that leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(path):  # from a run killed while saving; only rank 0 saves
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)  # streamed: no second in-memory copy of a 7B checkpoint
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _other_checkpoints(path: Path) -> list[str]:
    others = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in others if p.name != path.name]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic, fsynced local saves; `weights_only=True` loads.

    Remote paths (`s3://`, ...) fall back to Lightning's fsspec writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local files")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # None would defer to torch's default, which an environment variable can flip
        weights_only = True if weights_only is None else weights_only
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except pickle.UnpicklingError as err:
            # The weights-only unpickler names a forbidden class as "GLOBAL module.name"; any
            # other unpickling error means the bytes are not a checkpoint at all.
            why = [line for line in str(err).splitlines() if "GLOBAL" in line]
            if not why:
                raise self._unreadable(path, err) from err
            raise CheckpointLoadError(
                f"checkpoint {path} holds an object whose loading could run code ({why[0]}); it "
                "was refused (torch.load weights_only=True). Checkpoints of this code hold only "
                "tensors, numbers, strings and containers: resume only from checkpoints it wrote."
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise self._unreadable(path, err) from err

    @staticmethod
    def _unreadable(path: _PATH, err: BaseException) -> CheckpointLoadError:
        boilerplate = (
            "Weights only load failed",
            "Please file an issue",
            "Check the documentation",
        )
        lines = [s for s in str(err).splitlines() if s.strip() and not s.startswith(boilerplate)]
        first = lines[0] if lines else type(err).__name__
        others = _other_checkpoints(Path(path)) if "://" not in str(path) else []
        hint = f"ckpt_path={others[0]}" if others else "ckpt_path=null (start over)"
        return CheckpointLoadError(
            f"checkpoint {path} is unreadable ({first}); it is probably truncated (written by a "
            f"writer that was not atomic, or the disk filled up). Resume from another one: "
            f"{hint}; other checkpoints there, newest first: {others or 'none'}"
        )
