"""Results table in the layout of the paper's Tab. 2 / 3, from finished runs.

    python -m mapo.analysis.report RUN_DIR... [--csv out.csv] [--md out.md] [--block after] [--plot]

Each RUN_DIR holds metrics.json ({"before": BLOCK, "after": BLOCK, "config": {...}}, accuracies
as fractions, see `mapo.analysis.metrics.EvalMetrics.to_block`) and .hydra/config.yaml. Rows = runs,
columns = the in-domain dataset, each out-of-domain dataset, A^T and the average, in percent
with 2 decimals. Runs evaluated on different dataset layouts (math vs emotion) get one table each.
`--plot` also (re)draws each run's `RUN_DIR/report.png` (`mapo.analysis.report_image`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

BLOCK_KEYS = ("A_S", "A_T", "A_avg", "datasets", "in_domain", "out_of_domain")
BLOCKS = ("after", "before", "both")


@dataclass
class Row:
    label: str
    run_dir: str
    block: str  # "after" or "before"
    estimator: str
    in_domain: str
    out_of_domain: list[str]
    accuracies: dict[str, float | None]  # dataset -> fraction
    a_t: float | None
    a_avg: float | None

    @property
    def layout(self) -> tuple[str, ...]:
        return (self.in_domain, *self.out_of_domain)


def _load_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a run directory, and did its evaluation finish?"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was the run interrupted?") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_block(block: object, path: Path, name: str) -> dict:
    if not isinstance(block, dict):
        raise ValueError(f"{path}: {name!r} must be an object with keys {list(BLOCK_KEYS)}")
    missing = [k for k in BLOCK_KEYS if k not in block]
    if missing:
        raise ValueError(f"{path}: block {name!r} lacks keys {missing}")
    for dataset in [block["in_domain"], *block["out_of_domain"]]:
        if dataset not in block["datasets"]:
            raise ValueError(f"{path}: block {name!r} has no accuracy for dataset {dataset!r}")
    values = [block["A_S"], block["A_T"], block["A_avg"], *block["datasets"].values()]
    for v in values:
        if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(
                f"{path}: block {name!r} holds {v!r}; accuracies must be fractions in [0, 1] "
                "(or null where not evaluated)"
            )
    return block


def _plain(value: object) -> str | None:
    """A config value usable as a name: not missing, not an unresolved ${...} interpolation."""
    if value is None or not isinstance(value, (str, int, float)):
        return None
    text = str(value)
    return None if "${" in text or text == "???" else text


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception as err:  # omegaconf/yaml raise several types; name the file either way
        raise ValueError(f"{path} is not a readable YAML config: {err}") from err


def run_names(run_dir: Path, metrics: dict) -> tuple[str | None, str | None]:
    """(experiment name, estimator) of a run.

    Hydra saves .hydra/config.yaml unresolved (experiment_name is an interpolation of the chosen
    experiment there), so values resolved by the run itself in metrics.json["config"] come
    first, then plain values of .hydra/config.yaml, then the choice in .hydra/hydra.yaml.
    """
    saved = metrics.get("config") or {}
    cfg = _yaml(run_dir / ".hydra" / "config.yaml")
    choices = (
        (_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime") or {}
    ).get("choices") or {}
    algorithm = cfg.get("algorithm") or {}
    experiment = (
        _plain(saved.get("experiment_name"))
        or _plain(cfg.get("experiment_name"))
        or _plain(choices.get("experiment"))
    )
    estimator = (
        _plain(saved.get("estimator"))
        or _plain((saved.get("algorithm") or {}).get("estimator"))
        or _plain(algorithm.get("estimator"))
    )
    return experiment, estimator


def load_rows(run_dir: str | Path, block: str = "after", label_by: str = "experiment") -> list[Row]:
    """The table rows of one run: its "after" block, its "before" block, or both."""
    run_dir = Path(run_dir)
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    metrics = _load_metrics(run_dir)
    experiment, estimator = run_names(run_dir, metrics)
    estimator = estimator or "?"
    names = {
        "experiment": experiment or (estimator if estimator != "?" else run_dir.name),
        "estimator": estimator,
        "dir": run_dir.name,
    }
    if label_by not in names:
        raise ValueError(f"label_by must be one of {sorted(names)}, got {label_by!r}")
    rows = []
    for which in ("before", "after") if block == "both" else (block,):
        if which not in metrics:
            raise ValueError(f"{run_dir / 'metrics.json'} has no {which!r} block")
        b = _check_block(metrics[which], run_dir / "metrics.json", which)
        label = names[label_by] + (" (before)" if block == "both" and which == "before" else "")
        rows.append(
            Row(
                label,
                str(run_dir),
                which,
                estimator,
                b["in_domain"],
                list(b["out_of_domain"]),
                dict(b["datasets"]),
                b["A_T"],
                b["A_avg"],
            )
        )
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def tables(rows: Sequence[Row]) -> list[tuple[list[str], list[list[str]]]]:
    """Group rows by dataset layout: [(header, body rows)], formatted strings."""
    layouts: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        layouts.setdefault(row.layout, []).append(row)
    out = []
    for layout, members in layouts.items():
        header = ["Method", *layout, "A^T", "Avg"]
        body = [
            [r.label, *(_pct(r.accuracies[d]) for d in layout), _pct(r.a_t), _pct(r.a_avg)]
            for r in members
        ]
        out.append((header, body))
    return out


def to_markdown(rows: Sequence[Row]) -> str:
    parts = []
    for header, body in tables(rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(rows: Sequence[Row]) -> str:
    """One CSV for all runs: run, block, estimator, in-domain name, then percent columns (the
    union of datasets in order of appearance, empty where a run lacks one), A^T, Avg."""
    datasets = list(dict.fromkeys(d for r in rows for d in r.layout))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["Method", "run_dir", "block", "estimator", "in_domain", *datasets, "A^T", "Avg"]
    )
    for r in rows:
        accs = [_pct(r.accuracies[d]) if d in r.accuracies else "" for d in datasets]
        writer.writerow(
            [
                r.label,
                r.run_dir,
                r.block,
                r.estimator,
                r.in_domain,
                *accs,
                _pct(r.a_t),
                _pct(r.a_avg),
            ]
        )
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mapo.analysis.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    parser.add_argument(
        "--block",
        choices=BLOCKS,
        default="after",
        help="which evaluation: after training, before (the Vanilla row), both",
    )
    parser.add_argument(
        "--label",
        choices=("experiment", "estimator", "dir"),
        default="experiment",
        help="row name: experiment_name, algorithm.estimator, or the folder name",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also draw RUN_DIR/report.png for each run (curves, Fig. 1, lambda/p)",
    )
    args = parser.parse_args(argv)
    try:
        rows = [row for d in args.run_dirs for row in load_rows(d, args.block, args.label)]
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    markdown = to_markdown(rows)
    print(markdown, end="")
    if args.md:
        args.md.write_text(markdown)
    if args.csv:
        args.csv.write_text(to_csv(rows))
    if args.plot:
        from mapo.analysis.report_image import write_report_image

        for run_dir in args.run_dirs:
            print(f"wrote {write_report_image(run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
