"""Every checkpoint that is loaded is verified: an unreadable sidecar is refused (not read as
no sidecar), and eval.py's `model_to_eval=<run>/checkpoints/last.ckpt` checks the sidecar before
any model builds."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mapo.pipeline.evaluate import _load_model
from mapo.trainer.checkpoint_integrity import sidecar_of, verify
from mapo.trainer.checkpointing import AtomicCheckpointIO, CheckpointLoadError


def _flip(path: Path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _saved(tmp_path: Path) -> Path:
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = {"state_dict": {"policy.w": torch.ones(100_000)}, "global_step": 1}
    AtomicCheckpointIO().save_checkpoint(state, last)
    return last


@pytest.mark.parametrize("sidecar", [b"{not json", b'{"sha256": "x"}', b"\x00" * 10])
def test_an_unreadable_sidecar_is_refused(sidecar, tmp_path):
    last = _saved(tmp_path)
    _flip(last)
    sidecar_of(last).write_bytes(sidecar)
    assert verify(last).startswith("bad sidecar")
    with pytest.raises(CheckpointLoadError, match=r"sidecar last.ckpt.sha256.json is .*delete"):
        AtomicCheckpointIO().load_checkpoint(last)


def test_a_save_over_a_damaged_sidecar_writes_a_good_one(tmp_path):
    last = _saved(tmp_path)
    sidecar_of(last).write_text("{")
    AtomicCheckpointIO().save_checkpoint({"global_step": 2}, last)
    assert verify(last) == "ok"


def test_eval_verifies_a_checkpoint_before_the_model_builds(tmp_path, no_model):
    last = _saved(tmp_path)
    _flip(last)
    cfg = OmegaConf.create(
        {
            "model_to_eval": str(last),
            "model": {
                "dtype": "float32",
                "attn_implementation": "sdpa",
                "trust_remote_code": False,
            },
        }
    )
    with pytest.raises(CheckpointLoadError, match="checksum does not match"):
        _load_model(cfg, data={})


def test_disk_full_during_a_save_names_enospc_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from mapo.trainer import checkpoint_integrity

    last = _saved(tmp_path)
    before = last.read_bytes()
    real = checkpoint_integrity.HashingWriter.write

    def full(self, data):
        if self.bytes > 100_000:
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real(self, data)

    monkeypatch.setattr(checkpoint_integrity.HashingWriter, "write", full)
    state = {"state_dict": {"policy.w": torch.zeros(200_000)}, "global_step": 2}
    with pytest.raises(OSError, match=r"No space left on device.*free space on") as err:
        AtomicCheckpointIO().save_checkpoint(state, last)
    assert err.value.errno == errno.ENOSPC and "unexpected pos" not in str(err.value)
    monkeypatch.undo()
    assert last.read_bytes() == before and verify(last) == "ok"
