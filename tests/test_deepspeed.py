"""optimizer_update gives the exact update of one summed backward: plain, DDP, ZeRO-1/2/3.

Each check trains a tiny MLP with ``Trainer.fit`` (manual optimization, 2 optimizer updates of
3 then 2 micro-batches of unequal sizes) through the real strategy, then compares the full
parameters and the pre-clip gradient norm after every update with plain torch: the micro-batch
losses summed per rank, averaged over ranks, one backward, ``clip_grad_norm_``, AdamW. AdamW's
eps is large (0.1) and the clip (0.3) is below every gradient norm, so a wrong gradient SCALE
shows up in the parameters too (with a tiny eps Adam's first step is ~ lr * sign(grad)).

DeepSpeed runs in subprocesses (it initialises a process group that would outlive the test):
this file is also the worker script, ``python tests/test_deepspeed.py --devices N --out F
--configs a,b``; with N = 2 Lightning re-launches it for rank 1, gloo backend.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[1]
# Micro-batch sizes [rank][update][micro-batch]: unequal within and across ranks.
SIZES = ([[3, 5, 2], [4, 1]], [[4, 1, 6], [2, 3]])
LR, EPS, WEIGHT_DECAY, GRAD_CLIP = 0.05, 0.1, 0.01, 0.3
TOL = 1e-6  # fp32; the measured differences are <= 3e-8


# ---------------------------------------------------------------- shared by worker and reference


def micro_batches(rank: int, update: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1000 + 10 * rank + update)
    return [
        (torch.randn(n, 4, generator=gen), torch.randn(n, 3, generator=gen))
        for n in SIZES[rank][update]
    ]


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def rank_loss_fn(net, rows: int):
    # Scaled so that the sum over this rank's micro-batches is the rank's mean squared error.
    def loss_fn(mb):
        x, y = mb  # [n, 4], [n, 3]
        return ((net(x) - y) ** 2).sum() / rows

    return loss_fn


def reference(world: int, last_only: bool = False) -> list[dict]:
    """Plain torch: mean over ranks of per-rank loss sums, one backward, clip, AdamW."""
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY)
    out = []
    for update in range(len(SIZES[0])):
        loss = torch.zeros(())
        for rank in range(world):
            mbs = micro_batches(rank, update)
            rows = sum(len(x) for x, _ in mbs)
            loss = loss + sum(
                rank_loss_fn(net, rows)(mb) for mb in (mbs[-1:] if last_only else mbs)
            )
        (loss / world).backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad()
        out.append({"grad_norm": float(norm), "params": flat_params(net)})
    return out


def flat_params(module: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).tolist()


# ---------------------------------------------------------------- worker (runs under Lightning)


def _module_class():
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from torch.utils.data import DataLoader

    from mapo.trainer.strategies import _set_deepspeed_grad_clip, optimizer_update

    class TinyMLP(pl.LightningModule):
        def __init__(self, naive: bool):
            super().__init__()
            self.automatic_optimization = False
            self.net = make_net()
            self.naive = naive
            self.records: list[dict] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            # global_step = updates done so far (batch_idx restarts each epoch: 1 batch per rank).
            mbs = micro_batches(self.global_rank, self.trainer.global_step)
            loss_fn = rank_loss_fn(self, sum(len(x) for x, _ in mbs))
            if self.naive:
                out = self._naive_update(mbs, loss_fn)
            else:
                out = optimizer_update(self, mbs, loss_fn, grad_clip=GRAD_CLIP)
            self.records.append({**out, "params": self._gathered_params()})

        def _naive_update(self, mbs, loss_fn):
            # The obvious way: k backward calls, one step. Same clip, so only accumulation differs.
            engine = self.trainer.strategy.deepspeed_engine
            _set_deepspeed_grad_clip(engine, GRAD_CLIP)
            for mb in mbs:
                self.manual_backward(loss_fn(mb))
            self.optimizers().step()
            return {"grad_norm": float(engine.get_global_grad_norm()), "loss": float("nan")}

        def _gathered_params(self):
            strategy = self.trainer.strategy
            if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
                import deepspeed  # ZeRO-3 shards parameters: gather them (collective, all ranks)

                with deepspeed.zero.GatheredParameters(list(self.parameters())):
                    return flat_params(self)
            return flat_params(self)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY)

        def train_dataloader(self):
            # One dummy batch per update; the micro-batches come from `micro_batches`.
            return DataLoader(torch.zeros(len(SIZES[0]), 1), batch_size=1)

    return TinyMLP


def _strategy(config: str, devices: int):
    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    if config == "plain":
        return "ddp" if devices > 1 else "auto"
    stage = int(config.removeprefix("zero").removesuffix("_naive"))
    return CPUDeepSpeedStrategy(stage=stage, process_group_backend="gloo")


def run_worker(devices: int, configs: list[str]) -> dict[str, dict]:
    import lightning.pytorch as pl

    torch.set_num_threads(1)
    results = {}
    for config in configs:
        start = time.perf_counter()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy=_strategy(config, devices),
            max_steps=len(SIZES[0]),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = _module_class()(naive=config.endswith("_naive"))
        trainer.fit(module)
        results[config] = {
            "records": module.records,
            "global_step": trainer.global_step,
            "seconds": time.perf_counter() - start,
        }
    return results


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--configs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = run_worker(args.devices, args.configs.split(","))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(results))


# ---------------------------------------------------------------- tests


def _run_subprocess(devices: int, configs: list[str], out: Path) -> dict[str, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # The first DeepSpeed run on a machine compiles a CPU communication op (~45 s): cache it.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--devices", str(devices)]
    cmd += ["--configs", ",".join(configs), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())


ONE_PROCESS = ["zero1", "zero2", "zero3", "zero2_naive", "zero3_naive"]
TWO_PROCESSES = ["plain", "zero2", "zero3"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict]:
    return _run_subprocess(1, ONE_PROCESS, tmp_path_factory.mktemp("ds") / "one.json")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict[str, dict]:
    return _run_subprocess(2, TWO_PROCESSES, tmp_path_factory.mktemp("ds") / "two.json")


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return (
        (torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64))
        .abs()
        .max()
        .item()
    )


def assert_matches_reference(result: dict, world: int) -> None:
    ref = reference(world)
    initial = flat_params(make_net())
    assert result["global_step"] == len(ref)  # one optimizer step per optimizer_update
    for update, (got, want) in enumerate(zip(result["records"], ref, strict=True)):
        # The test is only meaningful if the update moved the parameters and clipping fired.
        assert max_abs_diff(want["params"], initial) > 1e-2
        assert want["grad_norm"] > GRAD_CLIP
        diff = max_abs_diff(got["params"], want["params"])
        assert diff < TOL, f"update {update}: parameters differ by {diff:.3g}"
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=TOL), f"update {update}"


def test_plain_lightning_single_device_matches_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_worker(1, ["plain"])["plain"]
    assert_matches_reference(result, world=1)
    # The returned loss is this rank's sum of micro-batch losses, before the update.
    net = make_net()
    mbs = micro_batches(0, 0)
    with torch.no_grad():
        want = sum(rank_loss_fn(net, sum(len(x) for x, _ in mbs))(mb) for mb in mbs)
    assert result["records"][0]["loss"] == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero1", "zero2", "zero3"])
def test_deepspeed_one_process_matches_reference(one_process, config):
    assert_matches_reference(one_process[config], world=1)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2_naive", "zero3_naive"])
def test_naive_accumulation_is_wrong_under_deepspeed(one_process, config):
    # k manual_backward calls then one step: DeepSpeed keeps only the last micro-batch.
    got = one_process[config]["records"][0]
    want = reference(world=1)[0]
    assert max_abs_diff(got["params"], want["params"]) > 1e-3
    assert abs(got["grad_norm"] - want["grad_norm"]) > 0.1 * want["grad_norm"]
    last_only = reference(world=1, last_only=True)[0]
    assert got["grad_norm"] == pytest.approx(last_only["grad_norm"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config", TWO_PROCESSES)
def test_two_processes_match_reference(two_processes, config):
    assert_matches_reference(two_processes[config], world=2)


def test_stock_strategy_refuses_cpu_and_ours_does_not(monkeypatch):
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    stock = DeepSpeedStrategy(accelerator=CPUAccelerator())
    with pytest.raises(RuntimeError, match="only supported on CUDA"):
        stock.setup_environment()
    calls = []
    monkeypatch.setattr(DDPStrategy, "setup_environment", lambda self: calls.append("ddp"))
    CPUDeepSpeedStrategy(accelerator=CPUAccelerator()).setup_environment()
    assert calls == ["ddp"]


def test_cuda_path_is_the_stock_strategy(monkeypatch):
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    calls = []
    for name in ("setup_environment", "setup_distributed", "_setup_model_and_optimizer"):
        monkeypatch.setattr(DeepSpeedStrategy, name, lambda self, *a, n=name: calls.append(n))
    strategy = CPUDeepSpeedStrategy(accelerator=CUDAAccelerator())
    strategy.setup_environment()
    strategy.setup_distributed()
    import deepspeed

    seen = []
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: seen.append(kw["args"].device_rank))
    with strategy._deepspeed_device_rank():  # on CUDA: Lightning's own args untouched
        deepspeed.initialize(args=argparse.Namespace(device_rank=3))
    strategy._setup_model_and_optimizer(None, None)
    assert calls == ["setup_environment", "setup_distributed", "_setup_model_and_optimizer"]
    assert seen == [3]


def test_cpu_passes_local_rank_to_deepspeed(monkeypatch):
    import deepspeed
    from lightning.pytorch.accelerators import CPUAccelerator

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    seen = []
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: seen.append(kw["args"].device_rank))
    strategy = CPUDeepSpeedStrategy(accelerator=CPUAccelerator())
    monkeypatch.setattr(CPUDeepSpeedStrategy, "local_rank", property(lambda self: 1))
    with strategy._deepspeed_device_rank():
        deepspeed.initialize(args=argparse.Namespace(device_rank=None))
    assert seen == [1]
    assert deepspeed.initialize.__name__ == "<lambda>"  # the patch is undone


def test_registered_strategy_names():
    from lightning.pytorch.strategies import StrategyRegistry

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    strategy = StrategyRegistry.get("cpu_deepspeed_stage_3")
    assert isinstance(strategy, CPUDeepSpeedStrategy) and strategy.zero_stage_3
    assert type(StrategyRegistry.get("deepspeed_stage_2")).__name__ == "DeepSpeedStrategy"


TRAINER_FILES = sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml"))


def _compose_trainer(tmp_path: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    # A primary config of our own: conf/config.yaml pulls in every other group.
    (tmp_path / "trainer_only.yaml").write_text(
        "defaults:\n  - trainer: default\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{ROOT / 'conf'}\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="trainer_only", overrides=overrides).trainer


@pytest.mark.parametrize("name", TRAINER_FILES)
def test_trainer_config_composes_and_builds_its_strategy(tmp_path, name):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import Strategy

    cfg = _compose_trainer(tmp_path, [f"trainer={name}"])
    assert cfg._target_ == "lightning.pytorch.Trainer"
    # Manual optimization: accumulation and clipping belong to optimizer_update.
    assert cfg.accumulate_grad_batches == 1 and cfg.gradient_clip_val is None
    if not isinstance(cfg.strategy, str):
        assert isinstance(instantiate(cfg.strategy), Strategy)


def test_cpu_deepspeed_trainer_builds_with_stage_override(tmp_path):
    from hydra.utils import instantiate

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    overrides = ["trainer=cpu_deepspeed", "trainer.strategy.stage=3", "trainer.devices=2"]
    trainer = instantiate(_compose_trainer(tmp_path, overrides), logger=False)
    assert isinstance(trainer.strategy, CPUDeepSpeedStrategy)
    assert trainer.strategy.zero_stage_3 and trainer.num_devices == 2
    assert trainer.strategy._process_group_backend == "gloo"


if __name__ == "__main__":
    _worker_main()
