"""Rewards under hostile model output: every call returns a valid reward, never raises, finishes
within a bound and never executes anything.

Fast tests run the in-process path with a stand-in pool (``RecordingPool``) that answers
"timeout" for everything sent to it, so they need no worker process. Tests marked slow use real
worker processes: sympy, pylatexenc, timeouts, kills and restarts.
"""

from __future__ import annotations

import builtins
import threading
import time
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported up front: score_batch imports it lazily, not a cost to time)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapo.pipeline.quickrun import reward_args
from mapo.rewards import GraderPool, score, score_batch
from mapo.rewards.graders import UnsafeExpressionError, math_verify_full, mathruler_full
from mapo.rewards.safety import is_safe_python_expr

IN_PROCESS_BOUND_S = 3.0  # generous for a loaded 2-core machine; typical is milliseconds
MB = 1_000_000
KINDS = ("math", "emotion")
PWN_FLAG = "MAPO_REWARDS_PWNED"


def boxed(answer: str) -> str:
    return f"<think>thinking</think> \\boxed{{{answer}}}"


def chr_expr(code: str) -> str:
    """``code`` as a quote-free Python expression: exec(chr(105)+chr(109)+...)."""
    return "exec(" + "+".join(f"chr({ord(c)})" for c in code) + ")"


def payloads(marker: Path) -> dict[str, str]:
    """Answers that create ``marker`` or set ``builtins.MAPO_REWARDS_PWNED`` if executed."""
    touch = f"open({str(marker)!r}, 'w').write('x')"
    return {
        "import_system": f"__import__('os').system('touch {marker}')",
        "import_pathlib": f"__import__('pathlib').Path({str(marker)!r}).touch()",
        "exec_string": f'exec("import builtins; builtins.{PWN_FLAG} = 1")',
        "exec_chr_no_quotes": chr_expr(f"import builtins; builtins.{PWN_FLAG} = 1"),
        "open_chr_no_quotes": chr_expr(touch),
        "lambda_call": f"(lambda: {touch})()",
        "dunder_walk": "().__class__.__base__.__subclasses__()",
        "fullwidth_exec": "ｅｘｅｃ(" + chr_expr(f"import builtins; builtins.{PWN_FLAG} = 1") + ")",
        "eval_open": f"eval({touch!r})",
    }


