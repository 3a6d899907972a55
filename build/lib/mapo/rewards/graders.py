"""Answer graders: mathruler's ``grade_answer`` (the paper's) and math-verify.

Each grader has two entry points:

- ``quick(given, gold) -> bool | None``: runs in the caller's process, never reaches sympy or
  pylatexenc, and answers ``None`` when it cannot decide. For mathruler this runs
  ``grade_answer`` itself with its two slow steps switched off (``_Sympy.quick``); if either
  was needed the answer is ``None``, so a decided answer is exactly mathruler's.
- ``full(given, gold) -> bool``: the complete grader, run only inside the worker processes of
  ``pool.GraderPool`` because sympy can hang or exhaust memory on hostile input.

Importing this module patches functions of the third-party graders in this process (they are
looked up through module globals at call time, so the patch takes effect):
- ``mathruler.grader.are_equal_under_sympy``: decides two plain numbers without sympy and, in
  quick mode, defers instead of calling sympy;
- ``mathruler.grader._parse_latex`` (pylatexenc): defers in quick mode;
- ``mathruler.grader._sympy_parse`` and ``math_verify.parser.parse_expr_cached``: refuse any
  string that ``safety.is_safe_python_expr`` rejects before it can reach ``eval``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from mathruler import grader as _mr

from .safety import is_safe_python_expr

GRADERS = ("mathruler", "math_verify")
_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# A Python int literal (no leading zeros: "012" is a SyntaxError, which mathruler grades False)
# or a decimal with a dot.
_PLAIN_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)|-?[0-9]+\.[0-9]+")


class UnsafeExpressionError(ValueError):
    """Raised instead of handing a string that could execute code to ``parse_expr``."""


class _Sympy(threading.local):
    """Per-thread switch: in quick mode mathruler's sympy comparison is deferred."""

    quick: bool = False
    deferred: bool = False


_STATE = _Sympy()
_original_are_equal = _mr.are_equal_under_sympy
_original_sympy_parse = _mr._sympy_parse
_original_parse_latex = _mr._parse_latex


class _Deferred(Exception):
    """Raised in quick mode where mathruler would start slow work; its bare excepts catch it."""


def _plain_int_equal(a: str, b: str) -> bool | None:
    """``(a) - (b) == 0`` for two plain integer literals, as sympy would decide it."""
    if _PLAIN_INT.fullmatch(a) and _PLAIN_INT.fullmatch(b) and max(len(a), len(b)) < 4000:
        return int(a) == int(b)
    return None


def _plain_number_equal(a: str, b: str) -> bool | None:
    """The same for plain decimals of at most 15 digits: sympy parses them to 53-bit Floats,
    which are equal exactly when the decimals are (15 digits fit in 53 bits)."""
    decided = _plain_int_equal(a, b)
    if decided is not None:
        return decided
    if _PLAIN_NUMBER.fullmatch(a) and _PLAIN_NUMBER.fullmatch(b):
        if sum(c.isdigit() for c in a) <= 15 and sum(c.isdigit() for c in b) <= 15:
            return Decimal(a) == Decimal(b)
    return None


def _are_equal_under_sympy(ground_truth: str, given: str) -> bool:
    decided = _plain_number_equal(ground_truth, given)
    if decided is not None:
        return decided
    if _STATE.quick:
        _STATE.deferred = True  # mathruler would ask sympy here: let a worker do it
        return False
    return _original_are_equal(ground_truth, given)


def _parse_latex(expr: str) -> str:
    # pylatexenc is exponential on some hostile input (measured: 14 nested unclosed `\frac{`
    # take 14 s), so LaTeX parsing, like sympy, only happens in a worker.
    if _STATE.quick:
        _STATE.deferred = True
        raise _Deferred
    return _original_parse_latex(expr)


def _guarded_sympy_parse(expr: str):
    if not is_safe_python_expr(expr.replace("^", "**")):
        raise UnsafeExpressionError("refused to parse a string that could execute code")
    return _original_sympy_parse(expr)


_mr.are_equal_under_sympy = _are_equal_under_sympy
_mr._parse_latex = _parse_latex
_mr._sympy_parse = _guarded_sympy_parse


def mathruler_quick(given: str, gold: str) -> bool | None:
    _STATE.quick, _STATE.deferred = True, False
    try:
        correct = bool(_mr.grade_answer(given, gold))
    finally:
        _STATE.quick = False
    # Any deferral leaves the answer open: the worker runs the unabridged grader.
    return None if _STATE.deferred else correct


def mathruler_full(given: str, gold: str) -> bool:
    return bool(_mr.grade_answer(given, gold))


def math_verify_quick(given: str, gold: str) -> bool | None:
    # math-verify has no sympy-free path worth mirroring; only two shortcuts are certain:
    # identical non-empty strings, and two plain integers.
    if given.strip() and given.strip() == gold.strip():
        return True
    return _plain_int_equal(given.strip(), gold.strip())


_math_verify_installed = False


def _install_math_verify_guard() -> None:
    global _math_verify_installed
    if _math_verify_installed:
        return
    from math_verify import parser as mv_parser

    original = mv_parser.parse_expr_cached

    def guarded(expr: str):
        if not is_safe_python_expr(expr):
            raise UnsafeExpressionError("refused to parse a string that could execute code")
        return original(expr)

    mv_parser.parse_expr_cached = guarded
    # We time-limit from outside (pool.py); silence its "timeout is disabled" warning.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _math_verify_installed = True


def math_verify_full(given: str, gold: str) -> bool:
    _install_math_verify_guard()
    from math_verify import parse, verify

    # Both sides boxed: math-verify then extracts exactly the box content, like mathruler.
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    given_parsed = parse("\\boxed{" + given + "}", parsing_timeout=None)
    return bool(verify(gold_parsed, given_parsed, timeout_seconds=None))


@dataclass(frozen=True)
class Grader:
    name: str
    quick: Callable[[str, str], bool | None]
    full: Callable[[str, str], bool]


_GRADERS = {
    "mathruler": Grader("mathruler", mathruler_quick, mathruler_full),
    "math_verify": Grader("math_verify", math_verify_quick, math_verify_full),
}


def get_grader(name: str) -> Grader:
    if name not in _GRADERS:
        raise ValueError(f"unknown grader {name!r}; choose one of {sorted(_GRADERS)}")
    return _GRADERS[name]


def preload() -> None:
    """Import everything a worker needs before it reports ready (so no item pays for it)."""
    _install_math_verify_guard()
    logging.getLogger("pylatexenc").setLevel(logging.ERROR)  # one warning per odd macro
    from .safety import _parse_expr_namespace

    _parse_expr_namespace()
    for grader in _GRADERS.values():  # first calls build parsers and caches: not an item's time
        grader.full("\\frac{1}{2}", "0.5")
