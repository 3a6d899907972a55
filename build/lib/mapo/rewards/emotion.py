"""Reward kind ``emotion``: the same format as ``math``; accuracy compares the boxed label with
the gold label after normalisation (case, punctuation, LaTeX wrappers, filler words such as
"the emotion is", plurals) and a small table of unambiguous synonyms.

A completion without a closed box has no answer (accuracy 0), as in the math kind: a label
mentioned in the reasoning is not an answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .grading import MAX_ANSWER_CHARS, Grading
from .registry import register_reward
from .text import has_think_then_box, last_boxed, normalize_response

# Canonical names follow EmoSet (amusement, awe, contentment, excitement, anger, disgust, fear,
# sadness) and Emotion6 (adds joy, surprise). Only word forms and unambiguous synonyms map:
# "happy" -> joy matches Emotion6's "joy"; against EmoSet it stays wrong, because happiness could
# be amusement, contentment or excitement there.
_CANONICAL = {
    "amusement": ("amused", "amusing"),
    "awe": ("awed", "awestruck", "awestricken"),
    "contentment": ("content", "contented"),
    "excitement": ("excited", "exciting"),
    "anger": ("angry", "angered"),
    "disgust": ("disgusted", "disgusting"),
    "fear": ("fearful", "afraid", "scared", "scary", "frightened", "frightening"),
    "sadness": ("sad", "saddened"),
    "joy": ("joyful", "joyous", "happy", "happiness"),
    "surprise": ("surprised", "surprising"),
}
SYNONYMS = {word: label for label, words in _CANONICAL.items() for word in (label, *words)}

# Words that frame a label without changing it ("The emotion evoked is: Fear."). Negations and
# conjunctions are deliberately absent: "not fear" or "fear and sadness" must not match "fear".
FILLER = frozenset(
    """
    the a an is are was it its this that i my think would be most likely probably
    emotion emotions emotional feeling feelings feel sense mood sentiment state
    answer final label category class image picture photo evoked evokes evoke
    conveyed conveys expressed expresses primary main dominant overall of
    """.split()
)

_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script


def _canonical_word(word: str) -> str:
    if word in SYNONYMS:
        return SYNONYMS[word]
    for suffix in ("es", "s"):  # plurals: "fears" -> fear
        if word.endswith(suffix) and word[: -len(suffix)] in SYNONYMS:
            return SYNONYMS[word[: -len(suffix)]]
    return word


def normalize_label(text: str) -> str:
    """``"\\text{The emotion is: Scared!}"`` -> ``"fear"``; unknown words are kept as-is."""
    text = unicodedata.normalize("NFKC", _LATEX_COMMAND.sub(" ", text)).casefold()
    words = [_canonical_word(w) for w in _WORD.findall(text) if w not in FILLER]
    return " ".join(words)


def label_matches(given: str | None, gold: str) -> bool:
    if not given or len(gold) > MAX_ANSWER_CHARS:
        return False
    normalized_gold = normalize_label(gold)
    return bool(normalized_gold) and normalize_label(given) == normalized_gold


@register_reward("emotion")
def emotion_reward(
    completions: Sequence[str], answers: Sequence[str], grading: Grading
) -> tuple[list[float], list[float]]:
    normalized = [normalize_response(c) for c in completions]
    formats = [float(has_think_then_box(text)) for text in normalized]
    given = [last_boxed(text, MAX_ANSWER_CHARS) for text in normalized]
    accuracy = [float(label_matches(g, a)) for g, a in zip(given, answers)]
    return formats, accuracy
