"""Schema validation: every kind of bad row is named (file, row index, id, fix) or counted."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo.data.schema import (
    COLUMNS,
    EMOSET_LABELS,
    BadRowError,
    SchemaError,
    check_columns,
    decode_image,
    encode_image,
    validate_rows,
    write_rows,
)


def png(colour=(200, 10, 10), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def row(i=0, **over):
    base = {
        "id": f"r{i}",
        "images": [{"bytes": png(), "path": None}],
        "problem": "Find x.",
        "answer": "3",
        "choices": None,
        "source": "unit",
        "task": "math",
    }
    base.update(over)
    return base


def emo_row(i=0, answer="awe", **over):
    return row(i, task="emotion", answer=answer, choices=list(EMOSET_LABELS), **over)


BAD_ROWS = {
    "missing_id": row(id=""),
    "missing_image": row(images=[]),
    "corrupt_image": row(images=[{"bytes": png()[:40], "path": None}]),
    "empty_problem": row(problem="   "),
    "missing_answer": row(answer=None),
    "bad_task": row(task="vqa"),
    "missing_choices": row(task="emotion", answer="awe", choices=None),
    "unknown_label": emo_row(answer="joy"),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_row_error_names_file_row_id_and_fix(reason):
    rows = [row(0), row(1), {**BAD_ROWS[reason], "id": BAD_ROWS[reason]["id"] and "bad-7"}]
    with pytest.raises(BadRowError) as info:
        validate_rows(rows, origin="/data/split.parquet", on_bad_row="error")
    err = info.value
    assert err.reason == reason and err.index == 2
    msg = str(err)
    assert "/data/split.parquet" in msg and "row 2" in msg
    assert "data.on_bad_row=skip" in msg
    if reason != "missing_id":
        assert "'bad-7'" in msg


def test_skip_counts_every_reason_and_keeps_good_rows():
    rows = [row(0)] + [{**r, "id": r["id"] and f"b{k}"} for k, r in enumerate(BAD_ROWS.values())]
    rows.append(row(1))
    kept, skipped = validate_rows(rows, origin="x", on_bad_row="skip")
    assert [r["id"] for r in kept] == ["r0", "r1"]
    assert dict(skipped) == {reason: 1 for reason in BAD_ROWS}


def test_duplicate_ids_are_bad_rows():
    with pytest.raises(BadRowError, match="duplicate|more than once"):
        validate_rows([row(0), row(0)], origin="x", on_bad_row="error")
    kept, skipped = validate_rows([row(0), row(0), row(1)], origin="x", on_bad_row="skip")
    assert len(kept) == 2 and skipped["duplicate_id"] == 1


def test_long_prompts_are_dropped_and_counted_never_truncated():
    rows = [row(0, problem="a" * 10), row(1, problem="b" * 11), row(2, problem="c" * 50)]
    kept, skipped = validate_rows(rows, origin="x", max_prompt_chars=10, on_bad_row="error")
    assert [r["problem"] for r in kept] == ["a" * 10]
    assert skipped["too_long"] == 2


def test_emotion_labels_match_case_insensitively():
    kept, _ = validate_rows([emo_row(answer="Awe ")], origin="x", on_bad_row="error")
    assert kept[0]["answer"] == "Awe "


def test_image_path_resolves_against_base_dir(tmp_path):
    (tmp_path / "img.png").write_bytes(png())
    kept, _ = validate_rows(
        [row(images=[{"bytes": None, "path": "img.png"}])],
        origin="x",
        base_dir=tmp_path,
        on_bad_row="error",
    )
    assert kept[0]["images"][0]["bytes"] == png()
    with pytest.raises(BadRowError, match="no bytes and no readable path"):
        validate_rows(
            [row(images=[{"bytes": None, "path": "gone.png"}])], origin="x", on_bad_row="error"
        )


def test_invalid_on_bad_row_value():
    with pytest.raises(ValueError, match="on_bad_row"):
        validate_rows([row()], origin="x", on_bad_row="ignore")


def test_check_columns_suggests_renames():
    with pytest.raises(SchemaError) as info:
        check_columns(["id", "image", "question", "answer", "source", "task"], "f.parquet")
    msg = str(info.value)
    assert "'image' -> 'images'" in msg and "'question' -> 'problem'" in msg
    assert "mapo.data.prepare" in msg and "f.parquet" in msg


def test_write_rows_round_trip_with_hf_metadata(tmp_path):
    rows = [row(0), emo_row(1)]
    path = write_rows(rows, tmp_path / "sub" / "s.parquet")
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS)
    assert b"huggingface" in table.schema.metadata
    back = table.to_pylist()
    assert back[1]["choices"] == list(EMOSET_LABELS) and back[0]["choices"] is None
    assert decode_image(back[0]["images"][0]).getpixel((0, 0)) == (200, 10, 10)


def test_encode_decode_image():
    entry = encode_image(Image.new("L", (3, 2), 128))
    image = decode_image(entry)
    assert image.mode == "RGB" and image.size == (3, 2) and entry["path"] is None
