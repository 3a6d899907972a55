"""Rollout records: table building, atomic per-step parquet writes, reading back."""

import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from mapo.algorithm.advantages import compute_advantages, compute_advantages_with_stats
from mapo.analysis.records import COLUMNS, RecordWriter, read_records, record_path, records_table

torch.set_num_threads(1)


def make_table(
    step=0,
    groups=((0.9, 1.0, 1.0, 1.0), (0.0, 1.0, 0.1, 1.0)),
    estimator="mapo",
    std="population",
    gid_offset=0,
    interleave=True,
):
    """Rows of several groups; interleaved so that row order != group order."""
    rewards, gids = [], []
    for g, rs in enumerate(groups):
        rewards += list(rs)
        gids += [g + gid_offset] * len(rs)
    if interleave:  # round-robin over groups: the trainer may hand rows in any order
        order = sorted(range(len(gids)), key=lambda i: (i - gids.index(gids[i]), gids[i]))
        rewards, gids = [rewards[i] for i in order], [gids[i] for i in order]
    r = torch.tensor(rewards, dtype=torch.float64)
    g = torch.tensor(gids)
    result = compute_advantages_with_stats(estimator, r, g, std=std, eps=1e-6)
    n = len(r)
    table = records_table(
        step=step,
        group_ids=g,
        prompt_ids=[f"q{x}" for x in gids],
        sources=["geo3k"] * n,
        rewards={"overall": r, "format": torch.ones(n), "accuracy": (r == 1).double()},
        result=result,
        estimator=estimator,
        response_lengths=torch.arange(n) + 5,
        truncated=torch.zeros(n, dtype=torch.bool),
        std=std,
        texts=[f"answer {i}" for i in range(n)],
        eps=1e-6,
    )
    return table, r, g, result


def test_records_table_columns_and_group_values():
    table, r, g, result = make_table()
    assert list(table) == list(COLUMNS)
    df = pd.DataFrame(table)
    # rollout_index counts within each group in the order given
    for _, part in df.groupby("group_id"):
        assert part["rollout_index"].tolist() == list(range(len(part)))
    first = df[df.group_id == 0]
    assert first["n_success"].unique().tolist() == [3]
    assert first["p"].unique().tolist() == [0.75]
    assert first["lam"].unique().tolist() == pytest.approx([0.25])
    assert first["mu"].unique().tolist() == pytest.approx([0.975])
    assert df["success"].tolist() == (r == 1).tolist()
    torch.testing.assert_close(torch.tensor(df["advantage"]), result.advantages)
    grpo = compute_advantages("grpo", r, g, std="population", eps=1e-6)
    torch.testing.assert_close(torch.tensor(df["advantage_grpo"]), grpo)
    assert df.loc[(df.group_id == 0) & (df.reward_overall == 0.9), "advantage_grpo"].item() == (
        pytest.approx(-(3**0.5), abs=1e-4)
    )


def test_advantage_grpo_follows_std_mode():
    table, r, g, _ = make_table(std="unbiased")
    expected = compute_advantages("grpo", r, g, std="unbiased", eps=1e-6)
    torch.testing.assert_close(torch.tensor(table["advantage_grpo"], dtype=torch.float64), expected)


def test_write_read_roundtrip_sorted_across_ranks(tmp_path):
    w0, w1 = RecordWriter(tmp_path, rank=0), RecordWriter(tmp_path, rank=1)
    for step in (1, 0):  # written out of order on purpose
        w1.write(step, make_table(step, gid_offset=10)[0])
        w0.write(step, make_table(step)[0])
    df = read_records(tmp_path)
    assert len(df) == 4 * 8
    keys = list(zip(df.step, df.group_id, df.rollout_index))
    assert keys == sorted(keys)
    assert sorted(df.group_id.unique()) == [0, 1, 10, 11]
    assert df["text"].isna().all()  # text is off by default
    assert df.dtypes["step"] == "int64" and df.dtypes["success"] == "bool"


def test_text_kept_when_enabled(tmp_path):
    RecordWriter(tmp_path, with_text=True).write(0, make_table()[0])
    df = read_records(tmp_path)
    assert sorted(df["text"]) == sorted(f"answer {i}" for i in range(8))


