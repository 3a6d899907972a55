"""prepare converters on tiny fixtures that mimic each real dataset's raw layout."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo.data.loader import load_split
from mapo.data.prepare import main, prepare
from mapo.data.schema import EMOSET_LABELS, EMOTION6_LABELS, BadRowError, decode_image
from mapo.data.sources import REGISTRY


def jpeg(colour=(120, 30, 200), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def hf_image(data: bytes | None = None, path: str | None = "x.jpg") -> dict:
    return {"bytes": data if data is not None else jpeg(), "path": path}


def write_parquet(path, records: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)


def geo3k_raw(root, n=3):
    for split, count in (("train", n), ("validation", 2), ("test", 2)):
        records = [
            {
                "images": [hf_image()],
                "problem": f"<image>Find x. ({split} {i})",
                "answer": str(10 + i),
                "id": i,
                "choices": [str(10 + i), "2", "3", "4"],
                "ground_truth": "A",
            }
            for i in range(count)
        ]
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", records)


def test_geo3k(tmp_path):
    geo3k_raw(tmp_path / "raw")
    result = prepare("geo3k", tmp_path / "raw", tmp_path / "out", progress=False)
    assert result.rows == {"train": 3, "validation": 2, "test": 2}
    train = load_split(result.paths["train"], on_bad_row="error")
    first = train[0]
    assert first["problem"] == "Find x. (train 0)" and first["answer"] == "10"
    assert first["id"] == "0" and first["choices"][0] == "10"
    assert (first["source"], first["task"]) == ("geo3k", "math")
    assert decode_image(first["images"][0]).size == (32, 24)


def test_geo3k_missing_split_says_what_was_expected(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train-\*\.parquet"):
        prepare("geo3k", tmp_path / "raw", tmp_path / "out", progress=False)


def emoset_raw(root, n_per_label=3, missing=None, label_order=EMOSET_LABELS):
    """EmoSet-118K as released (github.com/JingyuanYY/EmoSet README): info.json with every
    attribute's label2idx / idx2label (emotion under info["emotion"]), {train,val,test}.json of
    [label, image id, image path, annotation path], image/ and annotation/ per emotion."""
    entries = []
    for label in EMOSET_LABELS:
        (root / "annotation" / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            image_id = f"{label}_{i:05d}"
            rel = f"image/{label}/{image_id}.jpg"
            if image_id != missing:
                (root / "image" / label).mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(jpeg())
            annotation = {"image_id": image_id, "emotion": label, "brightness": 0.4}
            (root / f"annotation/{label}/{image_id}.json").write_text(json.dumps(annotation))
            entries.append([label, image_id, rel, f"annotation/{label}/{image_id}.json"])
    label2idx = {label: i for i, label in enumerate(label_order)}
    info = {
        "emotion": {"label2idx": label2idx, "idx2label": {str(i): k for k, i in label2idx.items()}},
        "brightness": {"label2idx": {"0.0": 0, "0.1": 1}, "idx2label": {"0": 0.0, "1": 0.1}},
    }
    (root / "info.json").write_text(json.dumps(info, indent=2))
    for split in ("train", "val", "test"):
        (root / f"{split}.json").write_text(json.dumps(entries))


def test_emoset_labels_follow_info_json(tmp_path):
    order = tuple(reversed(EMOSET_LABELS))
    emoset_raw(tmp_path / "raw", n_per_label=1, label_order=order)
    result = prepare("emoset", tmp_path / "raw", tmp_path / "o", n_train=0, progress=False)
    assert load_split(result.paths["test"], on_bad_row="error")[0]["choices"] == list(order)


def test_emoset_info_json_with_another_nesting_is_an_error(tmp_path):
    emoset_raw(tmp_path / "raw", n_per_label=1)
    wrong = {"label2idx": {"emotion": {label: i for i, label in enumerate(EMOSET_LABELS)}}}
    (tmp_path / "raw" / "info.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match=r"info\.json.*info\[\"emotion\"\]\[\"label2idx\"\]"):
        prepare("emoset", tmp_path / "raw", tmp_path / "o", progress=False)


def test_emoset_seeded_subset(tmp_path):
    emoset_raw(tmp_path / "raw")
    kw = {"n_train": 10, "n_test": 0, "progress": False}
    a = prepare("emoset", tmp_path / "raw", tmp_path / "a", seed=1, **kw)
    b = prepare("emoset", tmp_path / "raw", tmp_path / "b", seed=1, **kw)
    c = prepare("emoset", tmp_path / "raw", tmp_path / "c", seed=2, **kw)
    assert a.rows == {"train": 10, "test": 24}  # n_test=0 keeps all of test.json
    assert "train: 10 of the 24 entries of train.json (seeded subset, --seed 1)" in a.notes
    ids = [[r["id"] for r in load_split(x.paths["train"], on_bad_row="error")] for x in (a, b, c)]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    row = load_split(a.paths["train"], on_bad_row="error")[0]
    assert row["choices"] == list(EMOSET_LABELS) and row["answer"] == row["id"].split("_")[0]
    assert row["task"] == "emotion" and row["source"] == "emoset"


def test_emoset_missing_image_names_json_row_and_id_or_is_skipped(tmp_path):
    emoset_raw(tmp_path / "raw", missing="awe_00001")
    with pytest.raises(BadRowError) as info:
        prepare("emoset", tmp_path / "raw", tmp_path / "o", n_train=0, progress=False)
    msg = str(info.value)
    assert "train.json" in msg and "row 4" in msg and "'awe_00001'" in msg
    result = prepare(
        "emoset", tmp_path / "raw", tmp_path / "o", n_train=0, on_bad_row="skip", progress=False
    )
    assert result.rows["train"] == 23 and result.skipped["train"] == {"missing_image": 1}


def test_mathvista_multiple_choice_answer_becomes_the_letter(tmp_path):
    common = {"unit": None, "precision": None, "answer_type": "text", "metadata": None}
    records = [
        {
            "pid": "1",
            "question": "Angle?",
            "image": "images/1.jpg",
            "decoded_image": hf_image(path="images/1.jpg"),
            "choices": ["30", "60"],
            "answer": "60",
            "question_type": "multi_choice",
            "query": "Hint: letter.\nAngle?",
            **common,
        },
        {
            "pid": "2",
            "question": "Sum?",
            "image": "images/2.jpg",
            "decoded_image": None,
            "choices": None,
            "answer": "7",
            "question_type": "free_form",
            "query": "Sum?",
            **common,
        },
    ]
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "2.jpg").write_bytes(jpeg())  # from images.zip
    write_parquet(tmp_path / "raw" / "data" / "testmini-00000-of-00001-abc.parquet", records)
    write_parquet(tmp_path / "raw" / "data" / "test-00000-of-00002.parquet", records[:1])
    result = prepare("mathvista", tmp_path / "raw", tmp_path / "out", progress=False)
    rows = load_split(result.paths["testmini"], on_bad_row="error")
    assert [r["answer"] for r in rows] == ["B", "7"]
    assert rows[0]["problem"] == "Hint: letter.\nAngle?" and rows[0]["choices"] == ["30", "60"]
    assert list(result.paths) == ["testmini"]


def test_mathverse(tmp_path):
    records = [
        {
            "sample_index": 11,
            "problem_index": "1",
            "problem_version": "Vision Only",
            "question": "",
            "image": hf_image(),
            "answer": "A",
            "question_type": "multi-choice",
            "metadata": None,
            "query_wo": "q",
            "query_cot": "Please answer.\nChoices: A:1 B:2",
            "question_for_eval": "q",
        },
    ]
    write_parquet(tmp_path / "raw" / "testmini.parquet", records)
    write_parquet(tmp_path / "raw" / "testmini_text_only.parquet", [{"x": 1}])
    result = prepare("mathverse", tmp_path / "raw", tmp_path / "out", progress=False)
    (row,) = load_split(result.paths["testmini"], on_bad_row="error")
    assert (row["id"], row["answer"], row["source"]) == ("11", "A", "mathverse")
    assert row["problem"].startswith("Please answer.")


def test_mathvision_lists_options_in_the_problem(tmp_path):
    base = {"image": "images/1.jpg", "solution": None, "level": 2, "subject": "angle"}
    records = [
        {
            "id": "1",
            "question": "<image1>Which one?",
            "options": ["a", "b"],
            "answer": "B",
            "decoded_image": hf_image(),
            **base,
        },
        {
            "id": "2",
            "question": "How many?<image1>",
            "options": [],
            "answer": "4",
            "decoded_image": hf_image(),
            **base,
        },
    ]
    for split in ("test", "testmini"):
        write_parquet(tmp_path / "raw" / "data" / f"{split}-00000-of-00001.parquet", records)
    result = prepare("mathvision", tmp_path / "raw", tmp_path / "out", progress=False)
    assert sorted(result.paths) == ["test", "testmini"]
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert rows[0]["problem"] == "Which one?\nChoices:\n(A) a\n(B) b"
    assert rows[1]["problem"] == "How many?" and rows[1]["choices"] is None


def conversations_raw(root, answers):
    (root / "imgs").mkdir(parents=True)
    entries = []
    for i, answer in enumerate(answers):
        (root / "imgs" / f"{i}.jpg").write_bytes(jpeg())
        entries.append(
            {
                "id": f"e{i}",
                "image": f"imgs/{i}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat emotion does this image show?"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    (root / "eval.json").write_text(json.dumps(entries))
    return root / "eval.json"


def test_emotion6_conversations(tmp_path):
    src = conversations_raw(tmp_path / "raw", ["Joy", "sadness.", "surprise"])
    result = prepare("emotion6", src, tmp_path / "out", progress=False)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [r["answer"] for r in rows] == ["joy", "sadness", "surprise"]
    assert rows[0]["problem"] == "What emotion does this image show?"
    assert rows[0]["choices"] == list(EMOTION6_LABELS) and rows[0]["source"] == "emotion6"
    assert result.changed["test"] == {"image_tokens_removed": 3, "label_normalized": 2}


def test_conversations_unknown_label_is_a_named_bad_row(tmp_path):
    src = conversations_raw(tmp_path / "raw", ["joy", "amusement"])
    with pytest.raises(BadRowError, match=r"eval\.json: row 1 \(id='e1'\)"):
        prepare("emotion6", src, tmp_path / "out", progress=False)
    result = prepare("emotion6", src, tmp_path / "o", on_bad_row="skip", progress=False)
    assert result.skipped["test"] == {"unknown_label": 1}


def test_webemo_labels_from_flag_or_from_the_file(tmp_path):
    src = conversations_raw(tmp_path / "raw", ["love", "anger"])
    inferred = load_split(
        prepare("webemo", src, tmp_path / "a", progress=False).paths["test"], on_bad_row="error"
    )
    assert inferred[0]["choices"] == ["anger", "love"]
    given = prepare("webemo", src, tmp_path / "b", labels=["Anger", "Love", "Fear"], progress=False)
    assert load_split(given.paths["test"], on_bad_row="error")[0]["choices"] == [
        "anger",
        "love",
        "fear",
    ]


def test_cli_synthetic_and_errors(tmp_path, capsys):
    assert main(["synth_math", "--out", str(tmp_path), "--n-train", "12", "--n-test", "4"]) == 0
    assert len(load_split(tmp_path / "train.parquet", on_bad_row="error")) == 12
    assert len(load_split(tmp_path / "ood_layout.parquet", on_bad_row="error")) == 4
    assert "ood_shift" in capsys.readouterr().out
    assert main(["geo3k", "--out", str(tmp_path / "g"), "--src", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--src"):
        prepare("emoset", None, tmp_path)


def test_registry_covers_every_dataset():
    expected = {"geo3k", "emoset", "mathvista", "mathverse", "mathvision", "webemo", "emotion6"}
    assert expected | {"synth_emo", "synth_math"} == set(REGISTRY)


def test_prepare_hint_names_each_sets_own_converter():
    from mapo.data.prepare import prepare_hint

    assert "`python -m mapo.data.prepare mathvision --src RAW --out DIR`" in prepare_hint(
        "mathvision"
    )
    assert "`python -m mapo.data.prepare synth_emo --out DIR`" in prepare_hint("synth_emo")
    assert "no converter is registered as 'mine'" in prepare_hint("mine")
