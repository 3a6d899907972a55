"""DeepSpeed checkpoint folders carry a manifest of every file's sha256, written at save and
matched before DeepSpeed (whose loader unpickles with code) reads a byte: a flipped shard, a
shard swapped for a pickle payload, an extra or missing file, or no manifest is refused."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from mapo.trainer.checkpoint_integrity import MANIFEST, manifest_problem, write_manifest
from mapo.trainer.checkpointing import CheckpointLoadError
from mapo.trainer.strategies import CPUDeepSpeedStrategy


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _folder(tmp_path: Path) -> Path:
    """The layout DeepSpeed writes: last.ckpt/checkpoint/*.pt, plus `latest`."""
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    torch.save({"w": torch.ones(50_000)}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"m": torch.zeros(50_000)}, folder / "checkpoint" / "zero_pp_rank_0_optim_states.pt")
    (folder / "latest").write_text("checkpoint")
    write_manifest(folder)
    return folder


def _refused(folder: Path, match: str) -> None:
    assert manifest_problem(folder) is not None
    with pytest.raises(CheckpointLoadError, match=match):
        CPUDeepSpeedStrategy.load_checkpoint(None, folder)  # refused before the engine is used


def test_a_matching_folder_passes(tmp_path):
    assert manifest_problem(_folder(tmp_path)) is None


def test_a_flipped_shard_is_refused(tmp_path):
    folder = _folder(tmp_path)
    shard = folder / "checkpoint" / "mp_rank_00_model_states.pt"
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4096):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    _refused(folder, r"changed: \['checkpoint/mp_rank_00_model_states.pt'\]")


def test_a_pickle_payload_is_refused_unread(tmp_path):
    folder = _folder(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "checkpoint" / "zero_pp_rank_0_optim_states.pt", "wb") as f:
        pickle.dump(Payload(marker), f)
    _refused(folder, "changed")
    assert not marker.exists()


def test_missing_extra_and_no_manifest_are_refused(tmp_path):
    folder = _folder(tmp_path)
    (folder / "latest").unlink()
    _refused(folder, r"missing: \['latest'\]")
    folder = _folder(tmp_path / "b")
    (folder / "checkpoint" / "extra.pt").write_bytes(b"x")
    _refused(folder, "not in it")
    (folder / MANIFEST).unlink()
    _refused(folder, f"has no {MANIFEST}.*ckpt_path=null")
    (folder / MANIFEST).write_text("{")
    _refused(folder, "unreadable")
