"""Shared fixtures. Session-scoped ones are built once per test run; never mutate them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mapo.types import Prompt


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL (seed 0, default corpus), built once per session in a temp dir."""
    from mapo.models.tiny import tiny_model_path

    return tiny_model_path(tmp_path_factory.mktemp("tiny-cache"), seed=0)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from mapo.models.loading import load_processor

    return load_processor(tiny_model_dir)


def _make_prompt(processor, question: str, image_sizes, *, seed: int = 0) -> Prompt:
    rng = np.random.default_rng(seed)
    images = tuple(
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in image_sizes
    )
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return Prompt(uid=f"{question}-{seed}", text=text, images=images, answer="awe", task="emotion")


@pytest.fixture(scope="session")
def make_tiny_prompt(tiny_processor):
    """make_tiny_prompt(question, [(width, height), ...], seed=0) -> a chat-templated Prompt
    with one random RGB image per size (no sizes: a text-only prompt)."""

    def make(question: str, image_sizes=(), *, seed: int = 0) -> Prompt:
        return _make_prompt(tiny_processor, question, image_sizes, seed=seed)

    return make


@pytest.fixture(scope="session")
def tiny_prompts(make_tiny_prompt) -> list[Prompt]:
    """Three prompts of different lengths and image layouts (1 square, 2 mixed, 1 wide image)."""
    return [
        make_tiny_prompt("Which emotion does this image evoke?", [(56, 56)], seed=1),
        make_tiny_prompt("How many dots?", [(56, 56), (84, 28)], seed=2),
        make_tiny_prompt(
            "How many dots are in the image? Add 2 to the count. Answer with one number.",
            [(112, 56)],
            seed=3,
        ),
    ]


def _sharpen(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name and ("q_proj" in name or "k_proj" in name):
                param.mul_(8.0)
        model.get_output_embeddings().weight.mul_(10.0)
    return model


@pytest.fixture(scope="session")
def sharpen():
    """sharpen(model) scales the tiny model's text attention logits (x8) and LM head (x10) in
    place. At random init attention is nearly uniform, so even wrong positions move log-probs
    by only ~2e-3 nats; sharpened, a position bug costs whole nats (as docs/facts.md ("CPU machines") records on
    a trained model), so exact-match tests mean something."""
    return _sharpen


@pytest.fixture
def torch_threads():
    """One intra-op thread for the test, restored afterwards: the CPU is shared, and on 2
    cores one thread is steadier and no slower for the tiny model's small matmuls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