def test_crash_leftovers_are_ignored_and_earlier_steps_intact(tmp_path):
    writer = RecordWriter(tmp_path)
    writer.write(0, make_table(0)[0])
    writer.write(1, make_table(1)[0])
    before = read_records(tmp_path)
    folder = tmp_path / "records"
    # 1) a complete temp file whose rename never happened (crash between fsync and replace)
    pq.write_table(
        pq.read_table(record_path(tmp_path, 1)), folder / ".step_000002_rank0.parquet.tmp-1-a"
    )
    # 2) a truncated temp file (crash during the write)
    data = record_path(tmp_path, 1).read_bytes()
    (folder / ".step_000003_rank0.parquet.tmp-1-b").write_bytes(data[: len(data) // 2])
    after = read_records(tmp_path)
    pd.testing.assert_frame_equal(before, after)
    assert sorted(after.step.unique()) == [0, 1]


def test_failed_write_leaves_no_file_and_keeps_old_ones(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path)
    writer.write(0, make_table(0)[0])
    original = record_path(tmp_path, 0).read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        writer.write(1, make_table(1)[0])
    monkeypatch.undo()
    assert record_path(tmp_path, 0).read_bytes() == original
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["step_000000_rank0.parquet"]
    assert read_records(tmp_path).step.unique().tolist() == [0]


def test_rewriting_a_step_replaces_it_whole(tmp_path):
    writer = RecordWriter(tmp_path)
    writer.write(0, make_table(0)[0])
    writer.write(0, make_table(0, groups=((1.0, 0.0),))[0])
    assert len(read_records(tmp_path)) == 2


def test_schema_errors_are_clear(tmp_path):
    writer = RecordWriter(tmp_path)
    table = make_table()[0]
    with pytest.raises(ValueError, match=r"missing columns \['advantage'\]"):
        writer.write(0, {k: v for k, v in table.items() if k != "advantage"})
    with pytest.raises(ValueError, match=r"unknown columns \['advantgae'\]"):
        writer.write(0, {**table, "advantgae": table["advantage"]})
    with pytest.raises(ValueError, match="reward_overall"):
        writer.write(0, {**table, "reward_overall": ["high"] * 8})
    with pytest.raises(ValueError, match="different lengths"):
        writer.write(0, {**table, "source": ["geo3k"]})
    with pytest.raises(ValueError, match=r"step=3\) got rows of steps \[0\]"):
        writer.write(3, table)
    assert not list((tmp_path / "records").iterdir())


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no rollout records"):
        read_records(tmp_path)
    RecordWriter(tmp_path).write(0, make_table()[0])
    bad = record_path(tmp_path, 5)
    df = pd.DataFrame(make_table(5)[0]).drop(columns=["lam"])
    df.to_parquet(bad)
    with pytest.raises(ValueError, match=r"step_000005_rank0.parquet lacks columns \['lam'\]"):
        read_records(tmp_path)
    df = pd.DataFrame(make_table(5)[0])
    df["step"] = df["step"].astype("float64")
    df.to_parquet(bad)
    with pytest.raises(ValueError, match="column 'step' has type double"):
        read_records(tmp_path)


def test_logprob_sums_roundtrip_and_default_to_null(tmp_path):
    table, r, _, _ = make_table()
    n = len(r)
    assert table["sampler_logprob_sum"] == [None] * n  # no log-probs given: null, not 0
    RecordWriter(tmp_path).write(0, table)
    assert read_records(tmp_path).sampler_logprob_sum.isna().all()
    table = make_table(step=1)[0]
    table["sampler_logprob_sum"] = [-1.5 - i for i in range(n)]
    table["trainer_logprob_sum"] = [-1.25 - i for i in range(n)]
    RecordWriter(tmp_path).write(1, table)
    df = read_records(tmp_path)
    one = df[df.step == 1]
    assert sorted(one.sampler_logprob_sum) == sorted(-1.5 - i for i in range(n))
    assert ((one.trainer_logprob_sum - one.sampler_logprob_sum) == 0.25).all()


def test_files_written_before_the_logprob_columns_still_read(tmp_path):
    RecordWriter(tmp_path).write(0, make_table()[0])
    path = record_path(tmp_path, 0)
    old = pq.read_table(path).drop_columns(["sampler_logprob_sum", "trainer_logprob_sum"])
    pq.write_table(old, path)
    df = read_records(tmp_path)
    assert len(df) == 8 and df.trainer_logprob_sum.isna().all()
