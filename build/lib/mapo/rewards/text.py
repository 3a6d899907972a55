"""Linear-time text helpers shared by the reward kinds: response normalisation, the
think-then-boxed format check and last-``\\boxed{}`` extraction.

These mirror EasyR1's ``examples/reward_function/math.py`` (the authors' reward code), but
EasyR1 does both jobs with regular expressions that backtrack catastrophically on hostile
model output (measured here: its ``\\s*(<|>|/)\\s*`` normalisation takes 1.2 s on 10 kB of
spaces, quadratic; its format ``fullmatch`` takes 10 s on 15 kB of repeated ``</think>`` /
``\\boxed{``, cubic). Everything here is ``str.find`` or a single non-backtracking regex
pass, so a megabyte completion costs milliseconds.
"""

from __future__ import annotations

import re

BOX_OPEN = "\\boxed{"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Whitespace after a tag char, or a whole whitespace run (taken atomically via the
# lookahead-capture-backreference idiom, so it is never re-scanned) that ends at a tag char.
# The `(?<!\s)` makes only run starts try the second branch: linear time, unlike EasyR1's
# `\s*(<|>|/)\s*`, which retries the whole run from every start position.
_SPACE_AT_TAG = re.compile(r"(?<=[<>/])\s+|(?<!\s)(?=(\s+))\1(?=[<>/])")
_TAG_CHARS = "<>/"


def normalize_response(text: str) -> str:
    r"""Drop whitespace touching ``<``, ``>`` or ``/`` (EasyR1's fix for Qwen2.5-VL-32B,
    which writes ``< think >``): the same result as ``re.sub(r"\s*(<|>|/)\s*", r"\1", text)``
    in linear time."""
    if not any(ch in text for ch in _TAG_CHARS):
        return text  # common fast path: nothing can change
    return _SPACE_AT_TAG.sub("", text)


def has_think_then_box(text: str) -> bool:
    """True iff ``text`` fully matches EasyR1's ``<think>.*</think>.*\\\\boxed\\{.*\\}.*``
    (DOTALL), decided with three ``str.find`` calls.

    The earliest occurrence of each piece is always the best choice for a later piece, so
    greedy left-to-right search is exact: the text must start with ``<think>``, a ``</think>``
    must follow it, a ``\\boxed{`` must follow that and a ``}`` must follow the box opener.
    Like EasyR1, the braces need not balance and text may follow the box.
    """
    if not text.startswith(THINK_OPEN):
        return False
    close = text.find(THINK_CLOSE, len(THINK_OPEN))
    if close < 0:
        return False
    box = text.find(BOX_OPEN, close + len(THINK_CLOSE))
    if box < 0:
        return False
    return text.find("}", box + len(BOX_OPEN)) >= 0


def last_boxed(text: str, max_chars: int) -> str | None:
    """Content of the LAST ``\\boxed{...}`` with balanced braces, stripped, like mathruler's
    ``extract_boxed_content`` (which also looks only at the last opener: if that one is
    unclosed there is no answer, even when an earlier box is closed).

    Differences from mathruler, both on purpose:
    - no answer gives ``None``, not the string ``"None"`` (which would grade as correct
      against a gold answer ``None``);
    - the scan stops after ``max_chars`` characters of content, which bounds the work on
      megabyte or 10^5-deep brace floods: a box still open there is returned as its first
      ``max_chars + 1`` characters (unstripped), i.e. longer than the cap, so the caller can
      tell "too long" (``len > max_chars``, rejected and counted) from "no answer".
    """
    start = text.rfind(BOX_OPEN)
    if start < 0:
        return None
    begin = start + len(BOX_OPEN)
    window = text[begin : begin + max_chars + 1]  # [<= max_chars + 1]
    depth = 0
    for m in _BRACE.finditer(window):
        depth += 1 if m[0] == "{" else -1
        if depth < 0:  # the brace that closes the box; its index is <= max_chars
            return window[: m.start()].strip()
    return window if len(window) > max_chars else None


_BRACE = re.compile(r"[{}]")
