"""The shared prompt pass (`model.share_prompt`, mapo/models/logprobs.py) against the full
per-row pass on a real rollout batch: log-prob and gradient differences, and the time of a
no-grad forward and of a forward + backward, alternated so load noise hits both.

With the prompt's cache shared, a group costs P + G*L token positions instead of G*(P+L):
180 instead of 544 for SynthEmo's P=52, L=16, G=8.

    python -m benchmarks.prefix_sharing [--size tiny|10m]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _batch(size: str, prompts: int, group: int, max_new_tokens: int):
    """A real rollout batch: the cold-started model samples B x G completions."""
    from benchmarks.common import Settings, model_and_rows
    from mapo.data.prompts import load_template, to_prompt
    from mapo.models.batching import build_policy_inputs
    from mapo.models.loading import load_policy, load_processor
    from mapo.pipeline.quickrun import model_load_args, pixel_args
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    path, rows = model_and_rows(Settings(size=size), "/tmp/bench-prefix")
    processor, policy = load_processor(path), load_policy(path, **model_load_args())
    template = load_template("emotion_short")
    batch = [to_prompt(r, processor, template, **pixel_args("synth_emo")) for r in rows]
    engine = HFEngine(policy, processor, share_prefill=True)
    sampling = SamplingConfig(
        n=group, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0
    )
    comps = engine.generate(batch[:prompts], sampling)
    pad = processor.tokenizer.pad_token_id
    inputs = build_policy_inputs(processor, batch[:prompts], comps, pad_token_id=pad)
    return policy, inputs, engine.suppress_ids


def _fwd_bwd(
    policy, inputs, suppress, repeats: int, share: bool
) -> tuple[float, float, torch.Tensor, list]:
    from mapo.models.logprobs import token_logprobs

    fwd, full = [], []
    for _ in range(repeats):
        policy.zero_grad()
        clock = time.perf_counter()
        with torch.no_grad():
            token_logprobs(
                policy,
                inputs,
                suppress_ids=suppress,
                share_prompt=share,
                padding_free=False,
                temperature=1.0,
            )
        fwd.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        logp = token_logprobs(
            policy,
            inputs,
            suppress_ids=suppress,
            return_entropy=True,
            share_prompt=share,
            padding_free=False,
            temperature=1.0,
        )[0]
        (logp.sum() / inputs.completion_mask.sum()).backward()
        full.append(time.perf_counter() - clock)
    grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    return statistics.median(fwd), statistics.median(full), logp.detach(), grads


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import load_average

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "10m"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    policy, inputs, suppress = _batch(a.size, a.prompts, a.group, a.max_new_tokens)
    n, width = inputs.input_ids.shape
    print(
        f"prefix sharing: {a.size} VLM, {a.prompts} prompts x G={a.group}: rows {n}, "
        f"P={inputs.prompt_len}, L={inputs.completion_len}; {a.threads} thread(s); "
        f"load average {load_average()}"
    )
    times = {}
    for name in ("full", "shared", "full ", "shared "):  # alternate: load noise hits both
        share = name.strip() == "shared"
        fwd, full, logp, grads = _fwd_bwd(policy, inputs, suppress, a.repeats, share)
        times.setdefault(name.strip(), []).append((fwd, full))
        if name == "full":
            ref_logp, ref_grads = logp, grads
        elif name == "shared":
            err = float((logp - ref_logp).abs().max())
            gerr = max(
                float((g - h).abs().max() / h.abs().max().clamp_min(1e-12))
                for g, h in zip(grads, ref_grads)
            )
            print(f"  max |log-prob difference| {err:.2e}; max relative grad difference {gerr:.2e}")
    for name, runs in times.items():
        fwd = statistics.median(r[0] for r in runs)
        full = statistics.median(r[1] for r in runs)
        print(
            f"  {name:7s} no-grad forward {fwd * 1e3:8.1f} ms   forward+backward "
            f"{full * 1e3:8.1f} ms"
        )
    f, s = times["full"], times["shared"]
    print(
        f"  speed-up: forward {statistics.median(r[0] for r in f) / statistics.median(r[0] for r in s):.2f}x, "
        f"forward+backward {statistics.median(r[1] for r in f) / statistics.median(r[1] for r in s):.2f}x; "
        f"load average {load_average()}"
    )


if __name__ == "__main__":
    main()
