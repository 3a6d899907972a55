"""A run folder holds one run: a fresh run into a folder with a run is refused, a second process
is locked out naming the holder's pid, a refused start leaves `.hydra/config.yaml` as it was,
checkpoint names never version and the stale cleanup removes only this run's own files."""

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mapo.algorithm.config import ConfigError
from mapo.pipeline import run_folder
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.run import train
from mapo.pipeline.run_identity import IDENTITY_FILE, resolve_resume, run_identity, write_identity
from mapo.trainer.checkpoint_callback import RunCheckpoint
from mapo.trainer.checkpoint_integrity import sidecar_of
from mapo.trainer.checkpointing import AtomicCheckpointIO

FAST = ["debug=fast", "logger=none", "callbacks.progress_bar=null"]


@pytest.fixture
def no_model(no_model, monkeypatch):
    """conftest's no_model, and no data either: the run-folder checks come before the data."""
    import mapo.pipeline.run as pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("the data was prepared before the run-folder checks")

    monkeypatch.setattr(pipeline, "prepare_data", forbidden)


def _fake_run(run_dir: Path, *overrides: str, step: int = 3) -> Path:
    cfg = compose_config([*FAST, *overrides], run_dir=run_dir)
    identity = run_identity(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "run_identity": identity}, last)
    write_identity(run_dir, identity)
    return last


@pytest.mark.parametrize("extra", [[], ["algorithm.estimator=grpo"]])
def test_a_fresh_run_into_a_folder_with_a_run_is_refused(extra, tmp_path, no_model):
    _fake_run(tmp_path)
    cfg = compose_config([*FAST, *extra], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run.*ckpt_path=last.*hydra\.run\.dir"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256.json",
    ]


def test_another_runs_checkpoint_into_a_folder_with_a_run_is_refused(tmp_path, no_model):
    other = _fake_run(tmp_path / "other", "algorithm.estimator=grpo")
    _fake_run(tmp_path / "run")
    cfg = compose_config(
        [*FAST, f"ckpt_path={other}", "algorithm.estimator=grpo"], run_dir=tmp_path / "run"
    )
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    backup = _fake_run(tmp_path / "backup")  # a copy of this folder's own run: it may resume
    cfg = compose_config([*FAST, f"ckpt_path={backup}"], run_dir=tmp_path / "run")
    with pytest.raises(AssertionError, match="data was prepared"):  # past every run-folder check
        train(cfg)


def test_a_second_process_is_locked_out_naming_the_holder(tmp_path, no_model):
    cfg = compose_config([*FAST], run_dir=tmp_path)
    with run_folder.locked(tmp_path):  # another open file description: as another process
        with pytest.raises(ConfigError, match=rf"in use by another train.py \(pid {os.getpid()}\)"):
            train(cfg)
    with run_folder.locked(tmp_path):  # released when the holder ends
        pass


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with run_folder.locked(tmp_path), run_folder.locked(tmp_path):
        pass


def test_a_refused_start_puts_back_the_hydra_config(tmp_path, no_model):
    _fake_run(tmp_path)
    hydra = tmp_path / ".hydra"
    (hydra / "accepted").mkdir(parents=True)
    (hydra / "accepted" / "config.yaml").write_text("seed: 0\n")  # the accepted start's copy
    (hydra / "config.yaml").write_text("seed: 7\n")  # what Hydra wrote for the refused start
    cfg = compose_config([*FAST, "ckpt_path=last", "seed=7"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="seed: 0 -> 7"):
        train(cfg)
    assert (hydra / "config.yaml").read_text() == "seed: 0\n"


def test_an_accepted_start_keeps_a_copy_of_its_hydra_config(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    run_folder.save_accepted_config(tmp_path)
    assert (tmp_path / ".hydra" / "accepted" / "config.yaml").read_text() == "seed: 0\n"


def test_the_identity_is_read_from_the_checkpoint_when_sidecar_and_file_are_gone(
    tmp_path, no_model
):
    last = _fake_run(tmp_path)
    sidecar_of(last).unlink()
    (tmp_path / IDENTITY_FILE).unlink()
    cfg = compose_config(
        [*FAST, "ckpt_path=last", "seed=3", "algorithm.estimator=grpo"], run_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="algorithm.estimator: 'mapo' -> 'grpo'.*seed: 0 -> 3"):
        train(cfg)


def test_memory_only_knobs_may_change_on_resume(tmp_path):
    last = _fake_run(tmp_path, "algorithm.micro_batch_size=8")
    cfg = compose_config(
        [
            *FAST,
            "ckpt_path=last",
            "algorithm.micro_batch_size=2",
            "algorithm.max_tokens_per_micro_batch=4096",
        ],
        run_dir=tmp_path,
    )
    assert resolve_resume(cfg, tmp_path, explicit_run_dir=True) == str(last)


def test_checkpoint_names_never_version(tmp_path):
    cb = RunCheckpoint(dirpath=tmp_path, filename="step{step:06d}", save_last=True)
    assert cb._enable_version_counter is False
    with pytest.raises(ValueError, match="enable_version_counter"):
        RunCheckpoint(dirpath=tmp_path, enable_version_counter=True)


def _save(path: Path, identity: dict) -> None:
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "run_identity": identity}, path)


