"""Learning curves on SynthEmo with the tiny VLM: MAPO, GRPO, DAPO, APD-only and Rand, several
seeds each. In-domain (A^S) and out-of-domain (A^T) greedy accuracy against the RL step, and
the fraction of groups whose success rate p is 0 or 1 (no GRPO signal) over training.

    python -m benchmarks.curves                      # full: 5 methods x 3 seeds x 200 steps
    python -m benchmarks.curves --seeds 0 --steps 20 --every 10 --methods mapo grpo   # smoke
    python -m benchmarks.curves --suite losses       # MAPO x {ppo_clip, gspo, gspo_token, cispo, sapo}
    python -m benchmarks.curves --suite corrections --seeds 0 --steps 100 --every 50
                                                     # MAPO x each algorithm.rollout_correction mode

Each run is `python train.py experiment=synth_emo_<method> ...` in its own process (1 thread,
`--jobs` at a time) writing to <out>/<method>/seed<k>; finished runs are reused, so an
interrupted sweep continues. Outputs: <out>/curves.json, docs/benchmarks_curves.png and
docs/benchmarks_curves.md (the table). The whole sweep takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import ROOT, load_average
from mapo.algorithm.rollout_correction import MODES

METHODS = {"mapo": "MAPO", "grpo": "GRPO", "dapo": "DAPO", "apd": "APD only", "mapo_rand": "Rand"}
# MAPO's advantage under each policy loss (conf/experiment/synth_emo_mapo_<loss>.yaml: four
# updates per rollout batch, so the ratio leaves 1 and the losses differ).
LOSSES = {
    "mapo_ppo_clip": "PPO-clip",
    "mapo_gspo": "GSPO",
    "mapo_gspo_token": "GSPO-token",
    "mapo_cispo": "CISPO",
    "mapo_sapo": "SAPO",
}
# MAPO's advantage under each algorithm.rollout_correction mode (docs/rollout_correction.md)
CORRECTIONS = {f"mapo_rc_{m}": f"MAPO + {m}" for m in MODES}
SUITES = {
    "methods": (METHODS, ""),
    "losses": (LOSSES, "_losses"),
    "corrections": (CORRECTIONS, "_corrections"),
}  # runs, file-name suffix
LABELS = {**METHODS, **LOSSES, **CORRECTIONS}


def experiment_args(method: str) -> list[str]:
    """The train.py overrides that pick a method: its experiment, plus the correction mode."""
    if method.startswith("mapo_rc_"):
        mode = method.removeprefix("mapo_rc_")
        return ["experiment=synth_emo_mapo", f"algorithm.rollout_correction.mode={mode}"]
    return [f"experiment=synth_emo_{method}"]


def finished(method: str, seed: int, a: argparse.Namespace) -> bool:
    """A finished run counts only for the same sweep (steps and evaluation interval)."""
    done = a.out / method / f"seed{seed}" / "DONE"
    return done.exists() and done.read_text().startswith(f"steps={a.steps} every={a.every}")


def run_one(method: str, seed: int, a: argparse.Namespace) -> Path:
    out = a.out / method / f"seed{seed}"
    tag = f"steps={a.steps} every={a.every}"
    if finished(method, seed, a):
        return out
    cmd = [
        sys.executable,
        "train.py",
        *experiment_args(method),
        f"seed={seed}",
        f"steps={a.steps}",
        f"eval.every_n_steps={a.every}",
        "eval.before=true",
        "eval.after=false",
        "export_hf=false",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null",
        "trainer.enable_checkpointing=false",
        "+trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(a.threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    with open(out / "train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{method} seed {seed} failed (exit {proc.returncode}); see {out}/train.log"
        )
    (out / "DONE").write_text(f"{tag} {time.perf_counter() - clock:.1f} s\n")
    print(
        f"  {method} seed {seed}: {time.perf_counter() - clock:.0f} s, load {load_average()}",
        flush=True,
    )
    return out


def read_run(run_dir: Path) -> dict:
    """Accuracy history (step, A_S, A_T) from metrics.json and the per-step fraction of
    groups with p in {0, 1} from the rollout records."""
    from mapo.analysis.records import read_records
    from mapo.analysis.tables import group_table

    data = json.loads((run_dir / "metrics.json").read_text())
    blocks = [data["before"], *data.get("history", [])] if "before" in data else data["history"]
    acc = [{"step": b["step"], "A_S": b["A_S"], "A_T": b["A_T"]} for b in blocks]
    groups = group_table(read_records(run_dir))
    degenerate = groups.assign(flat=groups.p.isin([0.0, 1.0])).groupby("step").flat.mean()
    return {"accuracy": acc, "frac_p01": {int(k): float(v) for k, v in degenerate.items()}}


def summarise(runs: dict[str, list[dict]], window: int) -> list[dict]:
    """Per method: final A_S / A_T (mean and spread over seeds) and p in {0,1} fraction at the
    start and the end (means over the first / last `window` steps)."""
    import numpy as np

    rows = []
    for method, seeds in runs.items():
        final_s = np.array([r["accuracy"][-1]["A_S"] for r in seeds])
        final_t = np.array([r["accuracy"][-1]["A_T"] for r in seeds])
        best_s = np.array([max(b["A_S"] for b in r["accuracy"]) for r in seeds])
        # first evaluated step with A^S >= 0.8, per seed (None: never)
        to_08 = [next((b["step"] for b in r["accuracy"] if b["A_S"] >= 0.8), None) for r in seeds]
        first, last = [], []
        for r in seeds:
            steps = sorted(r["frac_p01"])
            first.append(np.mean([r["frac_p01"][k] for k in steps[:window]]))
            last.append(np.mean([r["frac_p01"][k] for k in steps[-window:]]))
        rows.append(
            {
                "method": LABELS[method],
                "seeds": len(seeds),
                "final_step": seeds[0]["accuracy"][-1]["step"],
                "A_S": (final_s.mean(), final_s.std()),
                "A_T": (final_t.mean(), final_t.std()),
                "best_A_S": (best_s.mean(), best_s.std()),
                "steps_to_0.8": to_08,
                "p01_start": float(np.mean(first)),
                "p01_end": float(np.mean(last)),
            }
        )
    return rows


def table_md(rows: list[dict], a: argparse.Namespace) -> str:
    def pm(x):
        return f"{x[0]:.3f} ± {x[1]:.3f}"

    lines = [
        "# Learning curves on SynthEmo (tiny VLM, CPU)",
        "",
        f"Generated by `python -m benchmarks.curves --suite {a.suite}` ({a.steps} RL steps, "
        f"evaluation every "
        f"{a.every} steps, seeds {a.seeds}); see docs/benchmarks.md. Accuracy is greedy, "
        "mean ± std over seeds; A^S in-domain (synth_emo test), A^T the mean of the two "
        "shifted out-of-domain sets. p in {0,1}: share of groups whose G rollouts all failed "
        f"or all succeeded, mean over the first / last {a.window} steps.",
        "",
        f"![curves](benchmarks_curves{a.suffix}.png)",
        "",
        "| method | seeds | final step | A^S final | A^T final | best A^S | step A^S >= 0.8 "
        "(per seed) | p in {0,1} start | p in {0,1} end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['final_step']} | {pm(r['A_S'])} | "
            f"{pm(r['A_T'])} | {pm(r['best_A_S'])} | "
            f"{', '.join('-' if x is None else str(x) for x in r['steps_to_0.8'])} | "
            f"{r['p01_start']:.2f} | "
            f"{r['p01_end']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for method, seeds in runs.items():
        steps = [b["step"] for b in seeds[0]["accuracy"]]
        for ax, key in zip(axes[:2], ("A_S", "A_T")):
            ys = np.array([[b[key] for b in r["accuracy"]] for r in seeds])
            line = ax.plot(steps, ys.mean(0), label=LABELS[method])[0]
            ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        common = sorted(set.intersection(*(set(r["frac_p01"]) for r in seeds)))
        frac = np.array([[r["frac_p01"][k] for k in common] for r in seeds]).mean(0)
        axes[2].plot(common, _smooth(frac, 5), label=LABELS[method])
    titles = ("in-domain accuracy A^S", "out-of-domain accuracy A^T", "groups with p in {0, 1}")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(0, 1.02)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _smooth(x, k: int):
    import numpy as np

    if len(x) < k:
        return x
    return np.convolve(np.pad(x, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, "valid")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--suite",
        choices=list(SUITES),
        default="methods",
        help="methods: the advantage estimators; losses: MAPO under each policy "
        "loss; corrections: MAPO under each rollout-correction mode",
    )
    ap.add_argument("--methods", nargs="+", choices=list(LABELS), help="default: the suite's")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20, help="evaluate every k RL steps")
    ap.add_argument("--window", type=int, default=10, help="steps averaged for p in {0,1}")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="default: outputs/curves[_losses]")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: summarise the runs of this sweep that finished",
    )
    a = ap.parse_args(argv)
    runs_of, a.suffix = SUITES[a.suite]
    a.methods = a.methods or list(runs_of)
    a.out = a.out or ROOT / "outputs" / f"curves{a.suffix}"
    print(
        f"curves: {len(a.methods)} methods x {len(a.seeds)} seeds x {a.steps} steps, "
        f"{a.jobs} at a time; load average {load_average()}",
        flush=True,
    )
    jobs = [(m, s) for s in a.seeds for m in a.methods]  # seed-major: early seeds finish first
    if a.finished_only:
        jobs = [(m, s) for m, s in jobs if finished(m, s, a)]
        print(f"finished runs: {jobs}", flush=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        dirs = list(pool.map(lambda job: run_one(*job, a), jobs))
    runs: dict[str, list[dict]] = {}
    for (method, _), d in zip(jobs, dirs):
        runs.setdefault(method, []).append(read_run(d))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "curves.json").write_text(json.dumps(runs, indent=1))
    png, md = (
        a.docs / f"benchmarks_curves{a.suffix}.png",
        a.docs / f"benchmarks_curves{a.suffix}.md",
    )
    plot(runs, png)
    text = table_md(summarise(runs, a.window), a)
    md.write_text(text)
    print(text)
    print(f"wrote {png}, {md}, {a.out / 'curves.json'}; load average {load_average()}")


if __name__ == "__main__":
    main()
