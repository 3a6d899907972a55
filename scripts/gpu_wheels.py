"""Helpers of scripts/gpu_wheels.sh (build side) and scripts/gpu_check.sh (GPU side).

    python scripts/gpu_wheels.py stubs PROVIDED.txt DIR     # metadata-only wheels of PROVIDED
    python scripts/gpu_wheels.py manifest DIR LIMIT_MIB      # DIR/manifest.json; exit 1 if over
    python scripts/gpu_wheels.py plan DIR REQUIREMENTS.txt   # wheels this interpreter lacks

Standard library only: the GPU machine runs ``plan`` before anything is installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

MIB = 2**20


def read_pins(path: Path) -> list[tuple[str, str, bool]]:
    """(name, version, build-from-sdist) for each ``name==version`` line of a requirements file
    (comments and blank lines skipped; a trailing ``# build`` marks sdist-only packages)."""
    pins = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)\s*", line)
        if m is None:
            raise ValueError(f"{path}:{number}: {raw!r} is not 'name==version'")
        pins.append((m[1], m[2], comment.strip() == "build"))
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_stub(name: str, version: str, dest: Path) -> Path:
    """A valid, empty py3-none-any wheel declaring only ``name==version`` (no dependencies):
    stands in for a package the GPU machine already has when resolving for it."""
    dist = re.sub(r"[-.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: mapo-stub\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return path


def manifest(folder: Path, limit_mib: float) -> dict:
    """Name and size of every wheel in ``folder``, and their total against ``limit_mib``."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {folder}; run scripts/gpu_wheels.sh first")
    rows = [{"file": w.name, "bytes": w.stat().st_size} for w in wheels]
    total = sum(r["bytes"] for r in rows)
    return {"wheels": rows, "count": len(rows), "total_bytes": total,
            "total_mib": round(total / MIB, 2), "limit_mib": limit_mib,
            "within_limit": total <= limit_mib * MIB}  # fmt: skip


def _version_tuple(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", v))


def plan(folder: Path, requirements: Path) -> list[tuple[Path, str]]:
    """Wheels of ``folder`` to install here, with why: the pinned distribution is missing or
    older than the pin. Installed ones that are as new are left alone (never replaced)."""
    by_name = {normalize(w.name.split("-")[0]): w for w in folder.glob("*.whl")}
    todo = []
    for name, version, _ in read_pins(requirements):
        wheel = by_name.get(normalize(name))
        if wheel is None:
            raise FileNotFoundError(f"{name}=={version} has no wheel in {folder}")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            todo.append((wheel, "missing"))
            continue
        try:
            older = _version_tuple(have) < _version_tuple(version)
        except TypeError:  # mixed int/str parts: compare as text
            older = have < version
        if older:
            todo.append((wheel, f"installed {have} < {version}"))
    return todo


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == "stubs":
        dest = Path(args[1])
        dest.mkdir(parents=True, exist_ok=True)
        for name, version, _ in read_pins(Path(args[0])):
            write_stub(name, version, dest)
        return 0
    if cmd == "manifest":
        folder, limit = Path(args[0]), float(args[1])
        m = manifest(folder, limit)
        (folder / "manifest.json").write_text(json.dumps(m, indent=1))
        print(f"{m['count']} wheels, {m['total_mib']} MiB (limit {limit} MiB)")
        if not m["within_limit"]:
            print(f"error: {folder} is over {limit} MiB", file=sys.stderr)
            return 1
        return 0
    if cmd == "plan":
        for wheel, why in plan(Path(args[0]), Path(args[1])):
            print(f"{wheel}\t{why}")
        return 0
    raise SystemExit(f"unknown command {cmd!r}; use stubs, manifest or plan")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
