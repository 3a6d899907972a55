"""This trainer against TRL's GRPOTrainer on the same tiny VLM, on CPU: seconds per RL step,
rollouts per second and peak RSS, in alternating fresh processes (ours, TRL, ours, TRL, ...)
so that load from other users of the machine hits both sides alike.

    python -m benchmarks.vs_trl                          # tiny VLM, HF generate on both sides
    python -m benchmarks.vs_trl --size 10m --engine vllm \\
        --python .venv-bench-vllm/bin/python             # 10 M VLM, vLLM on both sides
    python -m benchmarks.vs_trl --engine vllm --trl-engine hf ...   # our stack vs TRL's default

The engines are matched unless --trl-engine says otherwise; TRL runs without gradient
checkpointing unless --trl-gradient-checkpointing (GRPOConfig's default) is given.

The last line printed is `ratio <ours rollouts/s / TRL rollouts/s>` (medians over every timed
step of every round). docs/benchmarks.md explains the settings and the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.common import (
    Settings,
    load_average,
    settings_from_args,
    settings_parser,
    spawn_worker,
)

WORKERS = {
    "ours": "benchmarks.run_ours",
    "ours-full": "benchmarks.run_ours",
    "trl": "benchmarks.run_trl",
}


def run_worker(side: str, s: Settings, python: str, timeout: float) -> dict:
    if side == "ours-full":  # ours without the shared prompt pass (every row runs its prompt)
        s = replace(s, share_prompt=False)
    result = spawn_worker(WORKERS[side], side, s, python, timeout)
    result.pop("phases", None)  # per-step metrics are for benchmarks.overhead
    return result


def aggregate(runs: list[dict]) -> dict:
    steps = [t for r in runs for t in r["step_times"]]
    med = statistics.median(steps)
    return {
        "s_per_step": med,
        "rollouts_per_s": runs[0]["rollouts_per_s"] * runs[0]["s_per_step"] / med,
        "round_medians": [r["s_per_step"] for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "mean_completion_tokens": statistics.mean(r["mean_completion_tokens"] for r in runs),
        "threads": runs[0]["threads"],
    }


def compare(
    s: Settings, rounds: int, pythons: dict[str, str], timeout: float, sides: tuple[str, ...]
) -> dict:
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides:
            r = run_worker(side, s, pythons[side], timeout)
            runs[side].append(r)
            print(
                f"  round {i + 1}/{rounds} {side:8s}: {r['s_per_step']:.3f} s/step, "
                f"{r['rollouts_per_s']:.1f} rollouts/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"{r['mean_completion_tokens']:.1f} tokens/completion, "
                f"load {r['load_before']}",
                flush=True,
            )
    agg = {side: aggregate(rs) for side, rs in runs.items()}
    trl = agg["trl"]["s_per_step"]
    ratios = {side: trl / a["s_per_step"] for side, a in agg.items() if side != "trl"}
    paired = {
        side: [t["s_per_step"] / o["s_per_step"] for o, t in zip(runs[side], runs["trl"])]
        for side in ratios
    }
    return {
        "settings": json.loads(s.to_json()),
        "sides": agg,
        "runs": runs,
        "ratio": ratios["ours"],
        "ratios": ratios,
        "paired_ratios": paired,
        "load_after": load_average(),
    }


def report(res: dict) -> None:
    s = res["settings"]
    print(
        f"{s['size']} VLM, {s['prompts']} prompts x G={s['group']}, max_new_tokens "
        f"{s['max_new_tokens']}, beta {s['beta']}, {s['updates']} update(s)/rollout batch, "
        f"{s['threads']} thread(s), {s['warmup']} warm-up + {s['timed']} timed steps; "
        f"our engine: {s['engine']}, TRL's: {s['trl_engine']} (gradient checkpointing "
        f"{'on' if s['trl_gradient_checkpointing'] else 'off'}); "
        f"cold-started: {s['coldstart']}"
    )
    print(
        f"  {'side':8s} {'s/step':>8s} {'rollouts/s':>11s} {'peak RSS MB':>12s} "
        f"{'tok/compl':>10s}  round medians (s/step)"
    )
    for side, a in res["sides"].items():
        rounds = ", ".join(f"{x:.3f}" for x in a["round_medians"])
        print(
            f"  {side:8s} {a['s_per_step']:8.3f} {a['rollouts_per_s']:11.1f} "
            f"{a['peak_rss_mb']:12.0f} {a['mean_completion_tokens']:10.1f}  {rounds}"
        )
    for side, ratio in res["ratios"].items():
        pr = ", ".join(f"{x:.2f}" for x in res["paired_ratios"][side])
        print(f"  {side} / trl throughput: {ratio:.2f} (per round: {pr})")
    print(f"  load average after: {res['load_after']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = settings_parser(__doc__.split("\n\n")[0])
    ap.add_argument(
        "--with-full-pass",
        action="store_true",
        help="also alternate 'ours-full': ours with model.share_prompt=false "
        "(each rollout runs its whole prompt, as before the shared pass)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating ours/TRL pairs")
    ap.add_argument(
        "--trl-engine",
        choices=["hf", "vllm"],
        help="TRL's generation (default: the same as --engine)",
    )
    ap.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL as GRPOConfig defaults it: gradient checkpointing on",
    )
    ap.add_argument("--python", default=sys.executable, help="both sides' interpreter")
    ap.add_argument("--ours-python", help="our side's interpreter (default: --python)")
    ap.add_argument("--trl-python", help="TRL's interpreter (default: --python)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per worker")
    ap.add_argument("--json", type=Path, help="also write the full results here")
    return ap.parse_args(argv)


def settings(a: argparse.Namespace) -> Settings:
    """The Settings of a comparison: TRL's engine is ours unless --trl-engine says otherwise."""
    return settings_from_args(
        a,
        trl_engine=a.trl_engine or a.engine,
        trl_gradient_checkpointing=a.trl_gradient_checkpointing,
    )


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    s = settings(a)
    print(f"vs_trl: load average before: {load_average()}", flush=True)
    sides = ("ours", "ours-full", "trl") if a.with_full_pass else ("ours", "trl")
    ours, trl = a.ours_python or a.python, a.trl_python or a.python
    pythons = {"ours": ours, "ours-full": ours, "trl": trl}
    res = compare(s, a.rounds, pythons, a.timeout, sides)
    report(res)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    print(f"ratio {res['ratio']:.2f}")
    return res


if __name__ == "__main__":
    main()
