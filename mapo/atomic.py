"""Crash-safe file writes: the one home of the temp-file-then-rename pattern (files, and
folders with `build_dir`).

The bytes go to a hidden temp file in the target's folder (so ``os.replace`` never crosses
file systems), are fsynced, renamed over the target (atomic on POSIX) and the folder is
fsynced, so a reader sees the old file or the complete new one, never a torn write. A failed
write removes its temp file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
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


def temp_path(path: Path, mark: str = ".tmp-") -> Path:
    """A hidden, unique temp name next to `path`: ``.NAME<mark><pid>-<random>``."""
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], None],
    *,
    tmp: Path | None = None,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Call ``write(f)`` on a temp file and move it over `path` atomically.

    ``before_replace`` runs once the temp file is durable and before the rename (a checkpoint
    records its checksum there, so a kill at any moment leaves a verifiable pair)."""
    path = Path(path)
    tmp = tmp if tmp is not None else temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def build_dir(final: Path, build: Callable[[Path], None], *, done: Callable[[], bool]) -> None:
    """Call ``build(tmp)`` on a hidden sibling folder ``.NAME.tmp-<pid>-<random>`` and rename
    it to `final`, so a reader never sees half a folder. An OSError while `done()` holds is a
    race lost to another builder that renamed first, not an error. The temp folder is always
    removed (a killed builder's is found by its pid: mapo.models.coldstart)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not done():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
