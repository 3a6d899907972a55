"""The realistic shape of ``benchmarks/shapes_workload.py`` as a training run that both trainers
(ours, TRL's GRPOTrainer) and the bare-compute worker take alike.

One folder per workload (under ``<cache_dir>/shape``, built once, then reused):

* ``model/``: the ``shapes_workload.DIMS`` Qwen2.5-VL (random weights from the seed) and the
  tiny tokenizer, its image processor saved with the workload's pixel range (Geo3K/EmoSet's
  ``min_pixels = 512 x 512``), so both trainers' processors see the same vision tokens;
* ``train.parquet``: B rows in the project's schema, one photo-sized image each and a question
  of 100-400 text tokens; every RL step takes all B of them;
* ``template.txt``: ``{question}`` alone (the chat template adds the rest);
* ``lengths.json``: each prompt's token count (image placeholders expanded) and the G drawn
  completion lengths of its group.

Completion lengths are forced identically on both sides by one logits processor, installed on
the model class's ``generate`` (``force_lengths``): a row's prompt is recognised by its token
count (``attention_mask``), its k-th row of that prompt gets the k-th drawn length, every eos id
is forbidden before that length and the model's first eos forced at it. A prompt not in the
table is an error, so both sides provably generate for the same prompts.

The reward (kind ``shape_length``, registered when this module is imported: our trainer names
it in ``plugins``) is ``(len(text) % 11) / 10``: a function of the sampled text that varies
within a group, so advantages are not all zero on either side.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mapo.rewards.registry import register_reward

WORKLOADS = {"shape": False, "shape-quick": True}  # Settings.workload -> workload(quick)
REWARD = "shape_length"


def length_reward(text: str) -> float:
    return (len(text) % 11) / 10


@register_reward(REWARD)
def _shape_reward(completions, answers, grading):
    values = [length_reward(c) for c in completions]
    return values, list(values)  # format == accuracy: overall is the value itself


def shape_workload(s) -> dict:
    """The workload dict of ``s.workload`` with ``s``'s prompts per step and group size."""
    from benchmarks.shapes_workload import workload

    if s.workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {sorted(WORKLOADS)}, got {s.workload!r}")
    return dict(workload(WORKLOADS[s.workload]), prompts=s.prompts, group=s.group)


def max_new_tokens(s) -> int:
    return s.fixed_length or shape_workload(s)["cap"]


