"""Generation at the realistic shape's forced lengths (``python -m benchmarks.shapes``): HF
``generate`` and vLLM (CPU), each row ending exactly at its drawn length."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.shapes_workload import build, prompts_and_lengths


def hf_generation(w: dict) -> dict:
    """Seconds for HF generate of one group per prompt at the drawn lengths."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from mapo.models.batching import encode_prompts

    model, processor = build(w["pixels"])
    model.eval()
    prompts, lengths = prompts_and_lengths(processor, w)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    enc = encode_prompts(processor, prompts)
    g = w["group"]
    rows = torch.arange(len(prompts)).repeat_interleave(g)
    target = torch.tensor(lengths)

    class ForceLength(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - enc["input_ids"].shape[1]
            scores[step < target - 1, eos] = float("-inf")  # not before the drawn length
            at_end = step == target - 1
            scores[at_end] = float("-inf")
            scores[at_end, eos] = 0.0
            return scores

    per_row_pixels, grids = [], []
    patches = enc["image_grid_thw"].prod(-1).tolist()
    starts = [0] + torch.tensor(patches).cumsum(0).tolist()
    for r in rows.tolist():
        per_row_pixels.append(enc["pixel_values"][starts[r] : starts[r + 1]])
        grids.append(enc["image_grid_thw"][r])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=enc["input_ids"][rows],
            attention_mask=enc["attention_mask"][rows],
            pixel_values=torch.cat(per_row_pixels),
            image_grid_thw=torch.stack(grids),
            mm_token_type_ids=enc["mm_token_type_ids"][rows],
            do_sample=True,
            max_new_tokens=int(target.max()),
            logits_processor=LogitsProcessorList([ForceLength()]),
            eos_token_id=eos,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1] :]
    ended = (new == eos).any(-1)
    first_eos = (new == eos).int().argmax(-1) + 1  # length of each row, eos included
    return {
        "engine": "hf",
        "s": seconds,
        "tokens": int(target.sum()),
        "lengths_match": bool(ended.all() and (first_eos == target).all()),
    }


def save_model(folder: Path, w: dict) -> Path:
    """The DIMS model and the tiny processor as a checkpoint folder (for vLLM)."""
    from mapo.models.tiny import UNKEYED_FAMILY, save_processor

    model, processor = build(w["pixels"])
    model.save_pretrained(folder)
    save_processor(processor.tokenizer, folder, UNKEYED_FAMILY)
    return folder


def vllm_generation(folder: Path, w: dict) -> dict:
    """Seconds for vLLM (CPU) to generate the drawn lengths: min_tokens = max_tokens, eos
    ignored; the image resize range is passed as processor kwargs."""
    from mapo.models.loading import load_processor
    from mapo.rollout.vllm import import_vllm

    vllm = import_vllm()
    processor = load_processor(folder)
    prompts, lengths = prompts_and_lengths(processor, w)
    llm = vllm.LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=4096,
        seed=0,
        limit_mm_per_prompt={"image": 1, "video": 0},
        mm_processor_kwargs={"min_pixels": w["pixels"][0], "max_pixels": w["pixels"][1]},
    )
    requests, params = [], []
    for i, k in enumerate(lengths):
        prompt = prompts[i // w["group"]]
        requests.append({"prompt": prompt.text, "multi_modal_data": {"image": prompt.images[0]}})
        params.append(vllm.SamplingParams(min_tokens=k, max_tokens=k, ignore_eos=True, seed=i))
    start = time.perf_counter()
    outs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    got = [len(o.outputs[0].token_ids) for o in outs]
    return {"engine": "vllm", "s": seconds, "tokens": sum(lengths), "lengths_match": got == lengths}
