"""Convert a raw dataset download (or generate a synthetic task) into the common schema.

    python -m mapo.data.prepare geo3k --src RAW/geometry3k --out data/geo3k
    python -m mapo.data.prepare emoset --src RAW/EmoSet-118K --out data/emoset --seed 0
    python -m mapo.data.prepare synth_emo --out data/synth_emo --n-train 2000 --n-test 400

Writes ``OUT/<split>.parquet``; point the config at them: ``data.train=OUT/train.parquet``.
docs/data.md describes every dataset's expected raw layout.
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
    p.add_argument("--images-root", help="folder image paths are relative to (JSON sources)")
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
        )
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    table = Table(title=f"{args.name} -> {args.out}")
    for col in ("split", "rows", "dropped", "file"):
        table.add_column(col)
    for split, path in result.paths.items():
        dropped = result.skipped.get(split) or {}
        table.add_row(split, str(result.rows[split]), str(dict(dropped) or 0), str(path))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