def prepare(s) -> Path:
    """The workload's folder (model, rows, template, lengths), built on first use."""
    w = shape_workload(s)
    digest = hashlib.sha1(json.dumps([w, s.seed], sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(s.cache_dir) / "shape" / f"{s.workload}-{digest}"
    if (folder / "lengths.json").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, w, s.seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build(folder: Path, w: dict, seed: int) -> None:
    from benchmarks.shapes_workload import build, images_questions_lengths
    from mapo.data.schema import write_rows

    model, processor = build(w["pixels"], seed=seed)
    _save_model(folder / "model", model, processor, w["pixels"])
    images, questions, lengths = images_questions_lengths(processor, w, seed)
    rows = []
    for b, (image, question) in enumerate(zip(images, questions)):
        png = io.BytesIO()
        image.save(png, format="PNG")
        rows.append(
            {
                "id": f"p{b}",
                "images": [{"bytes": png.getvalue(), "path": None}],
                "problem": question.strip(),
                "answer": "1",
                "choices": None,
                "source": "shape",
                "task": "math",
            }
        )
    (folder / "template.txt").write_text("{question}\n")
    tokens = distinct_prompt_tokens(folder, rows, w["pixels"])
    write_rows(rows, folder / "train.parquet")
    g = w["group"]
    groups = [lengths[b * g : (b + 1) * g] for b in range(len(rows))]
    (folder / "lengths.json").write_text(json.dumps({"prompt_tokens": tokens, "lengths": groups}))


def _save_model(folder: Path, model, processor, pixels: tuple[int, int]) -> None:
    """The model and the tiny processor, the image processor's size set to ``pixels``."""
    from mapo.models.tiny import UNKEYED_FAMILY, save_processor

    model.save_pretrained(folder)
    save_processor(processor.tokenizer, folder, UNKEYED_FAMILY)
    size = {"shortest_edge": pixels[0], "longest_edge": pixels[1]}
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(dict(pre, size=size), indent=2))
    config = json.loads((folder / "processor_config.json").read_text())
    for key in ("image_processor", "video_processor"):
        config[key]["size"] = size
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def distinct_prompt_tokens(folder: Path, rows: list[dict], pixels: tuple[int, int]) -> list[int]:
    """Each row's prompt length in tokens, as the processor saved in ``folder`` encodes it; a
    row whose length an earlier row has gets words appended until it differs (the length is
    what tells the prompts apart in ``force_lengths``)."""
    from mapo.data.prompts import load_template, to_prompt
    from mapo.models.batching import encode_prompts
    from mapo.models.loading import load_processor

    processor = load_processor(folder / "model")
    template = load_template(folder / "template.txt")

    def count(row: dict) -> int:
        p = to_prompt(row, processor, template, min_pixels=pixels[0], max_pixels=pixels[1])
        return int(encode_prompts(processor, [p])["attention_mask"].sum())

    tokens: list[int] = []
    for row in rows:
        n = count(row)
        while n in tokens:
            row["problem"] += " more"
            n = count(row)
        tokens.append(n)
    return tokens


def length_table(s, folder: Path) -> dict[int, list[int]]:
    """prompt token count -> the G completion lengths of its group (``s.fixed_length``: all
    that length)."""
    data = json.loads((folder / "lengths.json").read_text())
    table = dict(zip(data["prompt_tokens"], data["lengths"]))
    if s.fixed_length:
        table = {k: [s.fixed_length] * len(v) for k, v in table.items()}
    return table


def step_completion_tokens(table: dict[int, list[int]]) -> int:
    """Completion tokens of one RL step (every prompt's group)."""
    return sum(sum(v) for v in table.values())


def targets_for(prompt_lengths: list[int], table: dict[int, list[int]]) -> list[int]:
    """Each generated row's forced length: its prompt's k-th drawn length for its k-th row."""
    seen: Counter = Counter()
    out = []
    for n in prompt_lengths:
        if n not in table:
            raise RuntimeError(f"a prompt of {n} tokens is not in the workload {sorted(table)}")
        if seen[n] >= len(table[n]):
            raise RuntimeError(f"more than {len(table[n])} rows of the prompt of {n} tokens")
        out.append(table[n][seen[n]])
        seen[n] += 1
    return out


class ForceLengths(LogitsProcessor):
    """Forbids every eos id before a row's target length and forces ``eos_ids[0]`` at it."""

    def __init__(self, targets: list[int], eos_ids: list[int], width: int, vocab: int):
        self.targets = torch.tensor(targets)
        self.width = width
        self.eos = eos_ids[0]
        self.is_eos = torch.zeros(vocab, dtype=torch.bool)
        self.is_eos[eos_ids] = True

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        targets = self.targets.to(scores.device)
        early = (step < targets - 1).unsqueeze(1) & self.is_eos.to(scores.device)[: scores.shape[1]]
        scores = scores.masked_fill(early, float("-inf"))
        at_end = step == targets - 1
        scores[at_end] = float("-inf")
        scores[at_end, self.eos] = 0.0
        return scores


def force_lengths(model_class: type, table: dict[int, list[int]]) -> None:
    """Patch ``model_class.generate`` so that every call ends each row at its drawn length."""
    generate = model_class.generate

    def forced(self, *args, **kwargs):
        config = kwargs.get("generation_config") or self.generation_config
        eos = config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos)
        mask = kwargs["attention_mask"]
        targets = targets_for(mask.sum(-1).tolist(), table)
        vocab = self.get_output_embeddings().weight.shape[0]
        force = ForceLengths(targets, eos, kwargs["input_ids"].shape[1], vocab)
        kwargs["logits_processor"] = LogitsProcessorList(
            [force, *(kwargs.get("logits_processor") or [])]
        )
        return generate(self, *args, **kwargs)

    model_class.generate = forced


