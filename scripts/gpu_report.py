"""The summary of scripts/gpu_check.sh: OUT_DIR/gpu_check.json from what the phases left.

    python scripts/gpu_report.py OUT_DIR [--model DIR] [--rollouts 16] [--total-s S]

Reads OUT_DIR/phases.jsonl (status of each phase), pytest.xml (each GPU test), arch7b.json
(the 7B step's figures) or, when that run was cut short, arch7b_steps.jsonl (the steps that
finished), and nvidia_smi.csv (GPU memory sampled every second). Anything missing is recorded
as missing; the report itself never fails on a failed phase.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def pytest_results(path: Path) -> dict:
    """Outcome, seconds and failure message of every test case in a JUnit XML file."""
    if not path.is_file():
        return {"missing": str(path)}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (node.get("message") or node.text or "")[:2000]
        out = case.find("system-out")
        tests.append({"name": case.get("name"), "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "message": message,
                      "stdout": (out.text or "")[-500:] if out is not None else ""})  # fmt: skip
    counts = {
        k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")
    }
    return {**counts, "tests": tests}


def arch7b_figures(out_dir: Path, model: Path | None, rollouts: int) -> dict:
    """The finished run's summary, else figures of the steps the JSON lines hold."""
    done = out_dir / "arch7b.json"
    if done.is_file():
        return {"complete": True, **json.loads(done.read_text())}
    steps = read_jsonl(out_dir / "arch7b_steps.jsonl")
    if not steps:
        return {"complete": False, "steps": [], "note": "no RL step finished"}
    from benchmarks.arch7b import step_figures
    from benchmarks.mfu import param_counts_of_folder

    counts = param_counts_of_folder(model) if model is not None else None
    figures = [step_figures(m, rollouts, counts["flops"], recompute=True) if counts else {}
               for m in steps]  # fmt: skip
    return {"complete": False, "params": counts, "steps": steps, "per_step": figures,
            "note": "cut short: figures of the finished steps (step 0 includes warm-up)"}  # fmt: skip


def nvidia_smi_peak(path: Path) -> dict:
    """Peak memory.used (MiB) and mean utilisation over the samples nvidia-smi wrote."""
    used, util = [], []
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = [p.strip() for p in line.split(",")]
        try:
            used.append(float(parts[1].split()[0]))
            util.append(float(parts[2].split()[0]))
        except (IndexError, ValueError):
            continue
    if not used:
        return {"samples": 0}
    return {"samples": len(used), "peak_memory_used_mib": max(used),
            "mean_utilisation_pct": sum(util) / len(util)}  # fmt: skip


def report(out_dir: Path, model: Path | None, rollouts: int, total_s: float | None) -> dict:
    phases = read_jsonl(out_dir / "phases.jsonl")
    tests = pytest_results(out_dir / "pytest.xml")
    arch = arch7b_figures(out_dir, model, rollouts)
    ok = (bool(phases) and all(p.get("rc") == 0 for p in phases if p["phase"] != "fused_adam")
          and not tests.get("failed") and not tests.get("error") and arch.get("complete", False))  # fmt: skip
    return {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "total_s": total_s, "ok": ok, "phases": phases, "pytest": tests, "arch7b": arch,
            "nvidia_smi": nvidia_smi_peak(out_dir / "nvidia_smi.csv")}  # fmt: skip


def headline(r: dict) -> str:
    a, t = r["arch7b"], r["pytest"]
    lines = [f"ok={r['ok']}  total {r['total_s']} s"]
    lines += [f"  {p['phase']:10s} rc={p.get('rc')} {p.get('seconds')} s" for p in r["phases"]]
    lines.append(f"  pytest: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('error', 0)} errors, {t.get('skipped', 0)} skipped")  # fmt: skip
    if a.get("complete"):
        lines.append(f"  7B: train {a['train_tokens_per_s']:.0f} tok/s, MFU {a['mfu']:.1%} "
                     f"(HFU {a['hfu']:.1%}), generation {a['generation_tokens_per_s']:.1f} tok/s, "
                     f"{a['s_per_step']:.1f} s/step, peak {a.get('gpu_peak_allocated_gib', 0):.1f} GiB")  # fmt: skip
    else:
        lines.append(f"  7B: incomplete ({a.get('note')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", type=Path, help="the 7B folder (parameter counts, partial runs)")
    ap.add_argument("--rollouts", type=int, default=16, help="prompts x group of the 7B step")
    ap.add_argument("--total-s", type=float)
    a = ap.parse_args(argv)
    r = report(a.out_dir, a.model, a.rollouts, a.total_s)
    (a.out_dir / "gpu_check.json").write_text(json.dumps(r, indent=1))
    print(headline(r))


if __name__ == "__main__":
    main()
