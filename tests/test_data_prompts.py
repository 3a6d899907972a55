"""Prompt templates, Qwen2.5-VL chat messages, image resizing and Prompt construction."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mapo.data.prompts import (
    build_messages,
    count_prompt_tokens,
    fill_template,
    filter_prompts_by_tokens,
    load_template,
    resize_image,
    to_prompt,
)
from mapo.data.schema import EMOSET_LABELS, decode_image, encode_image
from mapo.pipeline.quickrun import pixel_args
from mapo.types import Prompt

AUTHORS_MATH = (
    "You FIRST think about the reasoning process as an internal monologue and then provide "
    "the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)
# The Qwen2-VL chat template, images and text only (what the real processor renders).
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = QWEN_TEMPLATE
    return fast


class WordProcessor:
    """Counts whitespace words, plus 4 tokens per image (a stand-in for the expansion)."""

    def __call__(self, text, images=None, return_tensors="pt"):
        n = len(text[0].split()) + 4 * len(images or [])
        return {"input_ids": torch.zeros(1, n, dtype=torch.long)}


def row(task="math", size=(40, 20), n_images=1, **over):
    base = {
        "id": "q1",
        "images": [encode_image(Image.new("RGB", size, (0, 0, 255)))] * n_images,
        "problem": "Find $\\frac{1}{2}$ of {x}.",
        "answer": "3",
        "choices": list(EMOSET_LABELS) if task == "emotion" else None,
        "source": "unit",
        "task": task,
    }
    return {**base, **over}


def test_math_template_is_the_authors_prompt():
    text = fill_template(load_template("math"), row())
    assert text == "Find $\\frac{1}{2}$ of {x}. " + AUTHORS_MATH


def test_emotion_template_lists_the_row_labels_and_format():
    text = fill_template(load_template("emotion"), row("emotion", choices=["anger", "fear"]))
    assert "anger, fear" in text and "<think> </think>" in text and "\\boxed{}" in text
    with pytest.raises(ValueError, match="choices"):
        fill_template(load_template("emotion"), row("emotion", choices=None))


def test_load_template_from_path_and_unknown(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Q: {question}\n")
    assert load_template(path) == "Q: {question}"
    with pytest.raises(FileNotFoundError, match="math"):
        load_template("nonexistent")
    with pytest.raises(ValueError, match="question"):
        fill_template("no placeholder", row())


def test_build_messages_qwen_format_one_image_slot_per_image():
    msgs = build_messages(row(n_images=2))
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    content = msgs[0]["content"]
    assert content[:2] == [{"type": "image"}, {"type": "image"}]
    assert content[2]["type"] == "text" and content[2]["text"].endswith("\\boxed{}.")


@pytest.mark.parametrize(
    "size,lo,hi",
    [((40, 20), 3136, None), ((400, 100), None, 10_000), ((60, 60), 3136, 10_000)],
)
def test_resize_keeps_aspect_and_bounds(size, lo, hi):
    out = resize_image(Image.new("RGB", size), min_pixels=lo, max_pixels=hi)
    area = out.size[0] * out.size[1]
    assert lo is None or area >= lo
    assert hi is None or area <= hi
    assert abs(out.size[0] / out.size[1] - size[0] / size[1]) < 0.1
    if (lo is None or size[0] * size[1] >= lo) and (hi is None or size[0] * size[1] <= hi):
        assert out.size == size


def test_to_prompt_with_a_real_chat_template():
    prompt = to_prompt(row("emotion", answer="awe"), hf_tokenizer(), **pixel_args("synth_emo"))
    assert isinstance(prompt, Prompt)
    assert prompt.text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert prompt.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "amusement, awe" in prompt.text
    assert (prompt.uid, prompt.answer, prompt.task, prompt.source) == (
        "q1",
        "awe",
        "emotion",
        "unit",
    )
    (image,) = prompt.images
    assert image.mode == "RGB" and image.size[0] * image.size[1] >= 3136
    assert image.size[0] == 2 * image.size[1]  # 40x20 scaled up, aspect kept


def test_to_prompt_keeps_in_range_images_untouched():
    r = row(size=(56, 56))
    prompt = to_prompt(r, hf_tokenizer(), load_template("math"), **pixel_args("synth_math"))
    assert prompt.images[0].size == (56, 56)
    assert prompt.images[0].tobytes() == decode_image(r["images"][0]).tobytes()


def test_filter_prompts_by_tokens_drops_and_counts():
    short = Prompt("a", "one two", (Image.new("RGB", (4, 4)),), "1", "math")
    long = Prompt("b", "one two three four five", (Image.new("RGB", (4, 4)),), "1", "math")
    assert count_prompt_tokens(short, WordProcessor()) == 6
    kept, dropped = filter_prompts_by_tokens([short, long, short], WordProcessor(), 8)
    assert [p.uid for p in kept] == ["a", "a"] and dropped == 1
