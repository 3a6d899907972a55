"""Per-rollout records: one parquet file per training step and rank, written atomically.

Layout: ``RUN_DIR/records/step_{step:06d}_rank{rank}.parquet``, one row per rollout (columns in
`SCHEMA`). The analysis notebooks and `mapo.analysis.tables` read them back with `read_records`.

Atomic write: the table goes to a hidden temp file in the same folder, is fsynced, then renamed
over the final name with `os.replace` (atomic on POSIX within one file system) and the folder is
fsynced. A crash mid-write leaves at most a stray ``.step_...tmp-*`` file, which the reader
ignores; files of earlier steps are never opened for writing again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from mapo.algorithm.advantages import AdvantageResult, StdMode, compute_advantages, is_success
from mapo.atomic import atomic_write

RECORDS_DIR = "records"
FILE_RE = re.compile(r"^step_(\d{6,})_rank(\d+)\.parquet$")

# Column -> arrow type. Per-group values (mu .. group_size) are repeated on every row.
SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("group_id", pa.int64()),  # unique per prompt within a step (all ranks)
        ("prompt_id", pa.string()),
        ("source", pa.string()),  # dataset name
        ("rollout_index", pa.int64()),  # 0..G-1 within the group
        ("reward_overall", pa.float64()),
        ("reward_format", pa.float64()),
        ("reward_accuracy", pa.float64()),
        ("success", pa.bool_()),  # overall == 1
        ("advantage", pa.float64()),  # the run's estimator
        ("advantage_grpo", pa.float64()),  # plain GRPO z-score of the same rewards
        ("mu", pa.float64()),
        ("sigma", pa.float64()),
        ("p", pa.float64()),
        ("lam", pa.float64()),
        ("n_success", pa.int64()),
        ("group_size", pa.int64()),
        ("response_length", pa.int64()),  # tokens
        ("truncated", pa.bool_()),
        ("estimator", pa.string()),
        ("text", pa.string()),  # completion text, null unless the writer has with_text=True
        # sum_t log-prob of the completion under the sampler (engine) and under the trainer at
        # the start of the step (pi_old); null when the engine reports no log-probs. Their
        # difference is the sequence log-ratio of docs/rollout_correction.md.
        ("sampler_logprob_sum", pa.float64()),
        ("trainer_logprob_sum", pa.float64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Columns that may be absent: text (off by default) and the log-prob sums (records written
# before they existed read back as null).
OPTIONAL = ("text", "sampler_logprob_sum", "trainer_logprob_sum")


def record_path(run_dir: str | os.PathLike, step: int, rank: int = 0) -> Path:
    return Path(run_dir) / RECORDS_DIR / f"step_{step:06d}_rank{rank}.parquet"


def _to_list(value) -> list:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


def _to_arrow(table: Mapping[str, object], with_text: bool) -> pa.Table:
    """Validate `table` against SCHEMA and convert; errors name the offending column."""
    missing = [c for c in COLUMNS if c not in table and c not in OPTIONAL]
    extra = sorted(set(table) - set(COLUMNS))
    if missing or extra:
        raise ValueError(
            f"rollout record table does not match the schema: missing columns {missing}, "
            f"unknown columns {extra}. Build it with mapo.analysis.records.records_table(...)."
        )
    lists = {c: _to_list(v) for c, v in table.items() if v is not None}
    lengths = {c: len(v) for c, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"rollout record columns have different lengths: {lengths}")
    n = len(lists["step"])
    arrays = []
    for name in COLUMNS:
        if name == "text" and (not with_text or "text" not in lists):
            values = [None] * n  # text is off by default (it dominates the file size)
        elif name not in lists:  # an optional column left out
            values = [None] * n
        else:
            values = lists[name]
        try:
            arrays.append(pa.array(values, type=SCHEMA.field(name).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
            raise ValueError(
                f"rollout record column {name!r} cannot be stored as {SCHEMA.field(name).type}: "
                f"{err}"
            ) from err
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class RecordWriter:
    """Writes one parquet file per (step, rank) under ``run_dir/records``.

    Each rank writes its own rows (no communication); `read_records` merges the ranks.
    """

    def __init__(self, run_dir: str | os.PathLike, rank: int = 0, with_text: bool = False):
        self.dir = Path(run_dir) / RECORDS_DIR
        self.rank = int(rank)
        self.with_text = with_text
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, table: Mapping[str, Sequence | Tensor | np.ndarray]) -> Path:
        arrow = _to_arrow(table, self.with_text)
        steps = set(arrow.column("step").to_pylist())
        if steps - {step}:
            raise ValueError(f"RecordWriter.write(step={step}) got rows of steps {sorted(steps)}")
        final = record_path(self.dir.parent, step, self.rank)
        # Hidden temp name (mapo.atomic): the reader's pattern never matches it, so a crash
        # here leaves only an ignored stray file.
        atomic_write(final, lambda f: pq.write_table(arrow, f))
        return final


def read_records(run_dir: str | os.PathLike) -> pd.DataFrame:
    """All steps and ranks of a run, sorted by (step, group_id, rollout_index).

    Only files named ``step_XXXXXX_rankR.parquet`` are read: temp files of an interrupted write
    are ignored. Raises FileNotFoundError when the run has no records.
    """
    folder = Path(run_dir) / RECORDS_DIR
    files = sorted(p for p in folder.glob("*.parquet") if FILE_RE.match(p.name))
    if not files:
        raise FileNotFoundError(
            f"no rollout records in {folder} (expected files step_XXXXXX_rankR.parquet); "
            "was the run trained with rollout record writing enabled?"
        )
    frames = []
    for path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"rollout record file {path} is unreadable: {err}") from err
        table = _check_file(path, table)
        frames.append(table.cast(SCHEMA).to_pandas())
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["step", "group_id", "rollout_index"], kind="stable").reset_index(
        drop=True
    )


def _check_file(path: Path, table: pa.Table) -> pa.Table:
    """The table with the schema's columns (optional ones filled with nulls when absent)."""
    for name in OPTIONAL:
        if name not in table.column_names:
            table = table.append_column(
                SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type)
            )
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"rollout record file {path} lacks columns {missing}")
    table = table.select(list(COLUMNS))
    for field in SCHEMA:
        if table.schema.field(field.name).type != field.type:
            raise ValueError(
                f"rollout record file {path}: column {field.name!r} has type "
                f"{table.schema.field(field.name).type}, expected {field.type}"
            )
    step = int(FILE_RE.match(path.name).group(1))
    steps = set(table.column("step").to_pylist())
    if steps - {step}:
        raise ValueError(f"rollout record file {path} holds rows of steps {sorted(steps)}")
    return table


