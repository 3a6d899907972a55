"""The pre-registered comparison of the advantage estimators on SynthMix (docs/study.md).

    python -m benchmarks.study                 # the protocol: 5 methods x 8 seeds x 100 steps
    python -m benchmarks.study --quick         # 2 methods x 2 seeds x 2 steps on tiny sets (CI)

Each run is `python train.py experiment=synth_mix_<method> seed=<k> steps=<S>` in its own
process (1 thread), writing to <out>/<method>/seed<k>; a run whose study_run.json records the
same settings is reused, so an interrupted study continues. study_run.json records the seed,
the commit (and whether the tree was dirty), the command and the wall time. Outputs:
<out>/study.json, <out>/study.md (the table) and <out>/study.png (training curves with
bands and the final metrics, benchmarks/study_plot.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.study_plot import plot, run_curves

METHODS = {
    "mapo": "MAPO",
    "grpo": "GRPO",
    "apd": "APD only",
    "mapo_rand": "Rand",
    "dr_grpo": "Dr. GRPO",
}
BASELINE = "grpo"
TIERS = ("synth_mix_easy", "synth_mix_medium", "synth_mix_hard")
OOD = "synth_mix_shift"
# metric -> what it is (all read from metrics.json's "after" block; accuracies greedy)
METRICS = {
    "acc_tiers": "mean accuracy over the three tiers' test sets (primary)",
    "acc_easy": "accuracy, easy tier",
    "acc_medium": "accuracy, medium tier",
    "acc_hard": "accuracy, hard tier",
    "acc_ood": "accuracy, OOD shift",
    "regression_rate": "right before RL, wrong after (all eval prompts)",
    "gain_rate": "wrong before RL, right after (all eval prompts)",
}
QUICK = [
    "data.synthetic.n_train=64",
    "data.synthetic.n_test=8",
    "model.coldstart.steps=5",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=4",
    "algorithm.micro_batch_size=32",
]


def commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain"))}


def run_command(method: str, seed: int, a: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        f"experiment=synth_mix_{method}",
        f"seed={seed}",
        f"steps={a.steps}",
        "export_hf=false",
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null",
        "trainer.enable_checkpointing=false",
        "+trainer.enable_progress_bar=false",
        "trainer.deterministic=true",
        f"hydra.run.dir={out}",
        *(QUICK if a.quick else []),
        *a.override,
    ]


def run_one(method: str, seed: int, a: argparse.Namespace) -> Path:
    """Run (or reuse) one training run; returns its folder."""
    out = a.out / method / f"seed{seed}"
    cmd = run_command(method, seed, a, out)
    record = out / "study_run.json"
    if record.is_file() and json.loads(record.read_text())["command"] == cmd[1:]:
        return out
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    with open(out / "study_train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {proc.returncode}); see {log.name}")
    seconds = time.perf_counter() - clock
    info = {
        "method": method,
        "seed": seed,
        "steps": a.steps,
        "command": cmd[1:],
        "seconds": round(seconds, 1),
        **commit(),
    }
    record.write_text(json.dumps(info, indent=2) + "\n")  # written last: marks the run done
    print(f"  {method} seed {seed}: {seconds:.0f} s", flush=True)
    return out


def read_run(run_dir: Path) -> dict[str, float]:
    """The study's metrics of one finished run."""
    after = json.loads((run_dir / "metrics.json").read_text())["after"]
    acc = after["datasets"]
    reg = after.get("regression", {}).get("all", {})
    out = {f"acc_{t.removeprefix('synth_mix_')}": float(acc[t]) for t in TIERS}
    out["acc_tiers"] = sum(float(acc[t]) for t in TIERS) / len(TIERS)
    out["acc_ood"] = float(acc[OOD])
    out["regression_rate"] = float(reg.get("regression_rate", math.nan))
    out["gain_rate"] = float(reg.get("gain_rate", math.nan))
    return out


def bootstrap_ci(values, resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap CI of the mean (resampling the seeds)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def aggregate(runs: dict[str, dict[int, dict[str, float]]], resamples: int) -> dict:
    """Per method and metric: mean [CI]; paired by seed, the difference to GRPO [CI]."""
    table: dict = {"methods": {}, "paired_vs_grpo": {}}
    for method, by_seed in runs.items():
        table["methods"][method] = {
            m: bootstrap_ci([r[m] for r in by_seed.values()], resamples) for m in METRICS
        }
    base = runs.get(BASELINE, {})
    for method, by_seed in runs.items():
        seeds = sorted(set(by_seed) & set(base))
        if method == BASELINE or not seeds:
            continue
        table["paired_vs_grpo"][method] = {
            m: bootstrap_ci([by_seed[s][m] - base[s][m] for s in seeds], resamples) for m in METRICS
        }
    return table


def _cell(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def table_md(table: dict, seeds: int, steps: int) -> str:
    lines = [
        f"Mean [95 % bootstrap CI] over {seeds} seeds, {steps} RL steps each.",
        "",
        "| Method | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for method, row in table["methods"].items():
        lines.append(f"| {METHODS[method]} | " + " | ".join(_cell(row[m]) for m in METRICS) + " |")
    if table["paired_vs_grpo"]:
        lines += [
            "",
            "Paired by seed: method - GRPO, mean [95 % bootstrap CI].",
            "",
            "| Method | " + " | ".join(METRICS) + " |",
            "|---" * (len(METRICS) + 1) + "|",
        ]
        for method, row in table["paired_vs_grpo"].items():
            cells = " | ".join(_cell(row[m]) for m in METRICS)
            lines.append(f"| {METHODS[method]} - GRPO | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "study")
    ap.add_argument("--quick", action="store_true", help="tiny sets and cold start: CI only")
    ap.add_argument("--override", nargs="*", default=[], help="extra train.py overrides")
    a = ap.parse_args(argv)
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for seed in a.seeds:  # seed-major: every method of a seed shares its cold start
        for method in a.methods:
            runs.setdefault(method, {})[seed] = read_run(run_one(method, seed, a))
    table = aggregate(runs, a.resamples)
    result = {
        "settings": {
            "methods": a.methods,
            "seeds": a.seeds,
            "steps": a.steps,
            "quick": a.quick,
            "override": a.override,
            **commit(),
        },
        "runs": runs,
        "table": table,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "study.md").write_text(table_md(table, len(a.seeds), a.steps))
    curves = {
        method: [run_curves(a.out / method / f"seed{seed}", TIERS) for seed in a.seeds]
        for method in a.methods
    }
    plot(table, curves, METHODS, a.out / "study.png")
    print(table_md(table, len(a.seeds), a.steps))
    return result


if __name__ == "__main__":
    main()
