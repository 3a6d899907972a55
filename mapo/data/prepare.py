"""Convert a raw dataset download (or generate a synthetic task) into the common schema.

    python -m mapo.data.prepare geo3k --src RAW/geometry3k --out data/geo3k
    python -m mapo.data.prepare emoset --src RAW/EmoSet-118K --out data/emoset --seed 0
    python -m mapo.data.prepare emotion6 --src RAW/Emotion6 --out data/emotion6 --label-source folder
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
    if name not in REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(REGISTRY)}")
    source = REGISTRY[name]
    if source.needs_src and src is None:
        raise ValueError(f"{name} converts a raw download: pass --src (see docs/data.md).")
    opts = PrepareOptions(**options)
    return source.fn(Path(src) if src is not None else None, Path(out), opts)


def prepare_hint(dataset: str) -> str:
    """How to create the files of a dataset named in a config (data.name or an eval set)."""
    if dataset in REGISTRY and REGISTRY[dataset].needs_src:
        return (f"prepare it with `python -m mapo.data.prepare {dataset} --src RAW --out DIR` "
                "and pass data.root=DIR's parent (or set MAPO_DATA_DIR); see docs/data.md")  # fmt: skip
    return f"no converter is registered as {dataset!r}; see docs/data.md for the schema"


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
    p.add_argument("--n-train", type=int, help="training rows (EmoSet 2100, synth 2000)")
    p.add_argument("--n-test", type=int, help="test rows (EmoSet 2000, 0 = all; synth 400)")
    p.add_argument("--labels", help="comma-separated allowed labels (webemo / emotion6)")
    p.add_argument("--images-root", help="folder holding the images (JSON sources, WEBEmo)")
    p.add_argument(
        "--label-source",
        choices=["folder", "argmax"],
        default="folder",
        help="Emotion6 gold label: the image's folder or the most voted column",
    )
    p.add_argument(
        "--label-level",
        type=int,
        choices=[1, 2, 3],
        default=2,
        help="WEBEmo gold label: 1 sentiment, 2 category.txt level 2, 3 the 25 fine",
    )
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
            label_source=args.label_source,
            label_level=args.label_level,
        )
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    console.print(summary_table(args.name, args.out, result))
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    return 0


def summary_table(name: str, out, result: Converted) -> Table:
    """Rows written, dropped and changed (by reason) per split."""
    table = Table(title=f"{name} -> {out}")
    for col in ("split", "rows", "dropped", "changed", "file"):
        table.add_column(col)
    for split, path in result.paths.items():
        dropped = dict(result.skipped.get(split) or {})
        changed = dict(result.changed.get(split) or {})
        table.add_row(split, str(result.rows[split]), str(dropped or 0), str(changed or 0),
                      str(path))  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
