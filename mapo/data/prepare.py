"""Convert a raw dataset download (or generate a synthetic task) into the common schema.

    python -m mapo.data.prepare geo3k --src RAW/geometry3k --out data/geo3k
    python -m mapo.data.prepare emoset --src RAW/EmoSet-118K --out data/emoset --seed 0
    python -m mapo.data.prepare emotion6 --src RAW/Emotion6 --out data/emotion6 \
        --label-source folder
    python -m mapo.data.prepare synth_emo --out data/synth_emo --n-train 2000 --n-test 400

Writes ``OUT/<split>.parquet``; point the config at them: ``data.train=OUT/train.parquet``.
The summary counts, per split, the rows written, dropped and changed (by reason).
docs/data.md describes every dataset's published layout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mapo.data.sources import REGISTRY, Converted, PrepareOptions


def prepare(name: str, src: str | Path | None, out: str | Path, **options) -> Converted:
    """Run the converter registered as ``name``; options are ``PrepareOptions`` fields."""
    source = REGISTRY[name]  # an unknown name fails, listing the known ones
    if source.needs_src and src is None:
        raise ValueError(f"{name} converts a raw download: pass --src (see docs/data.md).")
    opts = PrepareOptions(**options)
    return source.fn(Path(src) if src is not None else None, Path(out), opts)


def prepare_hint(dataset: str) -> str:
    """How to create the files of a dataset named in a config (data.name or an eval set)."""
    if dataset in REGISTRY:
        src = " --src RAW" if REGISTRY[dataset].needs_src else ""
        return (
            f"prepare it with `python -m mapo.data.prepare {dataset}{src} --out DIR` and "
            "pass data.root=DIR's parent (or set MAPO_DATA_DIR); see docs/data.md"
        )
    return (
        f"no converter is registered as {dataset!r} (known: {sorted(REGISTRY)}); write the "
        "schema of docs/data.md, e.g. `python -m mapo.data.prepare NAME --src RAW --out DIR`"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mapo.data.prepare",
        description="Convert a dataset to the MAPO parquet schema (docs/data.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="datasets:\n"
        + "\n".join(f"  {n:<11} {s.help}" for n, s in sorted(REGISTRY.items())),
    )
    p.add_argument("name", choices=sorted(REGISTRY), metavar="NAME", help="dataset to prepare")
    p.add_argument("--src", help="raw download (file or folder); not needed for synth_*")
    p.add_argument("--out", required=True, help="output folder for <split>.parquet")
    p.add_argument("--seed", type=int, default=0, help="sampling / generation seed")
    p.add_argument("--n-train", type=int, help="training rows (EmoSet 2100; synth: its YAML's)")
    p.add_argument(
        "--n-test", type=int, help="test rows (EmoSet 2000, WEBEmo all, 0 = all; synth: its YAML's)"
    )
    p.add_argument("--labels", help="comma-separated allowed labels (webemo / emotion6)")
    p.add_argument("--images-root", help="folder holding the images (JSON sources, WEBEmo)")
    defaults = PrepareOptions()  # one home for the defaults
    p.add_argument(
        "--label-source",
        choices=["folder", "argmax"],
        help="Emotion6 gold label: the image's folder or the most voted column "
        f"(default {defaults.label_source})",
    )
    p.add_argument(
        "--label-level",
        type=int,
        choices=[1, 2, 3],
        help="WEBEmo gold label: 1 sentiment, 2 category.txt level 2, 3 the 25 fine "
        f"(default {defaults.label_level})",
    )
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _given(args: argparse.Namespace, *names: str) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.n_train is not None and args.n_train < 1:  # 0 would write no rows and exit 0
        parser.error(f"--n-train {args.n_train}: give at least 1 row, or leave it out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        result = prepare(
            args.name,
            args.src,
            args.out,
            seed=args.seed,
            n_train=args.n_train,
            n_test=args.n_test,
            labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
            images_root=Path(args.images_root) if args.images_root else None,
            on_bad_row=args.on_bad_row,
            progress=not args.no_progress,
            **_given(args, "label_source", "label_level"),  # else PrepareOptions' defaults
        )
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    console.print(summary_table(args.name, args.out, result))
    for line in summary_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def summary_table(name: str, out, result: Converted) -> Table:
    """Rows written and dropped, and changes made (a row can have several), per split; the
    reasons follow in summary_lines."""
    table = Table(title=f"{name} -> {out}")
    for col in ("split", "rows", "dropped", "changes", "file"):
        table.add_column(col)
    for split, path in result.paths.items():
        dropped = sum((result.skipped.get(split) or {}).values())
        changed = sum((result.changed.get(split) or {}).values())
        table.add_row(split, str(result.rows[split]), str(dropped), str(changed), str(path))
    return table


def summary_lines(result: Converted) -> list[str]:
    """'<split> dropped|changed: reason=count, ...' per split, then the converter's notes."""
    lines = []
    for split in result.paths:
        for what, counts in (("dropped", result.skipped), ("changed", result.changed)):
            if counts.get(split):
                reasons = ", ".join(f"{r}={n}" for r, n in counts[split].most_common())
                lines.append(f"{split} {what}: {reasons}")
    return lines + [f"note: {note}" for note in result.notes]


if __name__ == "__main__":
    sys.exit(main())
