"""Converters on fixtures in each release's exact published layout (file names, nesting,
separators, the release's own spellings); docs/data.md says where each layout comes from."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo.data.loader import load_split
from mapo.data.prepare import main, prepare
from mapo.data.schema import EMOTION6_LABELS, BadRowError
from mapo.pipeline.quickrun import reward_args


def image_bytes(fmt="JPEG", colour=(20, 140, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buf, format=fmt)
    return buf.getvalue()


def write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


# --- MathVision: github.com/mathllm/MATH-V, data/{test,testmini}.jsonl + images/<id>.jpg -------

MATHV_ROWS = [  # real rows of data/test.jsonl (ids 528, 2, 15, 33, 19) and a letters-as-answers one
    {"id": "528", "question": "<image1>", "options": [], "answer": "15"},
    {
        "id": "2",
        "question": "Which bike is most expensive?\n<image1>",
        "options": ["A", "B", "C", "D", "E"],
        "answer": "A",
    },
    {
        "id": "15",
        "question": "Emily celebrated her birthday on Thursday, and her sister Liepa 8 "
        "days earlier. Which weekday was that?\n<image1>",
        "options": ["Wednesday", "Thursday", "Friday", "Tuesday", "Sunday"],
        "answer": "A",
    },
    {
        "id": "33",
        "question": "When the ant <image1> walks from home <image2> along the arrows, he "
        "gets to the ladybird <image3>.\nWhich animal does the ant <image1> get to?\n<image6>\n"
        "<image7>",
        "options": ["A", "B", "C", "D", "E"],
        "answer": "A",
    },
    {
        "id": "19",
        "question": "How many mandarins has Eve got? <image1>",
        "options": [
            "$2+4+3$",
            "$2 \\cdot 4+3$",
            "$2+4 \\cdot 3$",
            "$2 \\cdot 4 \\cdot 3$",
            "$2+4-3$",
        ],
        "answer": "D",
    },
    {
        "id": "1234",
        "question": "Which letters are vowels?\n<image1>",
        "options": ["A", "B", "D", "F", "G"],
        "answer": "A",
    },
]


def mathvision_release(root):
    for split in ("test", "testmini"):
        lines = []
        for r in MATHV_ROWS:
            full = {
                **r,
                "solution": None,
                "level": 2,
                "subject": "arithmetic",
                "image": f"images/{r['id']}.jpg",
            }
            lines.append(json.dumps(full, ensure_ascii=False))
        write(root / "data" / f"{split}.jsonl", "\n".join(lines) + "\n")
    for r in MATHV_ROWS:
        write(root / "images" / f"{r['id']}.jpg", image_bytes())


def test_mathvision_release_as_published(tmp_path):
    mathvision_release(tmp_path / "MATH-V")
    result = prepare("mathvision", tmp_path / "MATH-V", tmp_path / "out", progress=False)
    assert result.rows == {"test": 6, "testmini": 6} and result.skipped["test"] == {}
    assert result.changed["test"] == {
        "image_tokens_removed": 6,
        "image_only_question": 1,
        "options_in_image": 2,
        "several_figures_one_image": 1,
    }
    rows = {r["id"]: r for r in load_split(result.paths["test"], on_bad_row="error")}
    assert rows["528"]["problem"] == "Answer the question shown in the image."
    assert rows["2"]["problem"] == (
        "Which bike is most expensive?\n"
        "The options A, B, C, D, E are shown in the image; answer with the option's letter."
    )
    assert rows["15"]["problem"].endswith(
        "Which weekday was that?\nChoices:\n(A) Wednesday\n"
        "(B) Thursday\n(C) Friday\n(D) Tuesday\n(E) Sunday"
    )
    assert rows["33"]["problem"].startswith(
        "When the ant walks from home along the arrows, he gets to the ladybird.\n"
        "Which animal does the ant get to?\n"
        "The figures this question refers to are all shown in the one image provided.\n"
    )
    assert rows["19"]["problem"].startswith(
        "How many mandarins has Eve got?\nChoices:\n(A) $2+4+3$"
    )
    assert "(C) D\n(D) F" in rows["1234"]["problem"]  # letters that are the answers stay listed
    assert all("  " not in r["problem"] and "<image" not in r["problem"] for r in rows.values())
    assert rows["528"]["answer"] == "15" and rows["2"]["answer"] == "A"


def test_mathvision_documented_command_prints_the_changes(tmp_path, capsys):
    mathvision_release(tmp_path / "MATH-V")
    argv = ["mathvision", "--src", str(tmp_path / "MATH-V"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "image_only_question" in out and "options_in_image" in out


def test_mathvision_missing_image_names_the_jsonl_row(tmp_path):
    mathvision_release(tmp_path / "MATH-V")
    (tmp_path / "MATH-V" / "images" / "2.jpg").unlink()
    with pytest.raises(BadRowError, match=r"data/test\.jsonl: row 1 \(id='2'\)"):
        prepare("mathvision", tmp_path / "MATH-V", tmp_path / "out", progress=False)
    kw = {"on_bad_row": "skip", "progress": False}
    result = prepare("mathvision", tmp_path / "MATH-V", tmp_path / "out", **kw)
    assert result.rows["test"] == 5 and result.skipped["test"] == {"missing_image": 1}


# --- Geo3K: hiyouga/geometry3k earlier revision (no id) and lupantech/InterGPS folders ----------


def test_geo3k_hub_revision_without_ids_gets_stable_ids(tmp_path):
    def shard(split, rows, k=0, n=1):
        records = [
            {
                "images": [{"bytes": image_bytes("PNG"), "path": None}],
                "problem": f"<image>Find x. ({split} {i})",
                "answer": str(i),
            }
            for i in rows
        ]
        path = tmp_path / "raw" / "data" / f"{split}-0000{k}-of-0000{n}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(records), path)

    shard("train", range(3), 0, 2)
    shard("train", range(3, 5), 1, 2)
    shard("validation", range(2))
    shard("test", range(2))
    a = prepare("geo3k", tmp_path / "raw", tmp_path / "a", progress=False)
    b = prepare("geo3k", tmp_path / "raw", tmp_path / "b", progress=False)
    ids = [r["id"] for r in load_split(a.paths["train"], on_bad_row="error")]
    assert (
        ids
        == [f"train-{i}" for i in range(5)]
        == [r["id"] for r in load_split(b.paths["train"], on_bad_row="error")]
    )
    assert a.changed["train"] == {"id_derived": 5, "image_tokens_removed": 5}
    assert load_split(a.paths["test"], on_bad_row="error")[1]["problem"] == "Find x. (test 1)"
    assert any("no `id` column" in note for note in a.notes)


def intergps_problem(folder, pid, answer="B", split="test"):
    """One problem folder of Geometry3K as InterGPS releases it (data/geometry3k/<split>/<id>)."""
    data = {
        "problem_text": f"Find m \\angle {pid}.",
        "choices": ["30", "40", "60", "80"],
        "answer": answer,
        "detailed_solution": " ",
        "problem_type_graph": ["Circle"],
        "problem_type_goal": ["Angle"],
        "source": "textbook2_chapter10.pdf page 21",
        "comment": "",
        "id": pid,
        "annot_id": "Ran_2020-03-28_03_32_46",
        "is_standard": False,
        "compact_choices": ["30", "40", "60", "80"],
        "precise_value": [30.0, 40.0, 60.0, 80.0],
        "rough_value": [30, 40, 60, 80],
        "compact_text": f"Find m \\angle {pid}.",
        "annotat_text": f"Find $m \\angle {pid}$",
        "unit": "",
        "img_width": 24,
        "img_height": 16,
        "data_type": split,
        "date": "Fri Sep 18 22:23:14 2020",
        "system": "linux",
    }
    write(folder / "data.json", json.dumps(data, indent=2))
    write(folder / "img_diagram.png", image_bytes("PNG"))
    write(folder / "img_diagram_point.png", image_bytes("PNG"))


def intergps_release(root):
    ids = {"train": [0, 1, 2], "val": [3, 4], "test": [9, 10, 11]}
    for split, pids in ids.items():
        for pid in pids:
            intergps_problem(root / "data" / "geometry3k" / split / str(pid), pid, split=split)


def test_geo3k_intergps_folders(tmp_path):
    intergps_release(tmp_path / "InterGPS")
    result = prepare("geo3k", tmp_path / "InterGPS", tmp_path / "out", progress=False)
    assert result.rows == {"train": 3, "validation": 2, "test": 3}
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [r["id"] for r in rows] == ["9", "10", "11"]  # numeric folder order
    assert rows[0]["problem"] == "Find m \\angle 9." and rows[0]["answer"] == "40"
    assert rows[0]["choices"] == ["30", "40", "60", "80"] and rows[0]["source"] == "geo3k"
    assert result.changed["test"] == {"answer_letter_to_choice": 3}


def test_geo3k_intergps_bad_answer_letter_names_the_folder(tmp_path):
    intergps_release(tmp_path / "g")
    intergps_problem(tmp_path / "g/data/geometry3k/test/10", 10, answer="Z")
    with pytest.raises(BadRowError, match=r"geometry3k/test: folder 10 \(id='10'\).*answer"):
        prepare("geo3k", tmp_path / "g", tmp_path / "out", progress=False)


# --- Emotion6: Emotion6.zip, images/<emotion>/<n>.jpg + ground_truth.txt (ReadMe.txt) -----------

E6_HEADER = (
    "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]"
    "\t[prob. joy]\t[prob. sadness]\t[prob. surprise]\t[prob. neutral]"
)
E6_LINES = [  # the ReadMe's example line first; then argmax != folder, neutral, a tie
    "disgust/1.jpg\t2.5\t3.8\t0.133333\t0.7\t0\t0.0666667\t0.1\t0\t0",
    "fear/7.jpg\t3.1\t6.2\t0\t0\t0.2\t0\t0.7\t0.1\t0",
    "joy/3.jpg\t5.5\t2.0\t0\t0\t0\t0.3\t0\t0.1\t0.6",
    "surprise/2.jpg\t5.0\t5.0\t0\t0\t0\t0.4\t0\t0.4\t0.2",
]


def emotion6_release(root, lines=E6_LINES):
    write(root / "ground_truth.txt", "\n".join([E6_HEADER, *lines]) + "\n")
    for line in lines:
        write(root / "images" / line.split("\t")[0], image_bytes())
    write(root / "ReadMe.txt", '"Cornell Emotion6 Image Database"\n')


def test_emotion6_release_labels_from_folder(tmp_path):
    emotion6_release(tmp_path / "Emotion6")
    result = prepare("emotion6", tmp_path / "Emotion6", tmp_path / "o", progress=False)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("disgust/1.jpg", "disgust"),
        ("fear/7.jpg", "fear"),
        ("joy/3.jpg", "joy"),
        ("surprise/2.jpg", "surprise"),
    ]
    assert rows[0]["choices"] == list(EMOTION6_LABELS) and result.skipped["test"] == {}
    assert result.notes == ["gold label = its folder (--label-source folder)"]


def test_emotion6_release_labels_from_votes(tmp_path):
    emotion6_release(tmp_path / "Emotion6")
    src = tmp_path / "Emotion6" / "ground_truth.txt"  # the file itself is accepted too
    result = prepare("emotion6", src, tmp_path / "o", label_source="argmax", progress=False)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("disgust/1.jpg", "disgust"),
        ("fear/7.jpg", "sadness"),
        ("joy/3.jpg", "neutral"),
    ]
    assert rows[0]["choices"] == [*EMOTION6_LABELS, "neutral"]
    assert result.skipped["test"] == {"tied_votes": 1}
    assert result.changed["test"] == {"label_argmax_not_folder": 2}


def test_emotion6_malformed_line_names_file_and_line(tmp_path):
    emotion6_release(tmp_path / "E", [*E6_LINES[:2], "anger/5.jpg\t4.0\t0.2"])
    with pytest.raises(BadRowError, match=r"ground_truth\.txt: line 4 \(id='anger/5\.jpg'\)"):
        prepare("emotion6", tmp_path / "E", tmp_path / "o", progress=False)
    result = prepare("emotion6", tmp_path / "E", tmp_path / "o", on_bad_row="skip", progress=False)
    assert result.rows["test"] == 2 and result.skipped["test"] == {"malformed_line": 1}


def test_emotion6_not_a_release_or_json_says_what_it_expects(tmp_path):
    write(tmp_path / "e6" / "labels.json", "disgust/1.jpg\t2.5\n")
    with pytest.raises(ValueError, match=r"labels\.json is not a conversations JSON.*release"):
        prepare("emotion6", tmp_path / "e6" / "labels.json", tmp_path / "o", progress=False)
    write(tmp_path / "e6" / "ground_truth.txt", "just some notes\n")
    with pytest.raises(ValueError, match=r"not Emotion6's ground_truth\.txt.*prob\. neutral"):
        prepare("emotion6", tmp_path / "e6", tmp_path / "o", progress=False)


# --- WEBEmo: category.txt, train25.txt, test25.txt (URL lists; images downloaded by the user) ----

WEBEMO_CATEGORIES = [  # as the release lists them, with its spellings (index = line number - 1)
    ("affection", "love", "+"),
    ("cheerfullness", "joy", "+"),
    ("confusion", "sadness", "-"),
    ("contentment", "joy", "+"),
    ("disappointment", "sadness", "-"),
    ("disgust", "anger", "-"),
    ("enthrallment", "joy", "+"),
    ("envy", "anger", "-"),
    ("exasperation", "anger", "-"),
    ("gratitude", "love", "+"),
    ("horror", "fear", "-"),
    ("irritabilty", "anger", "-"),
    ("lust", "love", "+"),
    ("neglect", "sadness", "-"),
    ("nervousness", "fear", "-"),
    ("optimism", "joy", "+"),
    ("pride", "joy", "+"),
    ("rage", "anger", "-"),
    ("relief", "joy", "+"),
    ("sadness", "sadness", "-"),
    ("shame", "sadness", "-"),
    ("suffering", "sadness", "-"),
    ("surprise", "surprise", "+"),
    ("sympathy", "sadness", "-"),
    ("zest", "joy", "+"),
]
URL = "https://as2.ftcdn.net/jpg/00/42/93/78/220_F_{}.jpg"
WEBEMO_TEST = [  # (URL key, label index); "dup" twice as irritabilty and rage (both anger)
    ("a1", 0),
    ("c1", 1),
    ("dup", 11),
    ("dup", 17),
    ("x1", 1),
    ("x1", 10),
    ("dead", 22),
]


def webemo_release(root, test=WEBEMO_TEST):
    write(root / "category.txt", "\n".join(repr(c) for c in WEBEMO_CATEGORIES) + "\n")
    write(root / "train25.txt", f"{URL.format('t1')} 0\n")
    write(root / "test25.txt", "".join(f"{URL.format(k)} {i}\n" for k, i in test))
    for key, i in test:  # downloaded by a script that sorts into <split>/<label> folders
        if key != "dead":
            write(root / "images" / "test" / str(i) / f"220_F_{key}.jpg", image_bytes())


def test_webemo_release_level2_merges_agreeing_duplicates_drops_conflicts(tmp_path):
    webemo_release(tmp_path / "WEBEmo")
    with pytest.raises(BadRowError, match=r"test25\.txt: line 7 \(id='220_F_dead\.jpg'\)"):
        prepare("webemo", tmp_path / "WEBEmo", tmp_path / "o", progress=False)
    kw = {"on_bad_row": "skip", "progress": False}
    result = prepare("webemo", tmp_path / "WEBEmo", tmp_path / "o", **kw)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("220_F_a1.jpg", "love"),
        ("220_F_c1.jpg", "joy"),
        ("220_F_dup.jpg", "anger"),
    ]
    assert rows[0]["choices"] == ["love", "joy", "sadness", "anger", "fear", "surprise"]
    assert result.skipped["test"] == {
        "duplicate_url": 1,
        "conflicting_labels": 2,
        "missing_image": 1,
    }


def test_webemo_level3_respells_and_treats_the_duplicate_as_a_conflict(tmp_path):
    webemo_release(tmp_path / "WEBEmo", WEBEMO_TEST[:4])
    result = prepare("webemo", tmp_path / "WEBEmo", tmp_path / "o", label_level=3, progress=False)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("220_F_a1.jpg", "affection"),
        ("220_F_c1.jpg", "cheerfulness"),
    ]
    assert "irritability" in rows[0]["choices"] and len(rows[0]["choices"]) == 25
    assert result.skipped["test"] == {"conflicting_labels": 2}
    assert result.changed["test"] == {"label_respelled": 1}


def test_webemo_level1_sentiment(tmp_path):
    webemo_release(tmp_path / "WEBEmo", [("a1", 0), ("x1", 10)])
    result = prepare("webemo", tmp_path / "WEBEmo", tmp_path / "o", label_level=1, progress=False)
    rows = load_split(result.paths["test"], on_bad_row="error")
    assert [r["answer"] for r in rows] == ["positive", "negative"]
    assert rows[0]["choices"] == ["positive", "negative"]


def test_webemo_label_index_outside_category_txt(tmp_path):
    webemo_release(tmp_path / "W", [("a1", 0), ("b1", 25)])
    with pytest.raises(BadRowError, match=r"test25\.txt: line 2 .*category\.txt has 25"):
        prepare("webemo", tmp_path / "W", tmp_path / "o", progress=False)


# --- MathVista testmini (AI4Math/MathVista data/testmini-*.parquet) -----------------------------


def test_mathvista_duplicate_choice_accepts_every_matching_letter(tmp_path):
    from mapo.rewards import score

    common = {
        "unit": None,
        "precision": None,
        "answer_type": "integer",
        "metadata": None,
        "image": "images/1.jpg",
        "question_type": "multi_choice",
    }
    records = [
        {
            "pid": "1",
            "question": "How many?",
            "decoded_image": {"bytes": image_bytes(), "path": "images/1.jpg"},
            "choices": ["9", "12", "18", "18"],
            "answer": "18",
            "query": "Hint: answer with the option letter.\nHow many?",
            **common,
        },
    ]
    path = tmp_path / "raw" / "data" / "testmini-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    result = prepare("mathvista", tmp_path / "raw", tmp_path / "o", progress=False)
    (row,) = load_split(result.paths["testmini"], on_bad_row="error")
    assert row["answer"] == "C\nD"
    assert result.changed["testmini"] == {"answer_text_to_letter": 1, "several_letters": 1}
    think = "<think>count</think> "
    accuracy = {
        g: score("math", think + f"\\boxed{{{g}}}", row["answer"], **reward_args())["accuracy"]
        for g in "ABCD"
    }
    assert accuracy == {"A": 0.0, "B": 0.0, "C": 1.0, "D": 1.0}


def test_cli_label_flags_reach_the_converters(tmp_path, capsys):
    emotion6_release(tmp_path / "E")
    webemo_release(tmp_path / "W", [("a1", 1)])
    e6 = ["emotion6", "--src", str(tmp_path / "E"), "--out", str(tmp_path / "e"), "--no-progress"]
    assert main([*e6, "--label-source", "argmax"]) == 0
    out = capsys.readouterr().out
    assert "--label-source argmax" in out and "test dropped: tied_votes=1" in out
    we = ["webemo", "--src", str(tmp_path / "W"), "--out", str(tmp_path / "w"), "--no-progress"]
    assert main([*we, "--label-level", "3"]) == 0
    assert (
        load_split(tmp_path / "w" / "test.parquet", on_bad_row="error")[0]["answer"]
        == "cheerfulness"
    )
    assert main(we) == 0  # default level 2
    assert load_split(tmp_path / "w" / "test.parquet", on_bad_row="error")[0]["answer"] == "joy"