def test_stale_cleanup_removes_only_this_runs_files(tmp_path):
    ours, theirs = {"seed": 0}, {"seed": 1}
    for name, ident in [
        ("last.ckpt", ours),
        ("step000004.ckpt", ours),
        ("step000002.ckpt", ours),
        ("step000003.ckpt", theirs),
    ]:
        _save(tmp_path / name, ident)
    (tmp_path / "step000001.ckpt").write_bytes(b"no sidecar")
    cb = RunCheckpoint(dirpath=tmp_path, filename="step{step:06d}", save_last=True)
    cb.last_model_path = str(tmp_path / "last.ckpt")
    cb.best_model_path = str(tmp_path / "step000004.ckpt")
    io = AtomicCheckpointIO()
    trainer = SimpleNamespace(strategy=SimpleNamespace(remove_checkpoint=io.remove_checkpoint))
    removed = cb.remove_stale(trainer)
    assert [p.name for p in removed] == ["step000002.ckpt"]
    assert not sidecar_of(tmp_path / "step000002.ckpt").exists()
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "last.ckpt",
        "step000001.ckpt",
        "step000003.ckpt",
        "step000004.ckpt",
    ]


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
    "callbacks.model_checkpoint.every_n_train_steps=1",
]


@pytest.mark.slow
@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("how", [shutil.move, shutil.copytree])
def test_resume_after_the_run_folder_is_moved_or_copied(how, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(compose_config([*SMALL, "steps=2"], run_dir=a))
    how(a, b)
    kept = {p: p.read_bytes() for p in a.rglob("*.ckpt")}  # a copy's original (none if moved)
    for steps in (4, 5):  # every time, not only the first
        _, objs = train(compose_config([*SMALL, f"steps={steps}", "ckpt_path=last"], run_dir=b))
        assert objs["trainer"].global_step == steps
        names = sorted(p.name for p in (b / "checkpoints").glob("*.ckpt"))
        assert names == ["last.ckpt", f"step{steps:06d}.ckpt"]
        last = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == steps
    assert {p: p.read_bytes() for p in a.rglob("*.ckpt")} == kept  # the original is untouched


ROOT = Path(__file__).resolve().parents[1]


def test_a_second_process_is_refused_naming_the_holders_pid(tmp_path, no_model):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from mapo.pipeline.run_folder import locked\n"
            "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = compose_config([*FAST], run_dir=tmp_path)
        with pytest.raises(ConfigError, match=rf"in use by another train.py \(pid {holder.pid}\)"):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    with run_folder.locked(tmp_path):  # the kernel freed it with the killed holder
        pass


def test_train_py_refused_keeps_the_runs_hydra_config(tmp_path):
    import subprocess
    import sys

    _fake_run(tmp_path)
    accepted = tmp_path / ".hydra" / "accepted"
    accepted.mkdir(parents=True)
    (accepted / "config.yaml").write_text("seed: 0\n")
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            *FAST,
            f"hydra.run.dir={tmp_path}",
            "ckpt_path=last",
            "seed=7",
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "seed: 0 -> 7" in proc.stderr.replace("\n", " ")
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 0\n"
