"""Worker: the bare compute of one RL step at a shape workload, no trainer around it.

    python -m benchmarks.bare '<Settings json>'   (prints one RESULT line)

* bare generation: our HF engine (``mapo.rollout.hf.HFEngine``, shared prefill as the trainer
  runs it) generating the workload's B prompts x G at the forced lengths, and the same with
  the shared prefill off (every row prefills its own prompt, as TRL's ``generate`` does);
* bare training: the model's own forward + backward over exactly the step's tokens, each
  distinct prompt once and every completion once, as one packed sequence with the same
  attention segments the trainer uses (``token_logprobs`` with ``share_prompt`` and
  ``padding_free``); the loss is the mean completion log-prob (no advantages, ratios, KL or
  metrics), then one AdamW step. The frozen forwards the step needs are the same packed pass
  without grad: the reference (beta > 0) and the old policy (more than one update).

Each piece runs ``warmup + timed`` times on the step's tokens (those of the first
generation); the result holds the medians of the timed repetitions.
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks.common import Settings, emit, set_threads


def _median_time(fn, s: Settings) -> float:
    times = []
    for _ in range(s.warmup + s.timed):
        clock = time.perf_counter()
        fn()
        times.append(time.perf_counter() - clock)
    return statistics.median(times[s.warmup :] or times)


def _prompts(s: Settings, folder, processor):
    from benchmarks.shape_setup import shape_workload
    from mapo.data.loader import load_split
    from mapo.data.prompts import load_template, to_prompt

    low, high = shape_workload(s)["pixels"]
    template = load_template(folder / "template.txt")
    rows = load_split(folder / "train.parquet", on_bad_row="error").rows
    return [to_prompt(r, processor, template, min_pixels=low, max_pixels=high) for r in rows]


def generation(s: Settings, policy, processor, prompts) -> tuple[dict, object]:
    """Seconds of our HF engine (shared prefill on, then off) and the step's completions."""
    from benchmarks.shape_setup import max_new_tokens
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    sampling = SamplingConfig(
        n=s.group, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens(s)
    )
    out, kept = {}, []
    for key, share in (("generation_s", True), ("generation_unshared_s", False)):
        engine = HFEngine(policy, processor, share_prefill=share)
        out[key] = _median_time(lambda e=engine: kept.append(e.generate(prompts, sampling)), s)
    completions = kept[0]
    out["completion_tokens"] = sum(len(t) for t in completions.token_ids)
    return out, completions


def training(s: Settings, policy, reference, processor, prompts, completions) -> dict:
    """Seconds of the frozen forwards, the forward + backward and the optimizer step."""
    import torch

    from mapo.models.batching import build_policy_inputs
    from mapo.models.logprobs import token_logprobs
    from mapo.models.micro_batching import StepLayout

    inputs = build_policy_inputs(
        processor, prompts, completions, pad_token_id=processor.tokenizer.pad_token_id
    )
    layout = StepLayout(
        inputs,
        micro_batch_size=inputs.num_rows,
        max_tokens_per_micro_batch=None,
        padding_free=True,
        share_prompt=True,
    )
    (mb,) = layout.micro_batches(torch.arange(inputs.num_rows))
    packed = layout.inputs(mb)
    mask = packed.completion_mask
    kw = dict(share_prompt=True, padding_free=True, temperature=1.0)  # sampled at T = 1
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=1e-2
    )

    def frozen():
        with torch.no_grad():
            token_logprobs(reference, packed, **kw)

    def forward_backward():
        logp = token_logprobs(policy, packed, **kw)
        (-(logp * mask).sum() / mask.sum()).backward()

    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    forwards = int(s.beta > 0) + int(s.updates > 1)
    out = {
        "frozen_forward_s": _median_time(frozen, s),
        "forward_backward_s": _median_time(forward_backward, s),
        "optimizer_s": _median_time(optimizer_step, s),
        "frozen_forwards": forwards,
        "optimizer_steps": s.updates,
        "packed_tokens": packed_tokens(packed),
    }
    out["training_s"] = (
        forwards * out["frozen_forward_s"]
        + out["forward_backward_s"]
        + s.updates * out["optimizer_s"]
    )
    return out


def packed_tokens(packed) -> int:
    """Token positions of the packed pass: each distinct prompt once, every completion once."""
    from mapo.models.micro_batching import computed_tokens, row_lengths

    prompt, completion = row_lengths(packed)
    index = packed.prompt_index.cpu()
    return int(computed_tokens(prompt, completion, index, padding_free=True, share_prompt=True))


def main(s: Settings) -> None:
    set_threads(s.threads)
    import torch

    from benchmarks import shape_setup
    from mapo.models.loading import load_policy, load_processor, load_reference
    from mapo.pipeline.quickrun import model_load_args, reference_load_args

    folder = shape_setup.prepare(s)
    shape_setup.install(s, folder)
    path = folder / "model"
    processor = load_processor(path)
    policy = load_policy(path, **model_load_args(gradient_checkpointing=s.gradient_checkpointing))
    reference = load_reference(path, **reference_load_args())
    prompts = _prompts(s, folder, processor)
    torch.manual_seed(s.seed)
    gen, completions = generation(s, policy, processor, prompts)
    policy.train()
    train = training(s, policy, reference, processor, prompts, completions)
    emit({"side": "bare", "threads": torch.get_num_threads(), **gen, **train})


if __name__ == "__main__":
    main(Settings.from_json(sys.argv[1]))
