"""The tiny Qwen2.5-VL builder, the tokenizer it trains, and the loading helpers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mapo.models.loading import load_policy, load_processor, load_reference, resolve_model_path
from mapo.models.processor import ImageOnlyQwen2_5_VLProcessor, suppressed_token_ids
from mapo.models.tiny import build_tiny_vlm, tiny_model_path
from mapo.models.tiny_tokenizer import (
    EMOTION_LABELS,
    SPECIAL_TOKENS,
    default_corpus,
    single_token_words,
)
from mapo.pipeline.quickrun import model_load_args, reference_load_args, tiny_model_args

SMALL_CORPUS = [
    "Which emotion does this image evoke? amusement, awe, fear or joy?",
    "<think>I see the image.</think> \\boxed{awe}",
    "<think>I count the dots.</think> \\boxed{7}",
    "How many dots are in the image? Add 12 to the count.",
] * 2


def _params(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_same_seed_builds_identical_model_and_tokenizer(tmp_path):
    a = build_tiny_vlm(tmp_path / "a", **tiny_model_args(seed=3), corpus=SMALL_CORPUS)
    b = build_tiny_vlm(tmp_path / "b", **tiny_model_args(seed=3), corpus=SMALL_CORPUS)
    c = build_tiny_vlm(tmp_path / "c", **tiny_model_args(seed=4), corpus=SMALL_CORPUS)
    wa, wb, wc = _params(a), _params(b), _params(c)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_build_refuses_to_overwrite_unless_asked(tmp_path):
    out = build_tiny_vlm(tmp_path / "m", **tiny_model_args(), corpus=SMALL_CORPUS)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_vlm(out, **tiny_model_args(), corpus=SMALL_CORPUS)
    assert build_tiny_vlm(out, **tiny_model_args(), corpus=SMALL_CORPUS, overwrite=True) == out


def test_folder_reloads_as_a_standard_qwen2_5_vl(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [4, 6, 6]
    model, info = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, output_loading_info=True
    )
    # every weight comes from the file (saved in the hub's key layout, as vLLM expects)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert "visual.patch_embed.proj.weight" in _params(tiny_model_dir)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 2)
    assert (vision.depth, vision.hidden_size, vision.patch_size) == (2, 64, 14)
    assert (vision.spatial_merge_size, vision.out_hidden_size) == (2, 128)
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 < n_params < 2_000_000


def test_labels_think_and_numbers_are_single_tokens(tiny_processor):
    tok = tiny_processor.tokenizer
    corpus = default_corpus()
    words = single_token_words(corpus)
    assert {"<think>", "</think>", "amusement", "sadness", "0", "20"} <= set(words)
    for word in words:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, ids)
        # the same id in context, and it survives decoding with special tokens skipped
        ids_ctx = tok(f"<think>ok</think> \\boxed{{{word}}}")["input_ids"]
        assert ids[0] in ids_ctx
        assert word in tok.decode(ids_ctx, skip_special_tokens=True)
    for special in SPECIAL_TOKENS:
        assert len(tok(special)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_labels_absent_from_the_corpus_are_not_pinned():
    words = single_token_words(["<think>x</think> \\boxed{awe} 3"])
    assert "awe" in words and "3" in words
    assert "fear" not in words and "12" not in words
    assert set(words) <= set(EMOTION_LABELS) | {"<think>", "</think>"} | {str(i) for i in range(21)}


def test_processor_expands_images_and_loads_from_stock_layouts(
    tiny_model_dir, tiny_prompts, tmp_path
):
    processor = load_processor(tiny_model_dir)
    assert isinstance(processor, ImageOnlyQwen2_5_VLProcessor)
    saved = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    # A hub-style (pre-v5) layout: preprocessor_config.json + chat_template.json, no
    # processor_config.json, as in Qwen/Qwen2.5-VL-7B-Instruct.
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    (legacy / "processor_config.json").unlink()
    template = (legacy / "chat_template.jinja").read_text()
    (legacy / "chat_template.jinja").unlink()
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    legacy_proc = load_processor(legacy)
    assert legacy_proc.chat_template == processor.chat_template
    assert legacy_proc.image_processor.size == processor.image_processor.size
    prompt = tiny_prompts[1]  # two images of different shapes
    a, b = (
        p(text=[prompt.text], images=list(prompt.images), return_tensors="pt")
        for p in (processor, legacy_proc)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # placeholders expanded: (h/2)*(w/2) image tokens per image for merge size 2
    image_id = processor.image_token_id
    assert image_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected = int((a["image_grid_thw"].prod(-1) // 4).sum())
    assert int((a["input_ids"] == image_id).sum()) == expected
    assert torch.equal(a["mm_token_type_ids"], (a["input_ids"] == image_id).long())


def test_missing_path_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as err:
        load_policy(missing, **model_load_args())
    assert str(missing) in str(err.value) and "model.path=" in str(err.value)
    assert resolve_model_path("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_policy_and_reference_modes(tiny_model_dir):
    policy = load_policy(tiny_model_dir, **model_load_args(freeze_vision=True))
    assert policy.training
    assert not any(p.requires_grad for p in policy.model.visual.parameters())
    assert all(p.requires_grad for p in policy.model.language_model.parameters())
    reference = load_reference(tiny_model_dir, **reference_load_args(dtype="bfloat16"))
    assert not reference.training and reference.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in reference.parameters())


def test_suppressed_ids_cover_vision_tokens_but_not_eos_or_think(tiny_processor):
    tok = tiny_processor.tokenizer
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    ids = suppressed_token_ids(tok, eos_token_ids=[im_end, eot], vocab_size=len(tok) + 3)
    names = set(tok.convert_ids_to_tokens([i for i in ids if i < len(tok)]))
    assert {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|im_start|>"} <= names
    assert not names & {"<|im_end|>", "<|endoftext|>", "<think>", "</think>", "awe"}
    assert set(range(len(tok), len(tok) + 3)) <= set(ids)  # unused rows of a padded vocab


def test_tiny_model_path_builds_once_and_reuses(tmp_path):
    first = tiny_model_path(tmp_path, **tiny_model_args(seed=5), corpus=SMALL_CORPUS)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path(tmp_path, **tiny_model_args(seed=5), corpus=SMALL_CORPUS) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert tiny_model_path(tmp_path, **tiny_model_args(seed=6), corpus=SMALL_CORPUS) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_10m_variant_has_about_ten_million_parameters(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = build_tiny_vlm(tmp_path / "m", **tiny_model_args(size="10m"), corpus=SMALL_CORPUS)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    assert 7_000_000 < sum(p.numel() for p in model.parameters()) < 13_000_000
    with pytest.raises(ValueError, match="known sizes"):
        build_tiny_vlm(tmp_path / "x", **tiny_model_args(size="huge"), corpus=SMALL_CORPUS)
