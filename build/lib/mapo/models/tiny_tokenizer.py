"""A small byte-level BPE tokenizer with Qwen2.5-VL's special tokens, trained offline.

The vocabulary is laid out like Qwen's: the learned BPE tokens first, then the special tokens
in Qwen's order (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ... ``<|video_pad|>``),
then the words that must be single tokens (``<think>``, ``</think>``, emotion labels and the
numbers 0-20 that occur in the corpus). Those words are registered as non-special added tokens,
so they are one token wherever they appear (" amusement" is "Ġ" + "amusement") and are kept
when decoding with ``skip_special_tokens=True``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

# Qwen2.5-VL's chat and vision special tokens, in Qwen's id order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
THINK_TOKENS = ("<think>", "</think>")
# EmoSet's 8 labels plus the extra ones of 6/7-label out-of-domain sets (Emotion6, WEBEmo).
EMOTION_LABELS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "surprise",
    "joy",
    "love",
)
NUMBER_WORDS = tuple(str(n) for n in range(21))

# Qwen2-VL's chat template (the one shipped with Qwen2.5-VL-*-Instruct).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The chat skeleton every prompt is wrapped in: always part of the BPE training text.
_CHAT_SKELETON = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|im_end|>\n<|im_start|>assistant\n",
)
_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the "
    "final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The "
    "final answer MUST BE put in \\boxed{}."
)


def builtin_corpus() -> list[str]:
    """Prompt and answer strings of both synthetic tasks (used when mapo.data is absent)."""
    labels = ", ".join(EMOTION_LABELS[:8])
    corpus = [
        f"Which emotion does this image evoke? Answer with exactly one of these emotions: "
        f"{labels}. {_INSTRUCTION}",
        f"How many dots are in the image? {_INSTRUCTION}",
    ]
    corpus += [f"How many dots are in the image? Add {k} to the count. " for k in range(1, 4)]
    answers = list(EMOTION_LABELS) + list(NUMBER_WORDS)
    for think in ("I see the image.", "The colour tells the answer.", "I count the dots."):
        corpus += [f"<think>{think}</think> \\boxed{{{a}}}" for a in answers]
    return corpus


def default_corpus() -> list[str]:
    """The synthetic tasks' corpus (mapo.data.synthetic) when importable, else a built-in one."""
    try:
        from mapo.data.synthetic import tokenizer_corpus
    except ImportError:
        return builtin_corpus()
    return list(tokenizer_corpus())


def single_token_words(corpus: Sequence[str]) -> list[str]:
    """<think>, </think>, and the labels and numbers 0-20 that occur in the corpus as words."""
    text = "\n".join(corpus)
    words = [w for w in EMOTION_LABELS + NUMBER_WORDS if re.search(rf"(?<!\w){w}(?!\w)", text)]
    return list(THINK_TOKENS) + words


def _bpe_vocab_and_merges(corpus: Iterable[str], vocab_size: int) -> tuple[dict, list]:
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Split the special and single-token words out so BPE never learns merges across them.
    pinned = SPECIAL_TOKENS + THINK_TOKENS + EMOTION_LABELS
    splitter = re.compile("|".join(re.escape(t) for t in sorted(pinned, key=len, reverse=True)))
    # The chat skeleton wraps every prompt: twice, so min_frequency=2 lets BPE merge it.
    texts = list(corpus) + list(_CHAT_SKELETON) * 2
    pieces = [p for s in texts for p in splitter.split(s) if p]

    # Same normalizer and pre-tokenizer as Qwen2Tokenizer, so the merges mean the same there.
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix=""))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def train_tiny_tokenizer(corpus: Sequence[str], *, vocab_size: int = 1024):
    """A Qwen2Tokenizer (byte-level BPE) trained on ``corpus``; deterministic for a corpus.

    ``vocab_size`` caps the learned BPE vocabulary; a small corpus stops earlier (~370).
    """
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _bpe_vocab_and_merges(corpus, vocab_size)
    extra = [w for w in single_token_words(corpus) if w not in vocab]
    # Give the added tokens their ids in the vocabulary itself, in a fixed order.
    for token in list(SPECIAL_TOKENS) + extra:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        special_tokens=True,
    )
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in single_token_words(corpus)])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
