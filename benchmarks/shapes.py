"""Training at the real workload's shape, on CPU: padding, step time and peak memory of each
micro-batching mode, gradient checkpointing on and off, and generation at long lengths.

    python -m benchmarks.shapes            # the recorded run (docs/benchmarks.md)
    python -m benchmarks.shapes --quick    # seconds; what benchmarks/tests runs

The workload (built offline, random weights; the SHAPE of the tokens is what is measured):
  * the Qwen2.5-VL architecture at CPU width (``shapes_workload.DIMS``: text 256 x 2 layers, 8 heads / 2 KV
    heads, MLP 768, mrope [4, 6, 6]; vision 2 x 128), the tiny model's tokenizer;
  * images of photo sizes through the stock Qwen2-VL image processor with the Geo3K/EmoSet
    recipe's min_pixels = 512 x 512 (``shapes_workload.MIN_PIXELS``), i.e. 324-500 vision tokens each;
  * prompts of 100-400 text tokens (uniform) plus the image;
  * completions synthesised (random non-special tokens), lengths lognormal with median 200,
    sigma 0.8, capped at 1024 (``--quick``: smaller).
Each mode runs the update phase (per micro-batch: log-probs, the clipped loss with the
mini-batch normaliser, backward) and the frozen log-prob phase (no-grad forward) in its own
process, so peak RSS is the mode's own; modes alternate over ``--rounds`` rounds and the
median is reported (the machine is shared: compare within one run only).

Modes (``MODES``): ``fixed8`` is today's default (8 rollouts per micro-batch in prompt order,
padded to the batch's longest prompt and completion; the cache-based shared prompt pass when
checkpointing is off, none when on, as before). ``sorted`` is the token budget over rows
sorted by length, each micro-batch trimmed to its own longest row. ``packed`` packs each
micro-batch into one sequence (mapo/models/packing.py); ``packed_shared`` also runs each
prompt once for its group, which works with checkpointing on.

Generation (``benchmarks/shapes_generation.py``): HF ``generate`` with a logits processor that
forbids eos before each row's drawn length and forces it there, and vLLM (CPU, its own venv)
with ``min_tokens = max_tokens = length, ignore_eos``.
The last line is ``padding <padding fraction of computed training tokens, best mode, ckpt on>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULT_PREFIX, emit, load_average, parse_result
from benchmarks.shapes_generation import hf_generation, save_model, vllm_generation
from benchmarks.shapes_workload import batch, build, workload

ROOT = Path(__file__).resolve().parents[1]
MODES = {  # name: (token budget?, share_prompt, padding_free)
    "fixed8": (False, True, False),
    "sorted": (True, False, False),
    "packed": (True, False, True),
    "packed_shared": (True, True, True),
}


def positions(sub, *, shared_cache: bool, packed: bool, share: bool) -> tuple[int, int]:
    """(token positions the forward computes, of which real tokens) for one micro-batch."""
    from mapo.models.micro_batching import computed_tokens, row_lengths

    prompt, completion = row_lengths(sub)
    index = sub.prompt_index.cpu()
    if packed:
        n = computed_tokens(prompt, completion, index, padding_free=True, share_prompt=share)
        return n, n
    width_p, width_l = sub.prompt_len, sub.completion_len
    if shared_cache:  # prompt pass B x P, then N x (L - 1) completion columns
        distinct = int(index.max()) + 1
        firsts = {int(b): int(p) for b, p in zip(index.tolist(), prompt.tolist())}
        real = sum(firsts.values()) + int((completion - 1).clamp_min(0).sum())
        return distinct * width_p + sub.num_rows * (width_l - 1), real
    return sub.num_rows * (width_p + width_l), int((prompt + completion).sum())


def run_mode(mode: str, ckpt: bool, w: dict, steps: int) -> dict:
    """One process: ``steps`` update + log-prob phases of ``mode``; the last one is timed."""
    from mapo.algorithm.losses import Normalizer, policy_loss
    from mapo.models.logprobs import can_share_prompt, token_logprobs
    from mapo.models.micro_batching import StepLayout
    from mapo.pipeline.quickrun import algorithm_config

    budget, share, pack = MODES[mode]
    model, processor = build(w["pixels"])
    inputs, adv = batch(processor, w)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Before this change the shared pass was off whenever checkpointing was active, i.e. in
    # the update (training mode); the no-grad log-prob phase (eval mode) still shared.
    share_now = share and not (ckpt and mode == "fixed8")
    layout = StepLayout(
        inputs,
        micro_batch_size=8,
        max_tokens_per_micro_batch=w["budget"] if budget else None,
        padding_free=pack,
        share_prompt=share_now,
    )
    plan = layout.micro_batches(torch.arange(inputs.num_rows))
    subs = [layout.inputs(mb) for mb in plan]
    # the default config's loss (conf/algorithm/mapo.yaml: AlgorithmConfig's defaults equal it)
    cfg, norm = algorithm_config().loss_config(), Normalizer.of(inputs.completion_mask)
    out: dict = {"mode": mode, "ckpt": ckpt, "micro_batches": len(plan)}
    for phase in ("logprobs", "update"):
        model.train(phase == "update")
        share_now = share and not (ckpt and mode == "fixed8" and phase == "update")
        computed = real = 0
        for sub in subs:
            cache = share_now and not pack and can_share_prompt(model, sub)
            c, r = positions(
                sub,
                shared_cache=cache,
                packed=pack or (share_now and ckpt and phase == "update"),
                share=share_now,
            )
            computed, real = computed + c, real + r
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            for mb, sub in zip(plan, subs):
                kw = dict(temperature=1.0, share_prompt=share_now, padding_free=pack)
                if phase == "logprobs":
                    with torch.no_grad():
                        token_logprobs(model, sub, **kw)
                    continue
                logp = token_logprobs(model, sub, **kw)
                frozen = logp.detach()  # old and reference log-probs (values only matter)
                loss, _ = policy_loss(
                    logp, frozen, adv[mb.rows], sub.completion_mask, cfg, ref_logp=frozen, norm=norm
                )
                loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        out[phase] = {
            "s": times[-1],
            "computed": computed,
            "real": real,
            "padding": 1 - real / computed,
        }
    out["useful_tokens"] = int(inputs.attention_mask.sum())
    return out


def _worker(args) -> None:
    w = workload(args.quick)
    if args.budget is not None:
        w["budget"] = args.budget
    if args.worker == "hf":
        emit(hf_generation(w))
        return
    if args.worker.startswith("vllm="):
        emit(vllm_generation(Path(args.worker.removeprefix("vllm=")), w))
        return
    mode, ckpt = args.worker.split(":")
    emit(run_mode(mode, ckpt == "on", w, steps=args.steps))


def _spawn(name: str, args, python: str = sys.executable) -> dict:
    cmd = [python, "-m", "benchmarks.shapes", "--worker", name, "--steps", str(args.steps)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--budget", str(args.budget)] if args.budget is not None else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return parse_result(proc.stdout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="per process; the last is timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-generation", action="store_true")
    p.add_argument("--only-generation", action="store_true")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of MODES")
    p.add_argument("--ckpt", default="off,on", help="checkpointing settings to run: off,on")
    p.add_argument("--budget", type=int, default=None, help="tokens per micro-batch override")
    p.add_argument(
        "--vllm-python",
        default=str(ROOT / ".venv-vllm/bin/python"),
        help="interpreter of the vLLM environment (skipped if absent)",
    )
    args = p.parse_args(argv)
    if args.worker:
        torch.set_num_threads(args.threads)
        _worker(args)
        return
    load = load_average()
    if args.only_generation:
        _generation(args)
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # alternate the configurations: the machine's load drifts
        for mode in args.modes.split(","):
            for ckpt in args.ckpt.split(","):
                runs.setdefault(f"{mode}:{ckpt}", []).append(_spawn(f"{mode}:{ckpt}", args))
    rows = [_row(name, results) for name, results in runs.items()]
    print(f"load average before / after: {load} / {load_average()}")
    print(
        f"{'mode':<14}{'ckpt':<5}{'mbs':>4}{'computed':>10}{'real':>9}{'pad':>7}"
        f"{'logp s':>8}{'update s':>9}{'rss MB':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:<14}{r['ckpt']:<5}{r['micro_batches']:>4}{r['computed']:>10}"
            f"{r['real']:>9}{r['padding']:>7.1%}{r['logprobs_s']:>8.2f}{r['update_s']:>9.2f}"
            f"{r['peak_rss_mb']:>8.0f}"
        )
    if not args.no_generation:
        _generation(args)
    on = [r for r in rows if r["ckpt"] == "on"]
    base = next((r for r in on if r["mode"] == "fixed8"), None)
    if base is None:
        raise SystemExit("the summary compares with fixed8, checkpointing on: include both")
    best = min(on, key=lambda r: r["logprobs_s"] + r["update_s"])
    total = base["logprobs_s"] + base["update_s"], best["logprobs_s"] + best["update_s"]
    print(
        f"best with checkpointing on: {best['mode']}: log-probs + update {total[1]:.2f} s vs "
        f"fixed8 {total[0]:.2f} s ({total[0] / total[1]:.2f}x; update alone "
        f"{base['update_s'] / best['update_s']:.2f}x), padding {best['padding']:.1%} vs "
        f"{base['padding']:.1%}, peak RSS {best['peak_rss_mb']:.0f} vs "
        f"{base['peak_rss_mb']:.0f} MB"
    )
    print(RESULT_PREFIX + json.dumps({"rows": rows}))
    print(f"padding {best['padding']:.4f}")


def _generation(args) -> None:
    """HF and vLLM generation at the drawn lengths, each in its own process."""
    import tempfile

    gen = _spawn("hf", args)
    print(
        f"generation hf: {gen['s']:.2f} s for {gen['tokens']} tokens "
        f"(lengths forced: {gen['lengths_match']})"
    )
    if not Path(args.vllm_python).exists():
        print(f"generation vllm: not run ({args.vllm_python} absent)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "model", workload(args.quick))
        try:
            gen = _spawn(f"vllm={folder}", args, python=args.vllm_python)
        except RuntimeError as err:
            print(f"generation vllm: failed: {str(err)[-600:]}")
            return
    print(
        f"generation vllm: {gen['s']:.2f} s for {gen['tokens']} tokens "
        f"(lengths forced: {gen['lengths_match']})"
    )


def _row(name: str, results: list[dict]) -> dict:
    first = results[0]
    med = statistics.median
    return {
        "mode": first["mode"],
        "ckpt": "on" if first["ckpt"] else "off",
        "micro_batches": first["micro_batches"],
        "computed": first["update"]["computed"],
        "real": first["update"]["real"],
        "padding": first["update"]["padding"],
        "logprobs_s": med(r["logprobs"]["s"] for r in results),
        "update_s": med(r["update"]["s"] for r in results),
        "peak_rss_mb": med(r["peak_rss_mb"] for r in results),
    }


if __name__ == "__main__":
    main()