def install(s, folder: Path) -> dict[int, list[int]]:
    """Force the workload's lengths on the Qwen2.5-VL class in this process; the table."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    table = length_table(s, folder)
    force_lengths(Qwen2_5_VLForConditionalGeneration, table)
    return table


def force_vllm_length(length: int) -> None:
    """Our vLLM engine samples every completion exactly ``length`` tokens long (``min_tokens =
    max_tokens``; its requests sample G completions each, so one length for all rows)."""
    from mapo.rollout.vllm import VLLMEngine

    if not length:
        raise ValueError("the vLLM engine at a shape workload needs fixed_length > 0")
    params = VLLMEngine._sampling_params

    def fixed(self, sampling, prompt):
        p = params(self, sampling, prompt)
        p.min_tokens = p.max_tokens = length
        return p

    VLLMEngine._sampling_params = fixed


def force_vllm_lengths(folder: Path, table: dict[int, list[int]]) -> None:
    """Our vLLM engine samples each rollout at its drawn length, as ``force_lengths`` does for
    HF: ``vllm.LLM.generate`` is wrapped so that each request of n samples becomes n requests of
    one sample with ``min_tokens = max_tokens`` = that rollout's length (vLLM fans n > 1 out into
    n child requests itself, and its prefix cache prefills the shared prompt once either way),
    and the outputs are regrouped into one request output per prompt, samples in order. The
    prompt is recognised by its token count, as the processor saved in ``folder`` encodes it."""
    import vllm

    from mapo.models.loading import load_processor

    processor = load_processor(folder / "model")
    counts: dict[str, int] = {}  # prompt text -> token count (the rows repeat every step)
    generate = vllm.LLM.generate

    def count(request: dict) -> int:
        text = request["prompt"]
        if text not in counts:
            images = request.get("multi_modal_data", {}).get("image") or None
            enc = processor(text=[text], images=images, return_tensors="pt")
            counts[text] = int(enc["attention_mask"].sum())
        return counts[text]

    def forced(self, requests, params, *args, **kwargs):
        rows, row_params, owner = split_requests(requests, params, map(count, requests), table)
        return regroup(generate(self, rows, row_params, *args, **kwargs), owner)

    vllm.LLM.generate = forced


def split_requests(requests: list, params: list, counts, table: dict[int, list[int]]):
    """One request per sample: (requests, their sampling params, the prompt index of each)."""
    rows, row_params, owner = [], [], []
    for i, (request, p, n) in enumerate(zip(requests, params, counts)):
        for k, length in enumerate(targets_for([n] * p.n, table)):
            q = p.clone()
            q.n, q.min_tokens, q.max_tokens = 1, length, length
            if p.seed is not None:
                q.seed = p.seed + k
            rows.append(request)
            row_params.append(q)
            owner.append(i)
    return rows, row_params, owner


def regroup(outputs: list, owner: list[int]) -> list:
    """The one-sample outputs of ``split_requests`` back as one output per prompt, its samples
    indexed 0..n-1 in request order."""
    merged: dict[int, object] = {}
    for out, i in zip(outputs, owner):
        sample = out.outputs[0]
        if i not in merged:
            merged[i], out.outputs = out, []
        sample.index = len(merged[i].outputs)
        merged[i].outputs.append(sample)
    return [merged[i] for i in sorted(merged)]


def our_overrides(s, folder: Path) -> list[str]:
    """Hydra overrides that point our trainer at the workload (on top of common.overrides)."""
    w = shape_workload(s)
    train = folder / "train.parquet"
    return [
        f"model.path={folder / 'model'}",
        "model.coldstart.enabled=false",
        f"model.gradient_checkpointing={str(s.gradient_checkpointing).lower()}",
        "model.padding_free=true",
        "data.synthetic=null",
        f"data.train={train}",
        "~data.in_domain",
        f"+data.in_domain={{shape:'{train}'}}",
        "~data.out_of_domain",
        "+data.out_of_domain={}",
        f"data.template={folder / 'template.txt'}",
        f"data.task={REWARD}",
        f"data.min_pixels={w['pixels'][0]}",
        f"data.max_pixels={w['pixels'][1]}",
        "data.max_prompt_tokens=8192",
        f"plugins=[{__name__}]",
        f"rollout.max_new_tokens={max_new_tokens(s)}",
    ]
