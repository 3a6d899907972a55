"""The GPU path (`pytest -m gpu`, run by scripts/gpu_check.sh): the tiny RL step on CUDA in
bf16, HF-engine generation, bf16 log-probs against fp32, DeepSpeed ZeRO-2 on one GPU, ZeRO-3
checkpoint and resume, FusedAdam against torch's AdamW, the varlen kernels' causal alignment.

Without CUDA every test skips. ``MAPO_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (CPU
DeepSpeed strategy, no FusedAdam): that checks the tests' own code, not the GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapo.analysis.records import read_records
from mapo.pipeline.quickrun import model_load_args

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]
ON_CPU = os.environ.get("MAPO_GPU_TESTS_ON_CPU") == "1"
# bf16 against fp32 token log-probs of the sharpened tiny model (nats). Measured on CPU with
# oneDNN bf16 (fp32 accumulation, as cuBLAS): mean 0.027 / max 0.12 for bf16 weights, 0.023 /
# 0.089 for bf16 autocast over fp32 weights; the bounds leave 2.5x for other kernels.
BF16_MEAN_NATS, BF16_MAX_NATS = 0.06, 0.3


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if ON_CPU:
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU (MAPO_GPU_TESTS_ON_CPU=1 checks these tests on CPU)")


def _plain_trainer(device: torch.device) -> list[str]:
    """conf/trainer/gpu.yaml (1 GPU, bf16 autocast); on CPU the same precision."""
    return ["trainer=gpu"] + (["trainer.accelerator=cpu"] if device.type == "cpu" else [])


def _deepspeed_trainer(device: torch.device, stage: int) -> list[str]:
    if device.type == "cpu":
        return ["trainer=cpu_deepspeed", f"trainer.strategy.stage={stage}"]
    return [f"trainer=deepspeed_stage_{stage}", "trainer.devices=1"]


def _fused_adam_builds() -> str | None:
    """None when DeepSpeed's FusedAdam loads here (gpu_check.sh builds it beforehand, into
    $TORCH_EXTENSIONS_DIR, and sets MAPO_FUSED_ADAM=0 when it could not), else why not."""
    if not torch.cuda.is_available():
        return "no CUDA"
    if os.environ.get("MAPO_FUSED_ADAM") == "0":
        return "gpu_check.sh could not build it (fused_adam phase)"
    try:
        from deepspeed.ops.op_builder import FusedAdamBuilder

        FusedAdamBuilder().load(verbose=False)
    except Exception as exc:  # noqa: BLE001 - any build failure means: not available here
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


# ---------------------------------------------------------------- in-process: the tiny model


def test_tiny_rl_step_in_bf16(device, tmp_path):
    from benchmarks.common import Settings, compose, overrides
    from mapo.models.loading import load_policy
    from mapo.pipeline.run import train

    s = Settings(
        prompts=4, group=4, max_new_tokens=12, beta=0.1, warmup=1, timed=1, coldstart=False, lr=1e-2
    )
    cfg = compose(overrides(s, tmp_path / "run", *_plain_trainer(device)))
    _, objs = train(cfg)
    policy, module = objs["module"].policy, objs["module"]
    assert next(policy.parameters()).device.type == device.type
    assert objs["trainer"].precision == "bf16-mixed"  # conf/trainer/gpu.yaml
    m = module.last_metrics
    assert torch.isfinite(torch.tensor(m["actor/grad_norm"])) and m["actor/grad_norm"] > 0
    assert m["perf/train_tokens"] > 4 * 4  # prompt + completion tokens of 16 rollouts
    before = load_policy(objs["model_path"], **model_load_args()).state_dict()
    after = {k: v.float().cpu() for k, v in policy.state_dict().items()}
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, "the update left most parameters unchanged"
    df = read_records(objs["run_dir"])
    assert sorted(df.step.unique()) == [0, 1] and len(df) == 2 * 16


@pytest.fixture
def no_tf32():
    """fp32 really fp32 on the GPU: cuDNN convolutions (the vision patch embedding) default to
    TF32, whose 10-bit mantissa would make "fp32" differ from the CPU by more than rounding."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="module")
def sharp_fp32(tiny_model_dir, sharpen, device):
    from mapo.models.loading import load_policy

    return sharpen(load_policy(tiny_model_dir, **model_load_args())).eval().to(device)


