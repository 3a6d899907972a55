"""The 2 nodes x 8 GPUs launch commands of docs/deepspeed.md compose and validate.

The commands are read from the doc itself (the SLURM script and the torchrun line for
experiment=emoset_mapo), so a doc edit that breaks them fails here. Checked: the launcher's
world (nodes x processes per node) equals the config's (trainer.num_nodes x trainer.devices),
the batch sizes divide by it, the run directory is pinned, and the config passes `validate`
with a model folder and data files in place (no weights are loaded).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mapo.algorithm.config import ConfigError
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.validate import validate

DOC = Path(__file__).resolve().parents[1] / "docs" / "deepspeed.md"


def _bash_blocks() -> list[str]:
    text = DOC.read_text()
    return [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def _launch(kind: str) -> tuple[int, int, list[str]]:
    """(nodes, processes per node, train.py overrides) of the doc's `kind` command."""
    for block in _bash_blocks():
        if "experiment=emoset_mapo" not in block or kind not in block:
            continue
        line = next(x for x in block.splitlines() if "train.py" in x)
        tokens = shlex.split(line, comments=True)
        overrides = [t for t in tokens[tokens.index("train.py") + 1 :] if "=" in t]
        if kind == "srun":
            nodes = int(re.search(r"#SBATCH --nodes=(\d+)", block).group(1))
            per_node = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", block).group(1))
            gpus = int(re.search(r"#SBATCH --gres=gpu:(\d+)", block).group(1))
            assert gpus == per_node, "one task per GPU"
        else:
            nodes = int(tokens[tokens.index("--nnodes") + 1])
            per_node = int(tokens[tokens.index("--nproc-per-node") + 1])
        return nodes, per_node, overrides
    raise AssertionError(f"docs/deepspeed.md has no {kind} command for experiment=emoset_mapo")


@pytest.fixture
def local_files(tmp_path):
    """A model folder and the data files at the paths the experiment expects (empty files:
    validate checks that they exist, it does not read them)."""
    model = tmp_path / "models" / "Qwen2.5-VL-7B-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')  # passes the folder check
    (model / "model.safetensors").write_bytes(b"")
    for name in (
        "emoset/train.parquet",
        "emoset/test.parquet",
        "webemo/test.parquet",
        "emotion6/test.parquet",
    ):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).touch()
    return [f"paths.model_dir={tmp_path / 'models'}", f"paths.data_dir={tmp_path / 'data'}"]


@pytest.fixture
def flash_attn_installed(monkeypatch):
    """The documented launch is for GPU machines with flash-attn; this CPU machine has none,
    and validate() rightly refuses flash_attention_2 without it."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return object() if name == "flash_attn" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("kind", ["srun", "torchrun"])
def test_documented_two_node_launch_composes_and_validates(
    kind, local_files, tmp_path, flash_attn_installed
):
    nodes, per_node, overrides = _launch(kind)
    assert (nodes, per_node) == (2, 8)
    assert any(o.startswith("hydra.run.dir=") for o in overrides), "pin the run dir"
    job = [o for o in overrides if not o.startswith("hydra.")]
    cfg = compose_config([*job, *local_files], run_dir=tmp_path / "run")
    world = cfg.trainer.num_nodes * cfg.trainer.devices
    assert world == nodes * per_node == 16
    assert cfg.trainer.strategy.stage == 3 and cfg.rollout.engine == "vllm"
    assert cfg.rollout.sync_bucket_mb > 0  # bucketed weight sync into each rank's engine
    settings = validate(cfg)
    a = settings.algo
    assert a.rollout_batch_size % world == 0 and a.mini_batch_size % world == 0
    assert (a.rollout_batch_size // world, a.mini_batch_size // world) == (32, 8)


def test_a_world_that_does_not_divide_the_batch_fails_before_loading(local_files, tmp_path):
    _, _, overrides = _launch("torchrun")
    job = [o for o in overrides if not o.startswith("hydra.")] + ["trainer.num_nodes=3"]
    cfg = compose_config([*job, *local_files], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="multiples of the world size 24"):
        validate(cfg)
