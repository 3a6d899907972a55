"""The end-of-run summary train.py prints: the before/after table as `python -m
mapo.analysis.report` lays it out, then where everything is and the commands that use it (every
argument shell-quoted: a run folder's path may hold spaces)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from mapo.analysis.report import load_rows, to_markdown
from mapo.analysis.report_image import REPORT_NAME

# Overrides a resume command sets itself; the others are repeated so it runs the same config.
_RESUME_SETS = ("hydra.run.dir", "ckpt_path", "run_dir")


def resume_command(run_dir: Path, overrides: Sequence[str] = ()) -> str:
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _RESUME_SETS]
    args = [*kept, f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    return "python train.py " + " ".join(shlex.quote(a) for a in args)


def _table(run_dir: Path) -> str | None:
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    present = [tag for tag in ("before", "after") if tag in metrics]
    if not present:
        return None
    block = "both" if len(present) == 2 else present[0]
    table = to_markdown(load_rows(run_dir, block)).rstrip()
    reg = metrics.get("after", {}).get("regression")
    if reg:  # right before RL and wrong after (regressed), and the reverse (gained), greedy
        parts = [f"{n} {r['regressed']}/{r['gained']}" for n, r in reg["datasets"].items()]
        a = reg["all"]
        table += (
            f"\n\nregression rate {100 * a['regression_rate']:.2f} %, gain rate "
            f"{100 * a['gain_rate']:.2f} % of {a['prompts']} prompts (regressed/gained: "
            + ", ".join(parts)
            + ")"
        )
    return table


def run_summary(run_dir: str | Path, overrides: Sequence[str] = ()) -> str:
    """The summary text of a finished run in `run_dir` (`overrides`: the command line's)."""
    run_dir = Path(run_dir).resolve()
    lines = ["", f"Run finished: {run_dir}", ""]
    table = _table(run_dir)
    lines += [table, ""] if table else ["(no evaluation block in metrics.json)", ""]
    rows = []
    report = run_dir / REPORT_NAME
    if report.is_file():
        rows.append(
            (
                "report image",
                f"{report}   (redraw: python -m mapo.analysis.report "
                f"{shlex.quote(str(run_dir))} --plot)",
            )
        )
    if (run_dir / "tensorboard").is_dir():
        rows.append(
            ("TensorBoard", f"tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        rows.append(("checkpoint", str(last)))
        rows.append(("resume", resume_command(run_dir, overrides) + "   (add steps=N to extend)"))
    model = run_dir / "hf_model"
    if model.is_dir():
        rows.append(("exported model", str(model)))
        rows.append(("evaluate it", "python eval.py " + shlex.quote(f"model_to_eval={model}")))
    rows.append(("metrics", str(run_dir / "metrics.json")))
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"
