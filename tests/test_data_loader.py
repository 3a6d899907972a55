"""load_split: parquet files, globs, save_to_disk folders; clear errors for missing data."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo.data.loader import load_split
from mapo.data.schema import BadRowError, SchemaError, rows_to_table, write_rows


def png(colour=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), colour).save(buf, format="PNG")
    return buf.getvalue()


def rows(n, prefix="r", **over):
    return [
        {
            "id": f"{prefix}{i}",
            "images": [{"bytes": png(), "path": None}],
            "problem": f"What is {i} + 1?",
            "answer": str(i + 1),
            "choices": None,
            "source": "unit",
            "task": "math",
            **over,
        }
        for i in range(n)
    ]


def test_parquet_file(tmp_path):
    path = write_rows(rows(3), tmp_path / "train.parquet")
    split = load_split(path, on_bad_row="error")
    assert len(split) == 3 and split.num_skipped == 0 and split.files == [str(path)]
    assert split[2]["answer"] == "3" and [r["id"] for r in split] == ["r0", "r1", "r2"]


def test_parquet_glob_concatenates_in_name_order(tmp_path):
    write_rows(rows(2, "a"), tmp_path / "train-00001.parquet")
    write_rows(rows(3, "b"), tmp_path / "train-00000.parquet")
    split = load_split(str(tmp_path / "train-*.parquet"), on_bad_row="error")
    assert [r["id"] for r in split][:3] == ["b0", "b1", "b2"] and len(split) == 5


def test_glob_with_ids_repeated_across_files_fails(tmp_path):
    write_rows(rows(2), tmp_path / "x-0.parquet")
    write_rows(rows(2), tmp_path / "x-1.parquet")
    with pytest.raises(ValueError, match="unique"):
        load_split(str(tmp_path / "x-*.parquet"), on_bad_row="error")


def test_save_to_disk_folder(tmp_path):
    import datasets

    ds = datasets.Dataset(rows_to_table(rows(4)))
    ds.save_to_disk(str(tmp_path / "disk"))
    split = load_split(tmp_path / "disk", on_bad_row="error")
    assert len(split) == 4 and split[0]["images"][0]["bytes"] == png()

    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_split(tmp_path / "dict" / "test", on_bad_row="error")) == 4
    with pytest.raises(ValueError, match="point at one split"):
        load_split(tmp_path / "dict", on_bad_row="error")


def test_bad_row_names_file_and_skip_counts(tmp_path):
    data = rows(4)
    data[2]["answer"] = ""
    data[3]["images"] = [{"bytes": b"not an image", "path": None}]
    path = write_rows(data, tmp_path / "t.parquet")
    with pytest.raises(BadRowError) as info:
        load_split(path, on_bad_row="error")
    assert str(path) in str(info.value) and "row 2" in str(info.value) and "'r2'" in str(info.value)
    split = load_split(path, on_bad_row="skip")
    assert len(split) == 2
    assert dict(split.skipped) == {"missing_answer": 1, "corrupt_image": 1}


def test_max_prompt_chars_filters_and_counts(tmp_path):
    data = rows(3)
    data[1]["problem"] = "x" * 500
    split = load_split(
        write_rows(data, tmp_path / "t.parquet"), max_prompt_chars=100, on_bad_row="error"
    )
    assert [r["id"] for r in split] == ["r0", "r2"] and split.skipped["too_long"] == 1


def test_wrong_columns(tmp_path):
    table = rows_to_table(rows(1)).rename_columns(
        ["id", "image", "question", "answer", "choices", "source", "task"]
    )
    pq.write_table(table, tmp_path / "raw.parquet")
    with pytest.raises(SchemaError, match="'image' -> 'images'"):
        load_split(tmp_path / "raw.parquet", on_bad_row="error")


def test_missing_path_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_split(tmp_path / "nope" / "train.parquet", on_bad_row="error")
    msg = str(info.value)
    assert "nope" in msg and "python -m mapo.data.prepare" in msg and "data.train=" in msg
    with pytest.raises(FileNotFoundError, match="matches no file"):
        load_split(str(tmp_path / "none-*.parquet"), on_bad_row="error")


def test_folder_of_parquets_asks_for_one_file(tmp_path):
    write_rows(rows(1), tmp_path / "train.parquet")
    with pytest.raises(FileNotFoundError, match="train.parquet"):
        load_split(tmp_path, on_bad_row="error")


def test_hub_name_is_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_split("someone/some-dataset:train", on_bad_row="error")


def test_int_ids_are_read_as_strings(tmp_path):
    table = rows_to_table(rows(2))
    table = table.set_column(0, "id", pa.array([7, 8]))
    pq.write_table(table, tmp_path / "ints.parquet")
    assert [r["id"] for r in load_split(tmp_path / "ints.parquet", on_bad_row="error")] == [
        "7",
        "8",
    ]