def test_hf_engine_generation(
    device, tiny_model_dir, tiny_processor, tiny_prompts, sharpen, sharp_fp32, no_tf32
):
    from mapo.models.loading import load_policy
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    bf16 = sharpen(load_policy(tiny_model_dir, **model_load_args(dtype="bfloat16"))).to(device)
    engine = HFEngine(bf16, tiny_processor, share_prefill=True)
    out = engine.generate(
        tiny_prompts, SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0)
    )
    assert len(out) == 12 and out.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert all(1 <= len(t) <= 12 for t in out.token_ids)
    assert not {t for row in out.token_ids for t in row} & set(engine.suppress_ids)
    assert [len(lp) for lp in out.logprobs] == [len(t) for t in out.token_ids]
    assert all(lp <= 0 for row in out.logprobs for lp in row)
    # greedy fp32 on the device gives the CPU's tokens (sharpened: margins far above rounding)
    greedy = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12)
    here = HFEngine(sharp_fp32, tiny_processor, share_prefill=True).generate(tiny_prompts, greedy)
    cpu = sharpen(load_policy(tiny_model_dir, **model_load_args())).eval()
    assert (
        here.token_ids
        == HFEngine(cpu, tiny_processor, share_prefill=True)
        .generate(tiny_prompts, greedy)
        .token_ids
    )


def test_bf16_logprobs_match_fp32(
    device, tiny_model_dir, tiny_processor, tiny_prompts, sharpen, sharp_fp32, no_tf32
):
    from mapo.models.batching import build_policy_inputs
    from mapo.models.loading import load_policy
    from mapo.models.logprobs import token_logprobs
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    engine = HFEngine(sharp_fp32, tiny_processor, share_prefill=True)
    comps = engine.generate(
        tiny_prompts, SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=0)
    )
    pad = tiny_processor.tokenizer.pad_token_id
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=pad)
    inputs = inputs.to(device)
    mask, sup = inputs.completion_mask, engine.suppress_ids
    bf16 = (
        sharpen(load_policy(tiny_model_dir, **model_load_args(dtype="bfloat16"))).eval().to(device)
    )
    with torch.no_grad():
        ref = token_logprobs(
            sharp_fp32,
            inputs,
            suppress_ids=sup,
            share_prompt=True,
            padding_free=False,
            temperature=1.0,
        )
        weights = token_logprobs(
            bf16, inputs, suppress_ids=sup, share_prompt=True, padding_free=False, temperature=1.0
        )
        with torch.autocast(device.type, dtype=torch.bfloat16):
            autocast = token_logprobs(
                sharp_fp32,
                inputs,
                suppress_ids=sup,
                share_prompt=True,
                padding_free=False,
                temperature=1.0,
            )
    assert mask.sum() > 30
    for name, got in (("bf16 weights", weights), ("bf16 autocast", autocast)):
        diff = (got - ref).abs()[mask]
        msg = f"{name}: mean {diff.mean():.4f} max {diff.max():.4f} nats"
        assert diff.mean() < BF16_MEAN_NATS and diff.max() < BF16_MAX_NATS, msg
        assert diff.max() > 0, f"{name}: identical to fp32, so bf16 was not used"


def test_fused_adam_matches_torch_adamw(device):
    why = _fused_adam_builds() if device.type == "cuda" else "CPU run"
    if why is not None:
        pytest.skip(f"FusedAdam not available: {why}")
    from deepspeed.ops.adam import FusedAdam

    torch.manual_seed(0)
    params = [torch.randn(n, device=device) for n in (1000, 37, 4096)]
    ours = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8)
    opts = FusedAdam(ours, adam_w_mode=True, **kw), torch.optim.AdamW(theirs, **kw)
    for step in range(5):
        grads = [torch.randn_like(p) * (step + 1) for p in params]
        for group, opt in zip((ours, theirs), opts):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            opt.step()
    diff = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    moved = max((a - p).abs().max().item() for a, p in zip(theirs, params))
    assert moved > 1e-2 and diff < 1e-5, f"FusedAdam differs from AdamW by {diff:.3g}"


# ---------------------------------------------------------------- train.py under DeepSpeed

TINY = [
    "debug=fast",
    "logger=none",
    "callbacks.progress_bar=null",
    "eval.before=false",
    "eval.after=false",
    "export_hf=false",
    "model.coldstart.enabled=false",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=2",
    "algorithm.micro_batch_size=4",
    "algorithm.group_size=4",
    "data.eval_limit=8",
    "rollout.max_new_tokens=12",
    "callbacks.model_checkpoint.every_n_train_steps=1",
]


def _train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}", *extra]
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions")
        ),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def optim(device) -> list[str]:
    """DeepSpeed's FusedAdam where it builds, else torch AdamW (the test output says which)."""
    why = _fused_adam_builds() if device.type == "cuda" else "CPU run"
    print(f"optimizer: {'FusedAdam' if why is None else f'torch AdamW ({why})'}")
    return ["optim.impl=fused"] if why is None else []


@pytest.fixture(scope="module")
def zero2_run(device, optim, tmp_path_factory) -> Path:
    """Three RL steps of train.py under ZeRO-2 in DeepSpeed bf16."""
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    _train(run_dir, *_deepspeed_trainer(device, 2), "steps=3", *optim)
    return run_dir


