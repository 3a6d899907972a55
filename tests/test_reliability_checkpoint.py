"""Checkpoint files: atomic saves that survive a kill mid-write, safe (weights-only) loads."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from io import BytesIO
from pathlib import Path

import pytest
import torch

from mapo.trainer.checkpoint_integrity import file_sha256, read_sidecar, sidecar_of, verify
from mapo.trainer.checkpointing import AtomicCheckpointIO, CheckpointLoadError, temp_files


def _ckpt(value: float, n: int = 1000) -> dict:
    return {"state_dict": {"w": torch.full((n,), value)}, "global_step": int(value)}


def _load_plain(path: Path) -> dict:
    return torch.load(path, weights_only=True)


class Payload:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_replaces_the_file_and_leaves_no_temp(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)
    io.save_checkpoint(_ckpt(2.0), path)
    assert _load_plain(path)["global_step"] == 2
    assert temp_files(path) == [] and temp_files(sidecar_of(path)) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256.json"]


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The process dies after the bytes are written but before the rename (here: at fsync)."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)

    def die(fd):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_ckpt(2.0), path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert temp_files(path) == []  # an exception (not a SIGKILL) cleans up after itself


def test_a_truncated_temp_file_next_to_last_is_ignored_then_removed(tmp_path):
    """What a SIGKILL during a save leaves: a partial hidden temp file beside last.ckpt."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)
    stray = tmp_path / ".last.ckpt.tmp-99999-deadbeef"
    stray.write_bytes(path.read_bytes()[:100])
    assert temp_files(path) == [stray]
    assert io.load_checkpoint(path)["global_step"] == 1  # last.ckpt itself is whole
    io.save_checkpoint(_ckpt(3.0), path)  # the next save sweeps the stray file
    assert not stray.exists() and io.load_checkpoint(path)["global_step"] == 3


def test_a_truncated_checkpoint_fails_naming_the_file_and_the_alternatives(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(4.0), tmp_path / "step000004.ckpt")
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(5.0), last)
    with open(last, "r+b") as f:  # what a non-atomic writer leaves after a crash
        f.truncate(last.stat().st_size // 2)
    with pytest.raises(
        CheckpointLoadError, match=r"last\.ckpt was refused: its checksum.*step000004"
    ):
        io.load_checkpoint(last)
    sidecar_of(last).unlink()  # no sidecar: torch.load itself finds the damage
    with pytest.raises(CheckpointLoadError, match=r"last\.ckpt is unreadable.*step000004\.ckpt"):
        io.load_checkpoint(last)
    last.write_bytes(b"")
    with pytest.raises(CheckpointLoadError, match="unreadable"):
        io.load_checkpoint(last)


def test_flipped_bits_are_refused_by_the_checksum(tmp_path):
    """A few KB of flipped bits inside a tensor's bytes: torch.load alone reads it silently."""
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0, n=100_000), last)
    assert verify(last) == "ok" and read_sidecar(last)["accept"] == [file_sha256(last)]
    data = bytearray(last.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 4096):
        data[i] ^= 0x5A
    last.write_bytes(bytes(data))
    silently = torch.load(last, weights_only=True)["state_dict"]["w"]  # the damage is real
    assert not torch.equal(silently, torch.full((100_000,), 1.0))
    with pytest.raises(CheckpointLoadError, match="checksum does not match.*ckpt_path=null"):
        io.load_checkpoint(last)


def test_a_raw_pickle_is_named_and_an_unverified_neighbour_is_never_offered(tmp_path):
    io = AtomicCheckpointIO()
    good, last = tmp_path / "step000002.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(2.0), good)
    last.write_bytes(pickle.dumps({"state_dict": {}}))  # not torch.save's zip format
    hostile = tmp_path / "step000009.ckpt"  # newer, no sidecar: may be as bad as last.ckpt
    hostile.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointLoadError) as err:
        io.load_checkpoint(last)
    msg = str(err.value)
    assert "raw pickle, not the zip archive" in msg and "truncated" not in msg
    assert f"ckpt_path={good}" in msg and "step000009" not in msg


