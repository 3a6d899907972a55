"""What the certainty weighting meets in a batch, read from the rollout records.

Per step: the histogram of successes per group N (0 .. G), the reversion groups (every
rollout but one succeeds and the one miss has the right answer with the wrong format, the
paper's r = [0.9, 1, 1, 1]) and the mirrored pairs (two groups whose GRPO advantages are the
same multiset while their mean rewards differ, the paper's [0, .1, .1, .1] vs [.9, 1, 1, 1]).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MIRROR_DIGITS = 9  # GRPO advantages equal to this many decimals count as the same


def groups(records: Iterable[Mapping[str, Any]]) -> dict[tuple[int, int], list[Mapping]]:
    """Rows keyed by (step, group_id), each group's rollouts in rollout order."""
    out: dict[tuple[int, int], list[Mapping]] = defaultdict(list)
    for row in records:
        out[(int(row["step"]), int(row["group_id"]))].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: int(r["rollout_index"]))
    return dict(out)


def is_reversion(rows: list[Mapping]) -> bool:
    """All but one rollout succeed, and the miss answered right with a wrong format."""
    misses = [r for r in rows if not r["success"]]
    return (
        len(rows) > 1
        and len(misses) == 1
        and misses[0]["reward_accuracy"] == 1.0
        and misses[0]["reward_format"] < 1.0
    )


def _mirror_key(rows: list[Mapping]) -> tuple[float, ...] | None:
    adv = sorted(round(float(r["advantage_grpo"]), MIRROR_DIGITS) for r in rows)
    return None if all(a == 0 for a in adv) else tuple(adv)


def mirrored_pairs(by_group: Mapping[tuple[int, int], list[Mapping]]) -> int:
    """Pairs of groups of one step with the same GRPO advantages but different mean rewards."""
    buckets: dict[tuple, list[float]] = defaultdict(list)
    for (step, _), rows in by_group.items():
        key = _mirror_key(rows)
        if key is not None:
            buckets[(step, key)].append(round(float(rows[0]["mu"]), MIRROR_DIGITS))
    pairs = 0
    for mus in buckets.values():
        counts = Counter(mus)
        same = sum(c * (c - 1) // 2 for c in counts.values())
        pairs += len(mus) * (len(mus) - 1) // 2 - same
    return pairs


def certainty_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """N histogram, the shares of N = 0, N = G and 0 < N < G, reversion and mirror counts."""
    by_group = groups(records)
    hist: Counter[int] = Counter()
    by_source: dict[str, Counter[int]] = defaultdict(Counter)
    solved = unsolved = 0
    for rows in by_group.values():
        n, g = sum(bool(r["success"]) for r in rows), len(rows)
        hist[n] += 1
        by_source[str(rows[0]["source"])][n] += 1
        solved += n == g
        unsolved += n == 0
    total = max(len(by_group), 1)
    return {
        "groups": len(by_group),
        "n_hist": dict(sorted(hist.items())),
        "n_hist_by_source": {s: dict(sorted(c.items())) for s, c in sorted(by_source.items())},
        "frac_n0": unsolved / total,
        "frac_nG": solved / total,
        "frac_mixed": (len(by_group) - solved - unsolved) / total,
        "reversion_groups": sum(is_reversion(rows) for rows in by_group.values()),
        "mirrored_pairs": mirrored_pairs(by_group),
    }


def read_records(run_dir: str | Path, steps: Iterable[int] | None = None) -> list[dict]:
    """The rollout records of a run (all steps, or only ``steps``) as rows."""
    import pyarrow.parquet as pq

    wanted = None if steps is None else set(steps)
    rows: list[dict] = []
    for path in sorted(Path(run_dir, "records").glob("step_*.parquet")):
        if wanted is None or int(path.name.split("_")[1]) in wanted:
            rows += pq.read_table(path).to_pylist()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m mapo.analysis.certainty RUN_DIR [--steps K]``: the summary of the first K
    steps (all when omitted) as JSON."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--steps", type=int, default=None, help="only steps 0 .. K-1")
    a = ap.parse_args(argv)
    steps = None if a.steps is None else range(a.steps)
    summary = certainty_summary(read_records(a.run_dir, steps))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
