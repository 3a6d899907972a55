"""Guards that keep model output from being executed or from stalling a grader.

Both graders hand strings derived from model output to ``sympy.parsing.parse_expr``:
mathruler's ``_sympy_parse`` (after its own normalisation) and math-verify's
``parse_expr_cached`` (its plain-expression extraction). ``parse_expr`` ends in Python's
``eval``, and its default namespace holds ``from sympy import *`` plus every builtin
function (``eval``, ``exec``, ``open``, ``__import__``, ``chr``), which its ``auto_symbol``
step keeps as callables rather than turning into symbols. mathruler's own filter (at most two
distinct letters) makes an exploit hard but not impossible, and math-verify has none, so
``is_safe_python_expr`` is checked right before ``parse_expr`` (``graders.py`` installs it).

The rule is an allow-list, so anything unforeseen is refused:
- ASCII only (Python folds full-width letters in identifiers, e.g. ``ｅｘｅｃ`` == ``exec``);
- only digits, letters, whitespace and ``+-*/^().,[]{}<>=!|&%~``: no quotes (so no string
  can be written), no ``_`` (no dunders), no ``:`` (no lambda, no walrus), no ``;``, ``@``,
  backslash or backtick;
- no attribute access (a ``.`` followed by a name);
- every name that ``parse_expr`` would resolve to an object (the names of its default
  namespace) must be one of a small set of math functions and constants; any other name
  becomes a harmless ``Symbol``.
"""

from __future__ import annotations

import re
from functools import lru_cache

_ALLOWED_CHARS = re.compile(r"[0-9A-Za-z\s+\-*/^().,\[\]{}<>=!|&%~]*")
_ATTRIBUTE = re.compile(r"\.\s*[A-Za-z]")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")

# Names in parse_expr's default namespace that an answer may legitimately use. Everything else
# there (S and sympify parse strings, preview runs LaTeX, plot opens windows, lambdify
# generates code, test runs the test-suite, chr builds strings, ...) is refused.
SAFE_NAMES = frozenset(
    """
    sqrt cbrt root pi E I oo zoo nan exp log ln
    sin cos tan cot sec csc asin acos atan acot asec acsc
    sinh cosh tanh coth asinh acosh atanh
    Abs abs sign re im arg conjugate floor ceiling frac Max Min max min
    factorial binomial gcd lcm Rational Integer Float
    Eq Ne Lt Le Gt Ge And Or Not Interval Union Intersection FiniteSet EmptySet Tuple
    """.split()
)


@lru_cache(maxsize=1)
def _parse_expr_namespace() -> frozenset[str]:
    """The names ``parse_expr`` resolves to objects by default (see its ``global_dict``)."""
    import builtins
    import types

    namespace: dict[str, object] = {}
    exec("from sympy import *", namespace)  # the same statement parse_expr runs
    names = {name for name in namespace if not name.startswith("_")}
    names |= {
        name
        for name, obj in vars(builtins).items()
        if isinstance(obj, types.BuiltinFunctionType | type)
    }
    return frozenset(names)


def is_safe_python_expr(expr: str) -> bool:
    """True if ``expr`` may be handed to ``sympy.parsing.parse_expr`` (module docstring)."""
    if not expr.isascii() or _ALLOWED_CHARS.fullmatch(expr) is None:
        return False
    if _ATTRIBUTE.search(expr):
        return False
    namespace = _parse_expr_namespace()
    return all(name in SAFE_NAMES or name not in namespace for name in _NAME.findall(expr))


# Shapes that make sympy or math-verify compute astronomically large numbers: exponent towers
# (10^{10^{10}}, 9**9**9**9), exponents of 6+ digits, factorials of large or parenthesised
# arguments and repeated factorials. Braces, parentheses and spaces are removed first so that
# 10^{10^{10}} reads 10^10^10.
_TOWER = re.compile(r"(?:\^|\*\*)[+-]?[\w.]+(?:\^|\*\*)")
_BIG_EXPONENT = re.compile(r"(?:\^|\*\*)[+-]?\d{6}")
_BIG_FACTORIAL = re.compile(r"\d{4}!|[)\]]!|!!")
_GROUPING = str.maketrans("", "", "{} \t\n")


def looks_explosive(answer: str) -> bool:
    """Cheap pre-filter for answers whose evaluation would hang or exhaust memory. A hit is
    only acted on when the gold answer does not have the same shape (``Grading``), so a
    legitimate tower in the gold answer still gets graded (under the timeout)."""
    flat = answer.translate(_GROUPING)
    return bool(_TOWER.search(flat) or _BIG_EXPONENT.search(flat) or _BIG_FACTORIAL.search(flat))
