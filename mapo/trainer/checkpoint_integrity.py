"""A sha256 sidecar for every checkpoint file, written crash-safely and checked before loading.

`last.ckpt` gets `last.ckpt.sha256.json`:

    {"sha256": "<hex of the file>", "bytes": N, "accept": ["<hex>", ...], "run_identity": {...}}

The digest is computed while the checkpoint streams to disk (no second read). A save is
ordered so that a kill at any moment leaves a sidecar that accepts whichever file is in place:

1. the new file is written to its temp name (digest D);
2. the sidecar is rewritten atomically to accept both D and the digest of the old file;
3. the temp file is renamed over the checkpoint;
4. the sidecar is rewritten atomically to accept only D.

`verify` hashes the file and compares (one extra read of the file at resume time). A missing
sidecar (a checkpoint from before this scheme, or copied without it) is reported by `verify` as
"unverified"; the loader then warns and loads. A sidecar that is there but unreadable (not
JSON, no "accept" list) is "bad sidecar": the loader refuses it, since a damaged sidecar says
nothing about the file beside it and a damaged file must not load unverified. The sidecar also carries the run identity
(`mapo.pipeline.run_identity`) so a resume can compare configs without opening the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from mapo.atomic import atomic_write

SUFFIX = ".sha256.json"
_CHUNK = 1 << 22


class HashingWriter:
    """A write-only file object that hashes what passes through it (for torch.save)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0
        self.error: OSError | None = None  # torch.save reports it as "unexpected pos"

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def sidecar_of(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


class SidecarError(ValueError):
    """A sidecar file that exists but cannot be read as one."""


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of checkpoint `path`, or None when there is none; SidecarError when it is
    there but unreadable."""
    side = sidecar_of(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise SidecarError(f"{side.name} is unreadable ({type(err).__name__}: {err})") from err
    if not (isinstance(meta, dict) and isinstance(meta.get("accept"), list)):
        raise SidecarError(f"{side.name} is not a checksum sidecar (no 'accept' list)")
    return meta


def try_read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """`read_sidecar`, with an unreadable sidecar read as none (for what only reads metadata)."""
    try:
        return read_sidecar(path)
    except SidecarError:
        return None


def write_sidecar(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename) write the sidecar of checkpoint `path`."""
    data = json.dumps(meta, sort_keys=True).encode()
    atomic_write(sidecar_of(path), lambda f: f.write(data))


def accept_both(path: Path, new: dict[str, Any]) -> None:
    """Step 2 of a save: the sidecar accepts the new digest and the one now on disk."""
    old = try_read_sidecar(path)  # a damaged one is replaced: the file on disk is hashed
    if old is not None:
        on_disk = old["accept"]  # any of them may be the file in place now
    else:  # a file from before sidecars (hashed once) or none yet
        on_disk = [file_sha256(path)] if path.is_file() else []
    write_sidecar(path, {**new, "accept": [new["sha256"], *on_disk]})


def verify(path: str | os.PathLike) -> str:
    """ "ok", "unverified" (no sidecar), "bad sidecar: <why>" or "mismatch: <why>" for the
    checkpoint file `path`."""
    try:
        meta = read_sidecar(path)
    except SidecarError as err:
        return f"bad sidecar: {err}"
    if meta is None:
        return "unverified"
    size = Path(path).stat().st_size
    digest = file_sha256(path)
    if digest in meta["accept"]:
        return "ok"
    return (
        f"mismatch: sha256 {digest[:16]}... of {size} bytes, the sidecar {sidecar_of(path).name} "
        f"records {meta.get('sha256', '?')[:16]}... of {meta.get('bytes')} bytes"
    )


# DeepSpeed checkpoints are folders of shards that DeepSpeed reads with a full (code-running)
# unpickler. A manifest of every file's sha256, written by this code at save and matched at load,
# is what makes such a folder trusted input: a flipped shard, a swapped-in pickle payload, an
# extra or a missing file, or a folder without a manifest (from elsewhere) is refused unread.
MANIFEST = "manifest.sha256.json"


def _folder_files(folder: Path) -> dict[str, Path]:
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: str | os.PathLike) -> None:
    """Atomically write `<folder>/manifest.sha256.json`: {relative path: sha256} of every file."""
    folder = Path(folder)
    files = {rel: file_sha256(p) for rel, p in _folder_files(folder).items()}
    data = json.dumps({"files": files}, indent=1, sort_keys=True).encode()
    atomic_write(folder / MANIFEST, lambda f: f.write(data))


def manifest_problem(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint folder does not match its manifest, or None when every file does."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (a folder this code did not write, or one cut short)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {MANIFEST} is unreadable ({type(err).__name__}: {err})"
    on_disk = _folder_files(folder)
    missing = sorted(files.keys() - on_disk.keys())
    extra = sorted(on_disk.keys() - files.keys())
    changed = [
        rel
        for rel in sorted(files.keys() & on_disk.keys())
        if file_sha256(on_disk[rel]) != files[rel]
    ]
    problems = [
        f"{what}: {names[:5]}"
        for what, names in (("missing", missing), ("not in it", extra), ("changed", changed))
        if names
    ]
    return f"files differ from its {MANIFEST} ({'; '.join(problems)})" if problems else None