def hostile_completions(marker: Path) -> dict[str, str]:
    corpus = {
        "megabyte_text": "a" * MB,
        "megabyte_reasoning": "<think>" + "x " * (MB // 2) + "</think>\\boxed{3}",
        "megabyte_tag_spaces": "< " * (MB // 2) + "/",  # quadratic for EasyR1's normaliser
        "repeated_think_box": "<think>" + "</think>\\boxed{" * 50_000,  # cubic for its format re
        "nested_braces_1e5": "\\boxed{" + "{" * 100_000 + "3" + "}" * 100_001,
        "unbalanced_open_1e5": "<think></think>\\boxed{" + "{" * 100_000,
        "unbalanced_close_1e5": "}" * 100_000 + "\\boxed{3}" + "}" * 100_000,
        "unclosed_box": "<think>x</think>\\boxed{3",
        "many_boxes": "\\boxed{1}" * 100_000,
        "tower_caret": boxed("10^{10^{10}}"),
        "tower_python": boxed("9**9**9**9"),
        "tower_4": boxed("10^{10^{10^{10}}}"),
        "huge_exponent": boxed("2^{100000000}"),
        "huge_factorial": boxed("(10^{10})!"),
        "double_factorials": boxed("10!!!!"),
        "slow_integral": boxed("\\int_0^\\infty e^{-x^{100}} dx"),
        "frac_nest_unbalanced": boxed("\\frac{" * 30 + "1" + "}" * 30),
        "latex_input": boxed("\\input{/etc/passwd}"),
        "latex_include": boxed("\\include{/etc/shadow}"),
        "latex_def_loop": boxed("\\def\\x{\\x}\\x"),
        "latex_write18": boxed(f"\\immediate\\write18{{touch {marker}}}"),
        "latex_begin_flood": boxed("\\begin{array}" * 60),
        "surrogates": "\ud800\udfff" * 1000 + boxed("\ud800"),
        "nul_bytes": "\x00" * 10_000 + boxed("3\x00"),
        "emoji_flood": "😀" * 200_000 + boxed("🔥" * 100),
        "rtl_marks": "\u202e" * 10_000 + boxed("\u202e3\u202c"),
        "zero_width": boxed("3\u200b"),
        "control_chars": "".join(map(chr, range(32))) * 1000,
        "backslash_megabyte": "\\" * MB,
        "dollars": "$" * 100_000 + boxed("$$$"),
        "empty": "",
        "only_opener": "\\boxed{",
    }
    corpus.update({f"py_{k}": boxed(v) for k, v in payloads(marker).items()})
    return corpus


class RecordingPool:
    """Stands in for GraderPool: records the jobs, answers "timeout" for each."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str, str]] = []

    def run(self, jobs, timeout_s, budget_s):
        self.jobs.extend(jobs)
        return [("timeout", False)] * len(jobs)


def assert_valid(result: dict) -> None:
    assert set(result) == {"overall", "format", "accuracy"}
    for value in result.values():
        assert type(value) is float and 0.0 <= value <= 1.0


def assert_nothing_executed(marker: Path) -> None:
    assert not marker.exists(), "a payload created a file"
    assert not hasattr(builtins, PWN_FLAG), "a payload set a global"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture(scope="module")
def pool():
    p = GraderPool(workers=1)
    yield p
    p.close()


def score_in_process(kind: str, completion: str, answer: str) -> tuple[dict, RecordingPool]:
    fake = RecordingPool()
    batch = score_batch(kind, [completion], [answer], pool=fake, **reward_args())
    result = {k: float(getattr(batch, k)[0]) for k in ("overall", "format", "accuracy")}
    return result, fake


# --- in-process path: bounded and safe without any worker ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_completions_in_process(kind, marker):
    for name, completion in hostile_completions(marker).items():
        for answer in ("3", completion):  # hostile answer side too
            start = time.perf_counter()
            result, _ = score_in_process(kind, completion, answer)
            elapsed = time.perf_counter() - start
            assert_valid(result)
            assert elapsed < IN_PROCESS_BOUND_S, f"{name}: {elapsed:.2f} s"
    assert_nothing_executed(marker)


def test_explosive_answers_are_rejected_before_any_grader(marker):
    for answer in ["9**9**9**9", "10^{10^{10}}", "2^{100000000}", "(10^{10})!", "10!!!!"]:
        fake = RecordingPool()
        batch = score_batch("math", [boxed(answer)], ["3"], pool=fake, **reward_args())
        assert batch.rejected == 1 and fake.jobs == [], answer
        assert batch.accuracy.tolist() == [0.0]


def test_overlong_answers_are_rejected(marker):
    fake = RecordingPool()
    batch = score_batch("math", [boxed("1+" * 600 + "1")], ["1201"], pool=fake, **reward_args())
    assert batch.rejected == 1 and fake.jobs == []


def test_pooled_timeouts_are_counted_and_score_zero():
    fake = RecordingPool()
    batch = score_batch(
        "math", [boxed("\\sqrt{48}")] * 3, ["4\\sqrt{3}"] * 3, pool=fake, **reward_args()
    )
    assert len(fake.jobs) == 3 and batch.timeouts == 3
    assert batch.accuracy.tolist() == [0.0] * 3 and batch.format.tolist() == [1.0] * 3


# --- injection: the guard refuses what parse_expr would execute ----------------------------


def test_payloads_are_live_without_the_guard(marker):
    """Control: plain sympy parse_expr executes the quote-free payload, so the tests below
    that see nothing happen are meaningful."""
    from sympy.parsing.sympy_parser import parse_expr

    parse_expr(chr_expr(f"open({str(marker)!r}, 'w').write('x')"))
    assert marker.exists()


def test_guard_refuses_every_payload(marker):
    import mathruler.grader as mr

    for name, payload in payloads(marker).items():
        assert not is_safe_python_expr(payload), name
        with pytest.raises(UnsafeExpressionError):
            mr._sympy_parse(payload)
    for benign in ["(1/2)-(0.5)", "sqrt(48)-4*sqrt(3)", "(x+1)-(1+x)", "pi*r**2", "Abs(-3)"]:
        assert is_safe_python_expr(benign), benign
    assert_nothing_executed(marker)


@pytest.mark.parametrize(
    "full", [mathruler_full, pytest.param(math_verify_full, marks=pytest.mark.slow)]
)
def test_full_graders_never_execute_payloads(full, marker):
    # In this process on purpose: a guard failure would set the global we check.
    for name, payload in payloads(marker).items():
        for gold in ("3", "x", payload):
            assert full(payload, gold) in (True, False), name
    assert_nothing_executed(marker)


def test_latex_input_is_not_followed(tmp_path):
    secret = tmp_path / "secret.tex"
    secret.write_text("4242")
    result, _ = score_in_process("math", boxed(f"\\input{{{secret}}}"), "4242")
    assert result["accuracy"] == 0.0
    assert mathruler_full(f"\\input{{{secret}}}", "4242") is False


# --- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(completion=st.text(), answer=st.text(), kind=st.sampled_from(KINDS))
def test_fuzz_in_process(completion, answer, kind):
    assert_valid(score_in_process(kind, completion, answer)[0])


@settings(max_examples=200, deadline=2000)
@given(
    answer_text=st.lists(st.sampled_from([*"0123456789+-*/^(){}x.,= !", "\\frac", "\\sqrt"])).map(
        "".join
    ),
    gold=st.sampled_from(["3", "0.5", "\\frac{1}{2}", "x+1", "awe"]),
)
def test_fuzz_math_like_answers_in_process(answer_text, gold):
    assert_valid(score_in_process("math", boxed(answer_text), gold)[0])


# --- real worker processes --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("grader", ["mathruler", "math_verify"])
def test_hostile_corpus_through_real_workers(pool, grader, marker):
    corpus = hostile_completions(marker)
    completions = list(corpus.values()) * 2
    answers = ["3"] * len(corpus) + list(corpus.values())
    kinds = ["math"] * len(completions)
    timeout_s, budget_s = 1.0, 60.0
    start = time.perf_counter()
    batch = score_batch(
        kinds,
        completions,
        answers,
        pool=pool,
        **reward_args(grader=grader, timeout_s=timeout_s, budget_s=budget_s),
    )
    elapsed = time.perf_counter() - start
    assert elapsed < budget_s + 10.0
    for tensor in (batch.overall, batch.format, batch.accuracy):
        assert tensor.shape == (len(completions),)
        assert bool(((tensor >= 0) & (tensor <= 1)).all())
    print(
        f"\n{grader}: {len(completions)} hostile items in {elapsed:.1f} s, pooled={batch.pooled} "
        f"timeouts={batch.timeouts} errors={batch.errors} rejected={batch.rejected} "
        f"restarts={pool.restarts}"
    )
    assert_nothing_executed(marker)


@pytest.mark.slow
def test_a_hang_times_out_and_the_worker_is_replaced(pool):
    # The gold is a tower too, so the pre-filter lets it through: mathruler's sympy never
    # returns on (9**9**9**8)-(9**9**9**9).
    completions = [boxed("9**9**9**9"), boxed("\\sqrt{48}"), boxed("9**9**9**9"), boxed("x+1")]
    answers = ["9**9**9**8", "4\\sqrt{3}", "9**9**9**8", "1+x"]
    restarts = pool.restarts
    start = time.perf_counter()
    batch = score_batch(
        "math", completions, answers, pool=pool, **reward_args(timeout_s=1.0, budget_s=60.0)
    )
    elapsed = time.perf_counter() - start
    assert batch.timeouts == 2 and pool.restarts == restarts + 2
    assert batch.accuracy.tolist() == [0.0, 1.0, 0.0, 1.0]  # items after a kill still graded
    assert elapsed < 30.0


@pytest.mark.slow
def test_a_worker_that_dies_costs_one_item(pool):
    score_batch(
        "math", [boxed("\\sqrt{48}")], ["4\\sqrt{3}"], pool=pool, **reward_args(timeout_s=30.0)
    )
    pool._slots[0].process.kill()  # dead between calls: replaced before use
    pool._slots[0].process.wait()
    batch = score_batch(
        "math", [boxed("\\sqrt{48}")], ["4\\sqrt{3}"], pool=pool, **reward_args(timeout_s=30.0)
    )
    assert batch.accuracy.tolist() == [1.0] and batch.errors == 0

    victim = pool._slots[0].process  # dies mid-item, long before the 30 s timeout
    killer = threading.Timer(2.0, victim.kill)
    killer.start()
    start = time.perf_counter()
    batch = score_batch(
        "math",
        [boxed("9**9**9**9"), boxed("x+1")],
        ["9**9**9**8", "1+x"],
        pool=pool,
        **reward_args(timeout_s=30.0),
    )
    killer.join()
    assert batch.errors == 1 and batch.timeouts == 0
    assert batch.accuracy.tolist() == [0.0, 1.0]
    assert time.perf_counter() - start < 25.0


@pytest.mark.slow
def test_budget_bounds_a_batch_of_hangs():
    p = GraderPool(workers=1)
    try:
        n = 6
        start = time.perf_counter()
        batch = score_batch(
            "math",
            [boxed("9**9**9**9")] * n,
            ["9**9**9**8"] * n,
            pool=p,
            **reward_args(timeout_s=1.0, budget_s=3.0),
        )
        elapsed = time.perf_counter() - start
        assert batch.timeouts == n and batch.accuracy.sum().item() == 0.0
        assert elapsed < 3.0 + 10.0  # budget plus killing the busy worker
    finally:
        p.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_score_never_raises_through_real_workers(kind, marker):
    for name, completion in list(hostile_completions(marker).items())[:12]:
        start = time.perf_counter()
        assert_valid(score(kind, completion, "3", **reward_args(timeout_s=1.0, budget_s=31.0)))
        assert time.perf_counter() - start < 1.0 + 30.0, name  # timeout + a cold worker start
    assert_nothing_executed(marker)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(completion=st.text(), answer=st.text())
def test_fuzz_through_real_workers(completion, answer):
    start = time.perf_counter()
    assert_valid(
        score("math", boxed(completion), answer, **reward_args(timeout_s=1.0, budget_s=31.0))
    )
    assert time.perf_counter() - start < 1.0 + 30.0
