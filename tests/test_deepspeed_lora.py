"""LoRA under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (gloo), through the real train.py:
the optimizer holds only the adapters, the checkpoint keeps only them (the frozen base is rebuilt
from model.path), and a resume from it reproduces the uninterrupted run's next step."""

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapo.analysis.records import read_records
from mapo.models.loading import load_policy
from mapo.models.lora import apply_lora
from mapo.pipeline.quickrun import lora_config, model_load_args

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]
RANK = 8


def _train(env: dict, run_dir: Path, stage: int, *extra: str) -> str:
    cmd = [
        sys.executable,
        "train.py",
        "trainer=cpu_deepspeed",
        f"trainer.strategy.stage={stage}",
        "trainer.devices=2",
        "debug=fast",
        "logger=none",
        "callbacks.progress_bar=null",
        "eval.before=false",
        "eval.after=false",
        "export_hf=false",
        "algorithm.rollout_batch_size=4",
        "algorithm.mini_batch_size=2",
        "algorithm.micro_batch_size=4",
        "algorithm.group_size=4",
        "data.eval_limit=8",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"model.lora.rank={RANK}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # DeepSpeed's own files


def _check_adapter_only_checkpoint(folder: Path, stage: int, adapter_numel: int) -> None:
    """DeepSpeed's model states hold the adapters only (module and the optimizer's parameter
    shapes); the fp32 master partitions of both ranks add up to the adapters' size."""
    models = glob.glob(str(folder / "*model_states.pt"))
    assert len(models) == (2 if stage == 3 else 1)  # ZeRO-3: a file per rank
    for path in models:
        states = _load(path)
        assert states["module"] and all(".lora_" in k for k in states["module"])
        shapes = {k: v for group in states["param_shapes"] for k, v in group.items()}
        assert shapes and all(".lora_" in k for k in shapes)
        assert sum(s.numel() for s in shapes.values()) == adapter_numel
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    optims = sorted(glob.glob(str(folder / "zero_pp_rank_*_optim_states.pt")))
    assert len(optims) == 2
    master = sum(t.numel() for p in optims for t in _load(p)["optimizer_state_dict"][key])
    assert master == adapter_numel


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_trains_checkpoints_and_resumes_under_zero(
    tmp_path, stage, tiny_model_dir, subprocess_env
):
    env = subprocess_env(
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions")
        ),
    )
    policy = apply_lora(load_policy(tiny_model_dir, **model_load_args()), **lora_config(rank=RANK))
    adapter_numel = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert adapter_numel == sum(p.numel() for n, p in policy.named_parameters() if ".lora_" in n)

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    _train(env, resumed, stage, "steps=2")
    folder = resumed / "checkpoints/last.ckpt/checkpoint"
    _check_adapter_only_checkpoint(folder, stage, adapter_numel)
    log = _train(env, resumed, stage, "steps=3", "ckpt_path=last")
    assert "Restored all states from the checkpoint" in log
    _train(env, straight, stage, "steps=3")
    a, b = read_records(resumed), read_records(straight)
    assert sorted(a.step.unique()) == [0, 1, 2] and len(a) == 3 * 4 * 4
    assert (a[a.step < 2].advantage != 0).any()  # cold-started: real updates before the resume
    a, b = a[a.step == 2], b[b.step == 2]  # the step after the resume: the same adapters
    for col in ("prompt_id", "rollout_index", "text", "response_length", "advantage"):
        assert a[col].tolist() == b[col].tolist(), col
