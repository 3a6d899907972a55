"""Resume refuses a changed run (before any model loads), `ckpt_path=last` needs the run dir,
and the final step is always checkpointed (a finished run resumes to nothing to do)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapo.algorithm.config import ConfigError
from mapo.analysis.records import read_records
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.run import train
from mapo.pipeline.run_identity import IDENTITY_FILE, resolve_resume, run_identity, write_identity
from mapo.trainer.checkpoint_integrity import read_sidecar, sidecar_of, verify
from mapo.trainer.checkpointing import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
FAST = ["debug=fast", "logger=none", "callbacks.progress_bar=null"]


@pytest.fixture
def no_model(no_model, monkeypatch):
    """conftest's no_model, and no data either: the identity check comes before the data."""
    import mapo.pipeline.run as pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("the data was prepared before the identity check")

    monkeypatch.setattr(pipeline, "prepare_data", forbidden)


def _fake_run(run_dir: Path, *overrides: str) -> Path:
    """A run dir whose last.ckpt was saved by a run with `overrides` (as the trainer saves it)."""
    cfg = compose_config([*FAST, *overrides], run_dir=run_dir)
    identity = run_identity(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "run_identity": identity}, last)
    write_identity(run_dir, identity)
    return last


CHANGES = [
    ("algorithm.estimator=grpo", "algorithm.estimator: 'mapo' -> 'grpo'"),
    ("algorithm.group_size=16", "algorithm.group_size: 8 -> 16"),
    ("algorithm.rollout_batch_size=32", "algorithm.rollout_batch_size: 16 -> 32"),
    ("seed=1", "seed: 0 -> 1"),
]


@pytest.mark.parametrize("change, named", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_refuses_a_changed_run_naming_the_keys(change, named, tmp_path, no_model):
    _fake_run(tmp_path)
    cfg = compose_config([*FAST, "ckpt_path=last", change], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"{named}.*resume\.allow_changed=\["):
        train(cfg)


def test_the_identity_is_read_from_the_run_dir_when_the_sidecar_is_gone(tmp_path, no_model):
    last = _fake_run(tmp_path)
    sidecar_of(last).unlink()  # e.g. a DeepSpeed folder: no sidecar, run_identity.json remains
    assert (tmp_path / IDENTITY_FILE).is_file()
    cfg = compose_config([*FAST, "ckpt_path=last", "seed=3"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="seed: 0 -> 3"):
        train(cfg)


def test_allowed_changes_and_free_keys_pass(tmp_path):
    last = _fake_run(tmp_path)
    free = ["steps=50", "eval.every_n_steps=5", "callbacks.model_checkpoint.every_n_train_steps=3"]
    cfg = compose_config([*FAST, "ckpt_path=last", *free], run_dir=tmp_path)
    assert resolve_resume(cfg, tmp_path, explicit_run_dir=True) == str(last)
    cfg = compose_config(
        [*FAST, "ckpt_path=last", "optim.lr=1e-4", "seed=2", "resume.allow_changed=[optim,seed]"],
        run_dir=tmp_path,
    )
    assert resolve_resume(cfg, tmp_path, explicit_run_dir=True) == str(last)
    cfg = compose_config(
        [*FAST, "ckpt_path=last", "optim.lr=1e-4", "seed=2", "resume.allow_changed=[optim]"],
        run_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="seed: 0 -> 2") as err:
        resolve_resume(cfg, tmp_path, explicit_run_dir=True)
    assert "optim.lr" not in str(err.value)


def test_steps_is_part_of_the_identity_only_under_a_cosine_schedule(tmp_path):
    _fake_run(tmp_path, "optim.schedule=cosine", "steps=10")
    cfg = compose_config(
        [*FAST, "ckpt_path=last", "optim.schedule=cosine", "steps=20"], run_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="steps: 10 -> 20"):
        resolve_resume(cfg, tmp_path, explicit_run_dir=True)
    assert "steps" not in run_identity(compose_config([*FAST], run_dir=tmp_path))


def test_ckpt_path_last_without_a_run_dir_names_the_command(tmp_path):
    old = tmp_path / "runs" / "synth_emo_mapo" / "2026-01-01_00-00-00"
    _fake_run(old)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "train.py", *FAST, "ckpt_path=last", f"paths.output_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    err = out.stderr.replace("\n", " ")
    assert "no hydra.run.dir was given" in err
    assert f"python train.py hydra.run.dir={old} ckpt_path=last" in err
    assert not list((tmp_path / "runs").rglob("records"))  # nothing trained


SMALL = [
    "experiment=synth_emo_mapo",
    *FAST,
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=4",
    "algorithm.micro_batch_size=16",
    "algorithm.group_size=4",
    "model.coldstart.enabled=false",
    "data.eval_limit=2",
    "eval.before=false",
    "eval.after=false",
    "export_hf=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


@pytest.mark.slow
@pytest.mark.usefixtures("torch_threads")
def test_the_final_step_is_saved_and_a_finished_run_resumes_to_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config([*SMALL, "steps=3"], run_dir=run)
    train(cfg)  # saves at 2, and 3 (final)
    ckpts = run / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    # the identity travels in the checkpoint and its verified sidecar
    assert last["run_identity"] == read_sidecar(ckpts / "last.ckpt")["run_identity"]
    assert last["run_identity"] == run_identity(cfg) and verify(ckpts / "last.ckpt") == "ok"
    with pytest.raises(ConfigError, match="algorithm.estimator: 'mapo' -> 'grpo'"):
        train(
            compose_config(
                [*SMALL, "steps=4", "ckpt_path=last", "algorithm.estimator=grpo"], run_dir=run
            )
        )
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step000003.ckpt"]
    records = sorted((run / "records").iterdir())
    stamps = [p.stat().st_mtime_ns for p in records]
    # what a kill between two saves with save_top_k=1 leaves: an older numbered file
    stale = ckpts / "step000002.ckpt"
    stale.write_bytes((ckpts / "step000003.ckpt").read_bytes())
    sidecar_of(stale).write_bytes(sidecar_of(ckpts / "step000003.ckpt").read_bytes())

    _, objs = train(compose_config([*SMALL, "steps=3", "ckpt_path=last"], run_dir=run))
    assert objs["trainer"].global_step == 3
    assert [p.stat().st_mtime_ns for p in records] == stamps  # no step was redone

    _, objs = train(compose_config([*SMALL, "steps=4", "ckpt_path=last"], run_dir=run))
    assert objs["trainer"].global_step == 4 and sorted(read_records(run).step.unique()) == [
        0,
        1,
        2,
        3,
    ]
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step000004.ckpt"]
    assert not stale.exists() and not sidecar_of(stale).exists()
