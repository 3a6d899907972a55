"""What LoRA costs and saves in our trainer: full fine-tuning against LoRA adapters (decoder
attention and MLP projections, the real-model setting), fresh processes alternating for
``--rounds`` rounds, at the realistic shape or at the toy workload of a model size.

    python -m benchmarks.lora_cost --workload shape --json outputs/bench/lora_shape.json
    python -m benchmarks.lora_cost --workload toy --size 10m --prompts 16 --group 8 \\
        --no-coldstart --json outputs/bench/lora_10m.json
    .venv-vllm/bin/python -m benchmarks.lora_cost --workload shape --engine vllm --rounds 1 \\
        [--lora-sync merged]                  # with our vLLM engine: bytes synced per step

Reported per side: s/step (median over every timed step of every round), the phases
(generation, reference log-probs, update; training = log-probs + update), peak RSS of the
process (the largest over its rounds), bytes sent to the rollout engine per step
(``perf/sync_bytes``: 0 with the HF engine, which generates from the policy itself), and per
round LoRA / full ratios. With LoRA the reference is the policy with its adapters disabled, so
the full side loads one more model. The last line is
``lora_ratio <LoRA / full s/step> rss <LoRA / full peak RSS>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.common import load_average, settings_from_args, settings_parser
from benchmarks.vs_trl_shape import print_ratios, round_training, spawn, trainer_summary

SIDES = ("full", "lora")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = settings_parser(__doc__.split("\n\n")[0])
    ap.set_defaults(workload="shape", prompts=2, group=8, warmup=2, timed=3)
    ap.add_argument("--rank", type=int, default=16, help="the LoRA side's model.lora.rank")
    ap.add_argument(
        "--lora-sync",
        choices=["adapter", "merged"],
        default="adapter",
        help="with --engine vllm: what the LoRA side sends vLLM (rollout.lora_sync)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--ckpt", choices=["on", "off"], default="on", help="gradient checkpointing")
    ap.add_argument("--python", default=sys.executable, help="the workers' interpreter")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    ap.add_argument("--json", type=Path, help="also write the full results here")
    return ap.parse_args(argv)


def side_summary(runs: list[dict], rollouts: int) -> dict:
    out = trainer_summary(runs, rollouts)
    phases = [p for r in runs for p in r["phases"]]
    out["sync_bytes_per_step"] = statistics.median(p.get("perf/sync_bytes", 0.0) for p in phases)
    return out


def lora_ratios(sides: dict, runs: dict) -> dict:
    full, lora = sides["full"], sides["lora"]
    pairs = list(zip(runs["full"], runs["lora"]))
    return {
        "lora_over_full_step": lora["s_per_step"] / full["s_per_step"],
        "lora_over_full_training": lora["training_s"] / full["training_s"],
        "lora_over_full_rss": lora["peak_rss_mb"] / full["peak_rss_mb"],
        "round_lora_over_full_step": [b["s_per_step"] / a["s_per_step"] for a, b in pairs],
        "round_lora_over_full_training": [round_training(b) / round_training(a) for a, b in pairs],
        "round_lora_over_full_rss": [b["peak_rss_mb"] / a["peak_rss_mb"] for a, b in pairs],
    }


def report(sides: dict, ratios: dict) -> None:
    print(
        f"  {'side':5s} {'s/step':>8s} {'gen s':>8s} {'logp s':>8s} {'update s':>9s} "
        f"{'train s':>8s} {'RSS MB':>7s} {'sync MB/step':>12s}"
    )
    for side in SIDES:
        a = sides[side]
        print(
            f"  {side:5s} {a['s_per_step']:8.3f} {a['generation_s']:8.3f} {a['logprobs_s']:8.3f} "
            f"{a['update_s']:9.3f} {a['training_s']:8.3f} {a['peak_rss_mb']:7.0f} "
            f"{a['sync_bytes_per_step'] / 2**20:12.3f}"
        )
    print_ratios(ratios)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    base = settings_from_args(a, gradient_checkpointing=a.ckpt == "on")
    settings = {"full": base, "lora": replace(base, lora_rank=a.rank, lora_sync=a.lora_sync)}
    load = load_average()
    sync = f" ({a.lora_sync} sync)" if a.engine == "vllm" else ""
    print(f"lora_cost: {a.workload} workload, engine {a.engine}{sync}, rank {a.rank}, load {load}")
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(a.rounds):
        for side in SIDES:
            r = spawn("ours", settings[side], a.python, a.timeout)
            runs[side].append(r)
            print(
                f"  round {i + 1}/{a.rounds} {side:4s}: {r['s_per_step']:.3f} s/step, peak RSS "
                f"{r['peak_rss_mb']:.0f} MB, load {r['load_before']}",
                flush=True,
            )
    rollouts = a.prompts * a.group
    sides = {side: side_summary(rs, rollouts) for side, rs in runs.items()}
    ratios = lora_ratios(sides, runs)
    report(sides, ratios)
    out = {
        "settings": {k: json.loads(v.to_json()) for k, v in settings.items()},
        "rounds": a.rounds,
        "load_before": load,
        "load_after": load_average(),
        "sides": sides,
        "ratios": ratios,
        "runs": runs,
    }
    print(f"  load average before / after: {load} / {out['load_after']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2, allow_nan=False))
    print(f"lora_ratio {ratios['lora_over_full_step']:.3f} rss {ratios['lora_over_full_rss']:.3f}")
    return out


if __name__ == "__main__":
    main()
