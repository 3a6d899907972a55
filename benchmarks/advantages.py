"""Time the vectorised advantage kernel on a large batch, and the plain-loop oracle of
tests/test_advantages.py on a small one for contrast.

    python -m benchmarks.advantages [--rollouts 1000000 --groups 100000 --threads 1]

Rewards take the values a (0.9 accuracy + 0.1 format) reward takes, {0, 0.1, 1}, and the
groups arrive shuffled (as after DAPO filtering or a re-ordered batch), so the scatter path
is what is measured, not a lucky contiguous layout.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

from mapo.algorithm.advantages import compute_advantages

ROOT = Path(__file__).resolve().parents[1]


def make_batch(rollouts: int, groups: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N] float64 in {0, 0.1, 1} and shuffled group ids [N] (N = rollouts)."""
    if rollouts % groups:
        raise ValueError(f"--rollouts {rollouts} must be a multiple of --groups {groups}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([0.0, 0.1, 1.0], dtype=torch.float64)
    rewards = values[torch.randint(0, 3, (rollouts,), generator=g)]
    gids = torch.arange(groups).repeat_interleave(rollouts // groups)  # [N]
    gids = gids[torch.randperm(rollouts, generator=g)] * 7 + 3  # sparse, unordered ids
    return rewards, gids


def time_kernel(name: str, rewards, gids, repeats: int) -> list[float]:
    compute_advantages(
        name, rewards, gids, std="unbiased", eps=1e-6
    )  # warm-up (allocator, dispatch)
    out = []
    for _ in range(repeats):
        clock = time.perf_counter()
        compute_advantages(name, rewards, gids, std="unbiased", eps=1e-6)
        out.append(time.perf_counter() - clock)
    return out


def load_oracle():
    """The plain per-group loop that the tests check the kernel against (kept in tests only)."""
    path = ROOT / "tests" / "test_advantages.py"
    spec = importlib.util.spec_from_file_location("_advantage_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--estimator", default="mapo")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--oracle-rollouts", type=int, default=20_000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rewards, gids = make_batch(args.rollouts, args.groups)
    times = time_kernel(args.estimator, rewards, gids, args.repeats)
    kernel = statistics.median(times)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"kernel {args.estimator}: {args.rollouts} rollouts in {args.groups} groups, "
        f"{args.threads} thread(s): median {kernel * 1e3:.1f} ms over {args.repeats} "
        f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}); "
        f"{args.rollouts / kernel / 1e6:.1f} M rollouts/s"
    )

    n_small = args.oracle_rollouts
    group_size = args.rollouts // args.groups
    small_r, small_g = make_batch(n_small, n_small // group_size)
    oracle = load_oracle()
    clock = time.perf_counter()
    want = oracle(args.estimator, small_r.tolist(), small_g.tolist(), std="unbiased")
    loop = time.perf_counter() - clock
    got = compute_advantages(args.estimator, small_r, small_g, std="unbiased", eps=1e-6)
    err = float((got - torch.tensor(want, dtype=torch.float64)).abs().max())
    small_kernel = statistics.median(time_kernel(args.estimator, small_r, small_g, args.repeats))
    print(
        f"loop oracle: {n_small} rollouts in {n_small // group_size} groups: {loop * 1e3:.1f} "
        f"ms ({n_small / loop / 1e6:.3f} M rollouts/s); kernel on the same batch "
        f"{small_kernel * 1e3:.2f} ms; max |kernel - oracle| = {err:.1e}"
    )
    per_rollout_speedup = (args.rollouts / kernel) / (n_small / loop)
    print(f"kernel vs loop, rollouts/s: {per_rollout_speedup:.0f}x")
    return {"kernel_s": kernel, "loop_s": loop, "speedup": per_rollout_speedup, "max_err": err}


if __name__ == "__main__":
    main()
