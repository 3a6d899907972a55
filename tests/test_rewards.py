"""Rewards on ordinary model output: format, math and emotion accuracy, the overall mix, the
registry and the batched API. Pool-backed (sympy) cases are marked slow; hostile input is in
test_rewards_hostile.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mathruler.grader import extract_boxed_content

from mapo.pipeline.quickrun import reward_args
from mapo.rewards import (
    REWARDS,
    GraderPool,
    combine,
    get_reward,
    known_kinds,
    register_reward,
    score,
    score_batch,
)
from mapo.rewards.graders import _original_are_equal, _plain_number_equal, mathruler_quick
from mapo.rewards.kinds.emotion import normalize_label
from mapo.rewards.text import has_think_then_box, last_boxed, normalize_response


def boxed(answer: str, think: str = "the angle sum is 180") -> str:
    return f"<think>{think}</think> So the answer is \\boxed{{{answer}}}."


@pytest.fixture(scope="module")
def pool():
    p = GraderPool(workers=1)
    yield p
    p.close()


# --- text helpers: equal to EasyR1's regexes, on the inputs those regexes can afford --------

EASYR1_NORMALIZE = re.compile(r"\s*(<|>|/)\s*")
EASYR1_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
PIECES = ["<think>", "</think>", "\\boxed{", "}", "{", "x", " ", "\n", "< ", " /", ">"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_format_check_matches_easyr1_regex(text):
    normalized = normalize_response(text)
    assert normalized == EASYR1_NORMALIZE.sub(r"\1", text)
    assert has_think_then_box(normalized) == bool(EASYR1_FORMAT.fullmatch(normalized))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_last_boxed_matches_mathruler(text):
    ours, theirs = last_boxed(text, max_chars=1000), extract_boxed_content(text)
    assert ours == (None if theirs == "None" else theirs)


def test_format_cases():
    assert has_think_then_box(normalize_response(boxed("3")))
    assert has_think_then_box(normalize_response("< think >a</ think >\n\\boxed{3}"))
    assert not has_think_then_box(normalize_response("\\boxed{3}"))  # no reasoning
    assert not has_think_then_box(normalize_response("<think>a \\boxed{3}"))  # unclosed think
    assert not has_think_then_box(normalize_response("\\boxed{3}<think>a</think>"))  # order
    assert not has_think_then_box(normalize_response("x<think>a</think>\\boxed{3}"))  # prefix


def test_last_boxed_takes_the_last_balanced_box():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}", 100) == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2", 100) is None  # last opener unclosed
    assert last_boxed("no box", 100) is None
    assert last_boxed("\\boxed{" + "9" * 50 + "}", 10) == "9" * 11  # over the cap: too long


# --- math accuracy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("\\frac{1}{2}", "0.5", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("3", "3.0", 1.0),
        ("3.0", "3", 1.0),
        ("12.50", "12.5", 1.0),
        ("60", "60", 1.0),
        ("4", "3", 0.0),
        ("13.2", "12.5", 0.0),
        ("2\\sqrt{3}", "2\\sqrt{3}", 1.0),  # Geo3K answers are the choice text
        ("\\text{A}", "A", 1.0),
    ],
)
def test_math_accuracy_in_process(answer, gold, correct):
    result = score("math", boxed(answer), gold, **reward_args())
    assert result["accuracy"] == correct
    assert result["format"] == 1.0


def test_math_multiple_boxes_last_one_counts():
    text = "<think>first \\boxed{7}</think> final \\boxed{3} oops no, \\boxed{5}"
    assert score("math", text, "5", **reward_args())["accuracy"] == 1.0
    assert score("math", text, "3", **reward_args())["accuracy"] == 0.0


def test_no_box_means_no_answer():
    assert score("math", "<think>it is 3</think> 3", "3", **reward_args()) == {
        "overall": 0.0,
        "format": 0.0,
        "accuracy": 0.0,
    }


# Pairs mathruler decides with sympy or LaTeX parsing: the quick path must defer or agree.
QUICK_PAIRS = [
    ("3", "3"),
    ("4", "3"),
    ("\\frac{1}{2}", "0.5"),
    ("x+1", "1+x"),
    ("\\sqrt{48}", "4\\sqrt{3}"),
    ("12.50", "12.5"),
    ("\\dfrac{3}{4}", "0.75"),
    ("(1,2)", "(1, 2)"),
    ("\\pi", "3.14"),
    ("2/4", "1/2"),
    ("1,000", "1000"),
]


@pytest.mark.parametrize(("given_answer", "gold"), QUICK_PAIRS)
def test_quick_path_agrees_with_mathruler(given_answer, gold):
    from mathruler.grader import grade_answer

    quick = mathruler_quick(given_answer, gold)
    if quick is not None:
        assert quick == grade_answer(given_answer, gold)


@pytest.mark.parametrize(
    "pair", [("0", "-0"), ("12.5", "12.50"), ("012.5", "12.5"), ("007", "7"), ("1.5", "1.25")]
)
def test_plain_number_shortcut_equals_sympy(pair):
    decided = _plain_number_equal(*pair)
    if decided is not None:
        assert decided == _original_are_equal(*pair)


@pytest.mark.slow
@pytest.mark.parametrize("grader", ["mathruler", "math_verify"])
@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("\\sqrt{48}", "4\\sqrt{3}", 1.0),
        ("x+1", "1+x", 1.0),
        ("\\frac{2}{3}", "0.75", 0.0),
        ("6\\sqrt{2}", "\\sqrt{72}", 1.0),
    ],
)
def test_math_accuracy_with_sympy(pool, grader, answer, gold, correct):
    batch = score_batch(
        "math", [boxed(answer)], [gold], pool=pool, **reward_args(grader=grader, timeout_s=10)
    )
    assert batch.accuracy.tolist() == [correct]
    assert batch.pooled == 1 and batch.timeouts == 0 and batch.errors == 0


# --- emotion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("Amusement", "amusement", 1.0),
        ("AWE.", "awe", 1.0),
        ("\\text{The emotion is: Scared!}", "fear", 1.0),
        ("sad", "sadness", 1.0),
        ("angry", "Anger", 1.0),
        ("amused", "amusement", 1.0),
        ("excited", "excitement", 1.0),
        ("content", "contentment", 1.0),
        ("disgusted", "disgust", 1.0),
        ("fears", "fear", 1.0),
        ("happy", "joy", 1.0),
        ("happy", "contentment", 0.0),  # ambiguous in EmoSet: no mapping
        ("fear and sadness", "fear", 0.0),
        ("not fear", "fear", 0.0),
        ("awe", "amusement", 0.0),
        ("", "awe", 0.0),
    ],
)
def test_emotion_accuracy(answer, gold, correct):
    assert score("emotion", boxed(answer), gold, **reward_args())["accuracy"] == correct


def test_emotion_without_box_scores_nothing():
    assert score("emotion", "<think>awe</think> awe", "awe", **reward_args())["accuracy"] == 0.0


def test_normalize_label_is_idempotent_on_labels():
    for label in ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear"]:
        assert normalize_label(label) == label == normalize_label(normalize_label(label))


# --- overall ----------------------------------------------------------------------------------


def test_perfect_answer_scores_exactly_one_for_any_weight():
    for weight in [0.0, 0.1, 0.3, 0.7, 1 / 3, 0.123456789, 1.0]:
        assert combine(1.0, 1.0, weight) == 1.0
        assert score("math", boxed("3"), "3", **reward_args(format_weight=weight))["overall"] == 1.0


def test_overall_mix():
    tenth = reward_args(format_weight=0.1)
    assert score("math", boxed("4"), "3", **tenth) == dict(overall=0.1, format=1.0, accuracy=0.0)
    assert score("math", "\\boxed{3}", "3", **tenth) == dict(overall=0.9, format=0.0, accuracy=1.0)
    half = score("math", boxed("4"), "3", **reward_args(format_weight=0.5))
    assert half["overall"] == 0.5


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="known: \\['emotion', 'math'"):
        score("geometry", "x", "y", **reward_args())
    with pytest.raises(ValueError, match="format_weight"):
        score("math", "x", "y", **reward_args(format_weight=1.5))
    with pytest.raises(ValueError, match="grader"):
        score("math", "x", "y", **reward_args(grader="sympy"))
    with pytest.raises(ValueError, match="one answer"):
        score_batch("math", ["a", "b"], ["a"], **reward_args())
    with pytest.raises(TypeError, match="str"):
        score_batch("math", [None], ["a"], **reward_args())


# --- registry and batch -----------------------------------------------------------------------


def test_registry_refuses_a_second_function_under_a_taken_name():
    assert {"math", "emotion"} <= set(known_kinds())
    math_fn = get_reward("math")
    assert register_reward("math")(math_fn) is math_fn  # same function again: fine
    with pytest.raises(ValueError, match="already registered"):

        @register_reward("math")
        def other(completions, answers, grading):
            return [0.0] * len(completions), [0.0] * len(completions)


def test_score_batch_mixed_kinds_and_counters():
    batch = score_batch(
        ["math", "emotion", "math", "emotion"],
        [boxed("3"), boxed("awe"), "\\boxed{4}", "no box"],
        ["3", "awe", "3", "fear"],
        **reward_args(),
    )
    assert batch.overall.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert batch.format.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert batch.accuracy.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert batch.overall.dtype.is_floating_point and batch.overall.shape == (4,)
    assert (batch.timeouts, batch.errors, batch.rejected, batch.pooled) == (0, 0, 0, 0)
    assert batch.metrics()["reward/accuracy"] == 0.5
    assert (batch.overall == 1).sum().item() == 2  # the success test used downstream


def test_a_failing_kind_costs_only_its_item(monkeypatch):
    def flaky(completions, answers, grading):
        if any("boom" in c for c in completions):
            raise RuntimeError("bug in a reward kind")
        return [1.0] * len(completions), [1.0] * len(completions)

    register_reward("flaky")(flaky)
    try:
        batch = score_batch("flaky", ["ok", "boom", "ok"], ["a", "b", "c"], **reward_args())
    finally:
        REWARDS.remove("flaky")
    assert batch.accuracy.tolist() == [1.0, 0.0, 1.0]
    assert batch.errors == 1


def test_a_nan_or_out_of_range_score_of_a_kind_is_counted_as_an_error(monkeypatch):
    from mapo.rewards.registry import REWARDS

    values = {
        "nan": float("nan"),
        "inf": float("inf"),
        "big": 1.5,
        "neg": -0.1,
        "ok": 1.0,
        "str": "1",
    }

    def sloppy(completions, answers, grading):
        return [1.0] * len(completions), [values[c] for c in completions]

    REWARDS.add("sloppy", sloppy)
    try:
        batch = score_batch("sloppy", list(values), ["a"] * len(values), **reward_args())
    finally:
        REWARDS.remove("sloppy")
    assert batch.accuracy.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert batch.overall.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert batch.errors == 4 and batch.metrics()["reward/errors"] == 4.0


@pytest.mark.slow
def test_score_batch_sends_only_undecided_items_to_the_pool(pool):
    completions = [boxed("3"), boxed("4"), boxed("\\sqrt{48}"), boxed("12.50")]
    batch = score_batch(
        "math", completions, ["3", "3", "4\\sqrt{3}", "12.5"], pool=pool, **reward_args()
    )
    assert batch.accuracy.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert batch.pooled == 1


def test_every_dataset_label_matches_itself_and_no_other():
    from mapo.data.schema import EMOSET_LABELS, EMOTION6_LABELS

    labels = sorted(set(EMOSET_LABELS) | set(EMOTION6_LABELS))
    completions = [boxed(given.capitalize()) for given in labels for _ in labels]
    golds = [gold for _ in labels for gold in labels]
    batch = score_batch("emotion", completions, golds, **reward_args())
    expected = [float(g == a) for g in labels for a in labels]
    assert batch.accuracy.tolist() == expected


def test_math_gold_listing_several_answers_accepts_each():
    from mapo.rewards.text import accepted_answers

    assert accepted_answers("C\nD") == ["C", "D"] and accepted_answers("18") == ["18"]
    comps = ["<think>x</think> \\boxed{D}", "<think>x</think> \\boxed{B}", "\\boxed{C}"]
    batch = score_batch(["math"] * 3, comps, ["C\nD"] * 3, **reward_args(format_weight=0.0))
    assert list(batch.accuracy) == [1.0, 0.0, 1.0]
