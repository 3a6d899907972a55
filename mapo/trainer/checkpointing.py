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

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mapo.atomic import atomic_write, temp_path
from mapo.trainer import checkpoint_integrity as integrity

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temp files are ".<name>.tmp-<pid>-<random>" in the target's folder


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message says what to do."""


def temp_files(path: _PATH) -> list[Path]:
    """Temp files an interrupted save of `path` left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}{TMP_MARK}*"))


def atomic_torch_save(obj: Any, path: _PATH, extra_meta: dict[str, Any] | None = None) -> None:
    """`torch.save(obj, path)` that leaves either the old file or the complete new one, with a
    sha256 sidecar that accepts whichever is in place (`mapo.trainer.checkpoint_integrity`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(path):  # from a run killed while saving; only rank 0 saves
        stale.unlink(missing_ok=True)
    # streamed through a hasher: no second in-memory copy of a 7B checkpoint
    hashed: dict[str, integrity.HashingWriter] = {}
    meta: dict[str, Any] = {}

    def write(f) -> None:
        hashed["w"] = integrity.HashingWriter(f)
        torch.save(obj, hashed["w"])

    def accept_both() -> None:  # before the rename: the sidecar accepts the old or the new file
        w = hashed["w"]
        meta.update(sha256=w.sha.hexdigest(), bytes=w.bytes, **(extra_meta or {}))
        integrity.accept_both(path, meta)

    try:
        atomic_write(path, write, tmp=temp_path(path, TMP_MARK), before_replace=accept_both)
    except RuntimeError as err:  # torch's zip writer buries the OSError (ENOSPC) it hit
        cause = hashed["w"].error if "w" in hashed else None
        if cause is None:
            raise
        raise OSError(
            cause.errno,
            f"saving checkpoint {path} failed: {cause.strerror or cause} (the "
            f"previous {path.name} is kept). Fix: free space on {path.parent} (or save "
            "elsewhere with a new hydra.run.dir), then resume with ckpt_path=last",
        ) from err
    integrity.write_sidecar(path, {**meta, "accept": [meta["sha256"]]})


def _other_checkpoints(path: Path, limit: int = 3) -> list[str]:
    """Up to `limit` other `.ckpt` files beside `path`, newest first, that pass their checksum
    (one without a sidecar is never offered: it may be as damaged as `path`)."""
    others = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    good = []
    for p in others:
        if p.name != path.name and p.is_file() and integrity.verify(p) == "ok":
            good.append(str(p))
            if len(good) == limit:
                break
    return good


def _not_a_checkpoint(path: Path) -> str | None:
    """Why `path` is not a torch.save zip archive at all, or None if it is one."""
    if path.is_file() and path.stat().st_size > 0 and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":  # a zip cut short: truncated, not foreign
            return None
        kind = "a raw pickle" if head[:1] == b"\x80" else f"bytes starting {head!r}"
        return f"it is {kind}, not the zip archive torch.save writes"
    return None


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
        identity = checkpoint.get("run_identity")  # set by mapo.pipeline.run_identity's callback
        atomic_torch_save(checkpoint, path, {"run_identity": identity} if identity else None)

    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        if "://" not in str(path):
            integrity.sidecar_of(path).unlink(missing_ok=True)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # None would defer to torch's default, which an environment variable can flip
        weights_only = True if weights_only is None else weights_only
        if "://" not in str(path) and Path(path).is_file():
            self._verify(Path(path))
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

    @classmethod
    def _verify(cls, path: Path) -> None:
        """Refuse a file that is not a checkpoint or fails its checksum, before unpickling."""
        why = _not_a_checkpoint(path)
        status = integrity.verify(path)
        if why is None and status.startswith("mismatch"):
            why = f"its checksum does not match ({status[len('mismatch: ') :]}): the file was "
            why += "changed after it was saved (disk or copy corruption, or an edit)"
        elif why is None and status.startswith("bad sidecar"):
            why = f"its checksum sidecar {status[len('bad sidecar: ') :]}, so the file cannot "
            why += "be verified; if you trust the file, delete the sidecar to load it unverified"
        if why is not None:
            raise CheckpointLoadError(f"checkpoint {path} was refused: {why}. {cls._hint(path)}")
        if status == "unverified":
            log.warning(
                "checkpoint %s has no checksum sidecar (%s): loading it unverified",
                path,
                integrity.sidecar_of(path).name,
            )

    @staticmethod
    def _hint(path: _PATH) -> str:
        others = _other_checkpoints(Path(path)) if "://" not in str(path) else []
        if others:
            return (
                f"Resume from one that passes its checksum: ckpt_path={others[0]} (all: {others})"
            )
        return (
            "No other checkpoint there passes its checksum; start over with ckpt_path=null "
            "(and a new hydra.run.dir), or restore the file from a backup"
        )

    @classmethod
    def _unreadable(cls, path: _PATH, err: BaseException) -> CheckpointLoadError:
        boilerplate = (
            "Weights only load failed",
            "Please file an issue",
            "Check the documentation",
        )
        lines = [s for s in str(err).splitlines() if s.strip() and not s.startswith(boilerplate)]
        first = lines[0] if lines else type(err).__name__
        return CheckpointLoadError(
            f"checkpoint {path} is unreadable ({first}); it is probably truncated (written by a "
            f"writer that was not atomic, or the disk filled up). {cls._hint(path)}"
        )
