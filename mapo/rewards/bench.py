"""Per-item cost of scoring: ``python -m mapo.rewards.bench [--n 4096]``.

Three batches of typical completions (about 400 characters of reasoning, then a box):
- ``short``: Geo3K/EmoSet-like answers decided in-process ("3" vs "3", "12.5" vs "13.2",
  "\\frac{1}{2}" vs "0.5", emotion labels);
- ``sympy``: answers only sympy can decide ("\\sqrt{48}" vs "4\\sqrt{3}"), all sent to workers;
- ``mixed``: 90 % short, 10 % sympy, roughly a training batch.
Each is timed with both graders after one warm-up call that starts the workers; the other
scoring settings are conf/reward/default.yaml's.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from .batch import score_batch
from .pool import GraderPool

REASONING = "Let me look at the figure. " * 15  # ~400 characters
SHORT = [
    ("math", "3", "3"),
    ("math", "4", "3"),
    ("math", "12.5", "13.2"),
    ("math", "\\frac{1}{2}", "0.5"),
    ("math", "60", "60"),
    ("emotion", "awe", "awe"),
    ("emotion", "Amusement", "excitement"),
]


def _sympy_item(rng: random.Random) -> tuple[str, str, str]:
    k = rng.randint(2, 60)  # distinct strings, so no grader cache hides the cost
    return "math", f"\\sqrt{{{4 * k * k * 3}}}", f"{2 * k}\\sqrt{{3}}"


def make_batch(kind: str, n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        sympy = kind == "sympy" or (kind == "mixed" and rng.random() < 0.1)
        items.append(_sympy_item(rng) if sympy else rng.choice(SHORT))
    kinds = [k for k, _, _ in items]
    completions = [f"<think>{REASONING}</think> The answer is \\boxed{{{a}}}." for _, a, _ in items]
    return kinds, completions, [gold for _, _, gold in items]


def reward_settings(**changes: Any) -> dict[str, Any]:
    """The keyword arguments of ``score_batch`` from conf/reward/default.yaml, ``changes``
    applied."""
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf" / "reward" / "default.yaml"
    return {**OmegaConf.to_container(OmegaConf.load(conf)), **changes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    pool = GraderPool(workers=args.workers)
    try:
        for grader in ("mathruler", "math_verify"):  # start the workers
            warm_up = reward_settings(grader=grader, timeout_s=60.0)
            score_batch(*make_batch("sympy", 2), pool=pool, **warm_up)
        print(f"n={args.n} workers={args.workers}")
        for grader in ("mathruler", "math_verify"):
            for kind in ("short", "mixed", "sympy"):
                batch_args = make_batch(kind, args.n, seed=1)
                settings = reward_settings(grader=grader, timeout_s=10.0)
                start = time.perf_counter()
                batch = score_batch(*batch_args, pool=pool, **settings)
                per_item_us = (time.perf_counter() - start) / args.n * 1e6
                print(
                    f"{grader:11s} {kind:6s} {per_item_us:9.1f} us/item  pooled={batch.pooled:5d}"
                    f"  timeouts={batch.timeouts} errors={batch.errors}"
                )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