def _rollout_index(group_ids: Tensor) -> Tensor:
    """Position of each rollout within its group, in the order given: [N] int64."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    order = torch.argsort(inverse, stable=True)  # rows grouped, original order kept inside
    sorted_inv = inverse[order]
    starts = torch.searchsorted(sorted_inv, sorted_inv, right=False)  # first row of each group
    index = torch.empty_like(inverse)
    index[order] = torch.arange(len(order)) - starts
    return index


def _per_group_columns(result: AdvantageResult) -> dict[str, Tensor]:
    """The group statistics of each rollout's group, one value per rollout."""
    s = result.stats
    return {
        "mu": s.expand(s.mu),
        "sigma": s.expand(s.sigma),
        "p": s.expand(s.p),
        "lam": s.expand(s.lam),
        "n_success": s.expand(s.n_success).round().to(torch.int64),
        "group_size": s.expand(s.size).round().to(torch.int64),
    }


def records_table(
    *,
    step: int,
    group_ids: Tensor,
    prompt_ids: Sequence[str],
    sources: Sequence[str],
    rewards: Mapping[str, Tensor],
    result: AdvantageResult,
    estimator: str,
    response_lengths: Tensor,
    truncated: Tensor,
    success: Tensor | None = None,
    std: StdMode,
    eps: float,
    texts: Sequence[str] | None = None,
    logprob_sums: Mapping[str, Tensor] | None = None,
) -> dict[str, list]:
    """Build the per-rollout record table of one step from the trainer's tensors.

    group_ids [N], response_lengths [N], truncated [N] (bool); prompt_ids / sources: N strings.
    rewards: {"overall", "format", "accuracy"} -> [N] (mapo.rewards' keys).
    result: what `compute_advantages_with_stats` returned for these rows (same order); its
        stats give mu, sigma, p, lambda, N and G keyed by group id.
    success: defaults to overall == 1, as in the advantage computation.
    std, eps: the run's settings; `advantage_grpo` is the plain GRPO z-score recomputed with
        them, so runs of every estimator can be compared with GRPO on their own rollouts.
    rollout_index is the position within the group in the order given.
    logprob_sums: {"sampler_logprob_sum", "trainer_logprob_sum"} -> [N]
        (mapo.algorithm.rollout_correction.StepMismatch.seq_logprobs), or None (null columns).
    """
    overall = rewards["overall"].detach().cpu().to(torch.float64)
    gids = group_ids.detach().cpu().to(torch.int64)
    if success is None:
        success = is_success(overall)
    adv_grpo = compute_advantages("grpo", overall, gids, success=success.cpu(), eps=eps, std=std)
    per_group = _per_group_columns(result)
    n = overall.numel()
    return {
        "step": [int(step)] * n,
        "group_id": gids.tolist(),
        "prompt_id": [str(x) for x in prompt_ids],
        "source": [str(x) for x in sources],
        "rollout_index": _rollout_index(gids).tolist(),
        "reward_overall": overall.tolist(),
        "reward_format": _to_list(rewards["format"].to(torch.float64)),
        "reward_accuracy": _to_list(rewards["accuracy"].to(torch.float64)),
        "success": _to_list(success.to(torch.bool)),
        "advantage": _to_list(result.advantages.to(torch.float64)),
        "advantage_grpo": adv_grpo.tolist(),
        **{k: _to_list(v) for k, v in per_group.items()},
        "response_length": _to_list(response_lengths.to(torch.int64)),
        "truncated": _to_list(truncated.to(torch.bool)),
        "estimator": [estimator] * n,
        "text": list(texts) if texts is not None else [None] * n,
        **{
            k: _to_list(logprob_sums[k].to(torch.float64)) if logprob_sums else [None] * n
            for k in ("sampler_logprob_sum", "trainer_logprob_sum")
        },
    }