def test_zero2_rl_steps_on_one_gpu(zero2_run):
    df = read_records(zero2_run)
    assert sorted(df.step.unique()) == [0, 1, 2] and len(df) == 3 * 4 * 4
    assert df.reward_overall.notna().all() and df.advantage.notna().all()
    assert (zero2_run / "checkpoints/last.ckpt").is_dir()  # DeepSpeed writes a folder


def test_zero3_checkpoint_and_resume_on_one_gpu(device, optim, tmp_path, zero2_run):
    """ckpt_path=last under ZeRO-3 restores the sharded state on the GPU: the resumed run's
    step 2 draws the same prompts as step 2 of an uninterrupted run (the ZeRO-2 run: the
    prompt stream depends on the seed only, not on the strategy)."""
    trainer = [*_deepspeed_trainer(device, 3), *optim]
    _train(tmp_path / "resumed", *trainer, "steps=2")
    assert (tmp_path / "resumed/checkpoints/last.ckpt").is_dir()
    proc = _train(tmp_path / "resumed", *trainer, "steps=3", "ckpt_path=last")
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    resumed, straight = read_records(tmp_path / "resumed"), read_records(zero2_run)
    assert sorted(resumed.step.unique()) == [0, 1, 2] and len(resumed) == 3 * 4 * 4
    a, b = resumed[resumed.step == 2], straight[straight.step == 2]
    for col in ("prompt_id", "rollout_index"):
        assert a[col].tolist() == b[col].tolist(), col
    # a fresh start instead of the resume would draw step 0's prompts again
    assert a.prompt_id.tolist() != resumed[resumed.step == 0].prompt_id.tolist()


def _segments(lengths_q, lengths_k, device):
    cu = lambda n: torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32)  # noqa: E731
    return cu(lengths_q).to(device), cu(lengths_k).to(device)


def test_varlen_kernels_align_causal_to_the_bottom_right(device):
    """The shared prompt pass on flash-attn (mapo/models/varlen_attention.py) needs a query
    segment shorter than its keys (a completion after its prompt) to see the whole prompt:
    causal aligned to the bottom right. The GPU kernels against tests/test_varlen_attention.py's
    plain-torch reference on segments of (queries, keys) = (5, 5), (3, 9), (1, 7), (4, 12)."""
    import inspect

    from test_varlen_attention import reference_varlen

    from mapo.models.packing import VarlenSegments
    from mapo.models.varlen_attention import segmented_sdpa

    lq, lk = [5, 3, 1, 4], [5, 9, 7, 12]
    cq, ck = _segments(lq, lk, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(sum(lq), 4, 64, generator=gen).to(device, torch.bfloat16)  # [T, h, d]
    k = torch.randn(sum(lk), 2, 64, generator=gen).to(device, torch.bfloat16)
    v = torch.randn(sum(lk), 2, 64, generator=gen).to(device, torch.bfloat16)
    bounds = cq.tolist(), ck.tolist()
    offsets = tuple(zip(bounds[0], bounds[0][1:], bounds[1], bounds[1][1:]))
    segments = VarlenSegments(
        torch.arange(sum(lk), device=device), cq, ck, max(lq), max(lk), offsets
    )
    module = torch.nn.Module()
    want, _ = reference_varlen(
        module,
        q.float().transpose(0, 1)[None],
        k.float().transpose(0, 1)[None],
        v.float().transpose(0, 1)[None],
        None,
        is_causal=True,
        cu_seq_lens_q=cq.cpu(),
        cu_seq_lens_k=ck.cpu(),
        max_length_q=max(lq),
        max_length_k=max(lk),
    )
    want = want[0]  # [T, h, d]
    # sdpa's per-segment route (mapo/models/varlen_attention.py), on every device
    bhsd = lambda x: x.transpose(0, 1)[None]  # noqa: E731  [T, h, d] -> [1, h, T, d]
    kernels = {"segmented_sdpa": segmented_sdpa(bhsd(q), bhsd(k), bhsd(v), segments, None, 0.0)[0]}
    if device.type != "cuda":  # the varlen kernels below run on CUDA only
        _check_all(kernels, want)
        return
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    rep = dict(enable_gqa=True) if "enable_gqa" in params else None
    kk, vv = (k, v) if rep else (k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    kernels["torch varlen_attn"] = varlen_attn(
        q, kk, vv, cq, ck, max(lq), max(lk), **causal, **(rep or {})
    )
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        flash_attn_varlen_func = None
    if flash_attn_varlen_func is not None:
        kernels["flash_attn"] = flash_attn_varlen_func(
            q, k, v, cq, ck, max(lq), max(lk), causal=True
        )
    _check_all(kernels, want)


def _check_all(kernels: dict, want: torch.Tensor) -> None:
    for name, got in kernels.items():
        err = float((got.float() - want.to(got.device)).abs().max())
        assert err < 0.05, f"{name}: max |diff| {err:.3f} against the bottom-right reference"
