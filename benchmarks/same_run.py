"""Whether two run folders hold the same run: metrics.json key by key (timings, throughput and
paths excepted) and every rollout-records file column by column.

    python -m benchmarks.same_run BEFORE_RUN AFTER_RUN

Used to show that a restructuring changes no number (docs/architecture.md). Exit status 0
when identical, 1 with the differences listed otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SKIP_PREFIXES = ("time/", "perf/")
SKIP_KEYS = {"model_path", "run_dir", "seconds"}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _skipped(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in SKIP_KEYS or any(last.startswith(p) for p in SKIP_PREFIXES)


def compare(before: Path, after: Path) -> list[str]:
    import pandas as pd

    diffs = []
    a = _flatten(json.loads((before / "metrics.json").read_text()))
    b = _flatten(json.loads((after / "metrics.json").read_text()))
    keys = sorted(k for k in a.keys() | b.keys() if not _skipped(k))
    diffs += [
        f"metrics.json {k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)
    ]
    files_a = sorted(p.name for p in (before / "records").glob("step_*.parquet"))
    files_b = sorted(p.name for p in (after / "records").glob("step_*.parquet"))
    if files_a != files_b:
        diffs.append(f"records files differ: {files_a} != {files_b}")
    for name in sorted(set(files_a) & set(files_b)):
        da = pd.read_parquet(before / "records" / name)
        db = pd.read_parquet(after / "records" / name)
        if not da.equals(db):
            cols = [c for c in da.columns if c not in db or not da[c].equals(db[c])]
            diffs.append(f"records/{name}: columns {cols or list(db.columns)} differ")
    print(
        f"compared {len(keys)} metrics.json keys and {len(files_a)} records files "
        f"({len(pd.read_parquet(before / 'records' / files_a[0]).columns) if files_a else 0} "
        "columns)"
    )
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    diffs = compare(a.before, a.after)
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
