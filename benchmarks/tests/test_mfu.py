"""The FLOP count and MFU of benchmarks/mfu.py against hand-computed numbers."""

import pytest
import torch

from benchmarks.mfu import param_counts, training_flops, utilisation


def test_param_counts_of_the_7b_architecture_by_part():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from benchmarks.arch7b import QWEN25_VL_7B as dims

    config = Qwen2_5_VLConfig(
        text_config=dims["text"], vision_config=dims["vision"], tie_word_embeddings=False
    )
    with torch.device("meta"):
        counts = param_counts(Qwen2_5_VLForConditionalGeneration(config))
    h, f, layers, vocab, kv = 3584, 18944, 28, 152064, 4 * 128
    # per decoder layer: q (with bias), k, v (with bias, 4 KV heads of 128), o, 3 MLP
    # matrices, 2 RMSNorms; then the final norm and the untied lm_head
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * f + 2 * h
    assert counts["embedding"] == vocab * h
    assert counts["flops"] == layers * layer + h + vocab * h
    assert counts["total"] == 8_292_166_656
    assert counts["vision"] == counts["total"] - counts["flops"] - counts["embedding"]


def test_training_flops_and_utilisation():
    assert training_flops(10, 3.0, recompute=False) == {
        "model_flops": 180.0,
        "hardware_flops": 180.0,
    }
    assert training_flops(10, 3.0, recompute=True) == {
        "model_flops": 180.0,
        "hardware_flops": 240.0,
    }
    # 494.5 TFLOP in 1 s on a 989 TFLOP/s part is 50 %
    assert utilisation(494.5e12, 1.0, peak_tflops=989.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="seconds"):
        utilisation(1.0, 0.0)