def test_a_kill_between_rename_and_sidecar_update_still_verifies(tmp_path, monkeypatch):
    """Steps 2-4 of a save (mapo/trainer/checkpoint_integrity.py): the sidecar accepts either file."""
    import mapo.trainer.checkpoint_integrity as integrity

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), last)
    real = integrity.write_sidecar
    calls = []

    def die_on_final_write(path, meta):
        calls.append(meta)
        if len(calls) == 1:
            return real(path, meta)  # step 2: accept both
        raise KeyboardInterrupt("killed after the rename")  # step 4 never happens

    monkeypatch.setattr(integrity, "write_sidecar", die_on_final_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_ckpt(2.0), last)
    monkeypatch.undo()
    assert len(read_sidecar(last)["accept"]) == 2
    assert io.load_checkpoint(last)["global_step"] == 2  # the new file, verified


def test_removing_a_checkpoint_removes_its_sidecar(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "step000001.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)
    assert sidecar_of(path).is_file()
    io.remove_checkpoint(path)
    assert not path.exists() and not sidecar_of(path).exists()


def test_a_killed_coldstart_save_leaves_no_temp_folder(tmp_path):
    from mapo.models.coldstart import remove_dead_temp_dirs

    out = tmp_path / "coldstart-tiny-abc"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".{out.name}.tmp-{dead}-xyz"
    live = tmp_path / f".{out.name}.tmp-{os.getpid()}-abc"  # a builder still running
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 100)
    assert remove_dead_temp_dirs(out) == [stale]
    assert not stale.exists() and live.exists()


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({**_ckpt(1.0), "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointLoadError, match="could run code.*posix.system"):
        AtomicCheckpointIO().load_checkpoint(path)
    # an explicit weights_only=None (Lightning's default) still means weights-only here
    with pytest.raises(CheckpointLoadError):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=None)
    assert not marker.exists()


def test_module_checkpoint_state_loads_weights_only():
    """What MAPOModule.on_save_checkpoint stores (mapo.rng.rng_state: RNG states as lists)
    survives weights_only and restores the same streams."""
    import random

    import numpy as np

    from mapo.rng import rng_state, set_rng_state

    state = rng_state()
    buf = BytesIO()
    torch.save({"mapo": {"rng": state, "stream": {"seed": 0, "epoch": 1}}}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)["mapo"]["rng"]
    expected = random.random(), float(np.random.rand()), float(torch.rand(()))
    set_rng_state(back)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert torch.equal(back["torch"], state["torch"])


def test_the_trainer_uses_the_atomic_writer(tmp_path):
    from mapo.pipeline.build import build_trainer
    from mapo.pipeline.quickrun import compose_config

    cfg = compose_config(["logger=none", "callbacks.progress_bar=null"], run_dir=tmp_path)
    trainer = build_trainer(cfg, [], tmp_path, updates_per_rollout=1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


_KILL_MID_WRITE = textwrap.dedent(
    """
    import sys, time, torch
    from mapo.trainer.checkpointing import AtomicCheckpointIO

    path = sys.argv[1]
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

    real_save = torch.save  # the save streams into the temp file: stall it half way

    def stalled_save(obj, f, *a, **k):
        real_save({"global_step": 2, "w": torch.ones(1_000_000)}, f)
        f = getattr(f, "f", f)  # the temp file under the hashing writer
        f.flush()
        f.truncate(f.tell() // 2)  # half a checkpoint on disk, as at a real kill
        print("MID-WRITE", flush=True)
        time.sleep(600)

    torch.save = stalled_save
    io.save_checkpoint({"global_step": 2}, path)
    """
)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_write_keeps_last_loadable(tmp_path):
    """A real SIGKILL while the new checkpoint's bytes are half written."""
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_MID_WRITE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout.readline().strip() == "MID-WRITE"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert [p.stat().st_size > 0 for p in temp_files(path)] == [True]  # the partial write
    assert verify(path) == "ok"  # the sidecar still accepts the old file
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 1
