"""The realistic-shape workload of ``python -m benchmarks.shapes`` (its docstring describes it):
the Qwen2.5-VL architecture at CPU width, photo-sized images through the real resize, prompts
of 100-400 text tokens and long-tailed completion lengths."""

from __future__ import annotations

import torch

DIMS = {
    "text": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        max_window_layers=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    ),
    "vision": dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=256,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    ),
}
MIN_PIXELS, MAX_PIXELS = 512 * 512, 2048 * 2048  # conf/data/geo3k.yaml
IMAGE_SIZES = [(640, 480), (512, 512), (600, 600), (800, 450), (480, 640)]


def workload(quick: bool) -> dict:
    if quick:
        return dict(
            prompts=2,
            group=4,
            median=12,
            cap=48,
            text=(20, 40),
            budget=300,
            size=0.2,
            pixels=(56 * 56, 112 * 112),
        )
    return dict(
        prompts=2,
        group=8,
        median=200,
        cap=1024,
        text=(100, 400),
        budget=8192,
        size=1.0,
        pixels=(MIN_PIXELS, MAX_PIXELS),
    )


def build(pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS), seed: int = 0):
    """(model, processor): the DIMS Qwen2.5-VL with random weights and the tiny tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from mapo.models.processor import ImageOnlyQwen2_5_VLProcessor
    from mapo.models.tiny import SPECIAL_TOKENS
    from mapo.models.tiny_tokenizer import default_corpus, train_tiny_tokenizer

    tok = train_tiny_tokenizer(list(default_corpus()), vocab_size=1024)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            DIMS["text"],
            vocab_size=len(tok),
            bos_token_id=eot,
            eos_token_id=im_end,
            pad_token_id=eot,
        ),
        vision_config=DIMS["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    images = Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1])
    processor = ImageOnlyQwen2_5_VLProcessor(images, tok, chat_template=tok.chat_template)
    return model, processor


def images_questions_lengths(processor, w: dict, seed: int = 0):
    """B images and B question texts (100-400 text tokens each) and N = B x G completion
    lengths, drawn from ``seed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = " ".join(processor.tokenizer.decode(list(range(40, 300))).split())
    images, questions = [], []
    for b in range(w["prompts"]):
        size = IMAGE_SIZES[b % len(IMAGE_SIZES)]
        size = (int(size[0] * w["size"]), int(size[1] * w["size"]))
        images.append(Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")))
        target = int(rng.integers(*w["text"]))
        text_ids = processor.tokenizer(words * 20)["input_ids"][:target]
        questions.append(processor.tokenizer.decode(text_ids))
    n = w["prompts"] * w["group"]
    lengths = np.minimum(np.round(rng.lognormal(np.log(w["median"]), 0.8, n)), w["cap"])
    return images, questions, [max(1, int(x)) for x in lengths]


def prompts_and_lengths(processor, w: dict, seed: int = 0):
    """B prompts (an image + 100-400 text tokens) and N = B x G completion lengths."""
    from mapo.types import Prompt

    images, questions, lengths = images_questions_lengths(processor, w, seed)
    prompts = []
    for b, (image, question) in enumerate(zip(images, questions)):
        content = [{"type": "image"}, {"type": "text", "text": question}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        prompts.append(Prompt(uid=str(b), text=text, images=(image,), answer="1", task="emotion"))
    return prompts, lengths


def batch(processor, w: dict, seed: int = 0):
    from mapo.models.batching import build_policy_inputs
    from mapo.models.processor import suppressed_token_ids
    from mapo.types import Completions

    prompts, lengths = prompts_and_lengths(processor, w, seed)
    tok = processor.tokenizer
    banned = set(suppressed_token_ids(tok, eos_token_ids=[], vocab_size=len(tok)))
    allowed = torch.tensor([i for i in range(len(tok)) if i not in banned])
    gen = torch.Generator().manual_seed(seed)
    ids = [allowed[torch.randint(len(allowed), (k,), generator=gen)].tolist() for k in lengths]
    n = len(lengths)
    comps = Completions(
        prompt_index=[i // w["group"] for i in range(n)],
        token_ids=ids,
        text=[""] * n,
        truncated=[False] * n,
    )
    inputs = build_policy_inputs(processor, prompts, comps, pad_token_id=tok.pad_token_id)
    return inputs, torch.randn(n, generator=gen)
