"""DeepSpeed under Lightning on CPU, and the one optimizer update the RL module calls.

- ``CPUDeepSpeedStrategy``: Lightning's ``DeepSpeedStrategy`` refuses every accelerator but CUDA.
  On CUDA this subclass is the stock strategy (the device overrides delegate to it); on CPU it skips
  the two CUDA-only checks and tells DeepSpeed which process it is, so ZeRO-1/2/3 run on CPU
  with gloo. Tests and CI exercise the real DeepSpeed code path this way. On CPU and CUDA it
  also writes a sha256 manifest into every checkpoint folder and refuses to load a folder that
  does not match it (`checkpoint_integrity.manifest_problem`): DeepSpeed unpickles with code.
- ``optimizer_update``: one optimizer step from several micro-batches with exact gradient
  accumulation, norm clipping of the accumulated gradient and the pre-clip norm, identical under
  plain Lightning (single device, DDP) and DeepSpeed ZeRO-1/2/3. docs/deepspeed.md explains the
  DeepSpeed recipe and what goes wrong without each part of it.

Across data-parallel ranks the update uses the MEAN over ranks of each rank's SUM of micro-batch
losses (what DDP and DeepSpeed both do when they average gradients). A caller that wants the
mean over all sequences of the global mini-batch scales each micro-batch loss by
``1 / (sequences on this rank)`` when every rank holds the same number of sequences.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import LightningModule
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    StrategyRegistry,
)
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from mapo.ranks import all_reduce
from mapo.trainer import checkpoint_integrity as integrity
from mapo.trainer.checkpointing import CheckpointLoadError

T = TypeVar("T")


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also runs on CPU (gloo); unchanged on CUDA.

    Takes exactly the arguments of ``lightning.pytorch.strategies.DeepSpeedStrategy``
    (``stage``, ``offload_optimizer``, ``config``, ``process_group_backend``, ...).
    """

    def _on_cuda(self) -> bool:
        return isinstance(self.accelerator, CUDAAccelerator)

    def setup_environment(self) -> None:
        if self._on_cuda():
            super().setup_environment()
            return
        # The stock method only adds the "CUDA GPUs only" check before DDP's setup.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        if self._on_cuda():
            super().setup_distributed()
            return
        # Same as the stock method minus `_validate_device_index_selection`, which rejects the
        # index-less `cpu` devices that every CPU process shares.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(
        self, model: torch.nn.Module, optimizer: Any, lr_scheduler: Any = None
    ) -> tuple[Any, Any]:
        with self._deepspeed_device_rank():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _initialize_deepspeed_inference(self, model: torch.nn.Module) -> None:
        with self._deepspeed_device_rank():
            super()._initialize_deepspeed_inference(model)

    @contextmanager
    def _deepspeed_device_rank(self) -> Iterator[None]:
        """On CPU, make the stock ``deepspeed.initialize`` calls pass this process's local rank.

        Lightning passes ``args=Namespace(device_rank=root_device.index)``: None on CPU, where
        DeepSpeed needs the local rank (and with -1 would assume a world of one process).
        """
        if self._on_cuda():
            yield
            return
        import deepspeed

        stock_initialize = deepspeed.initialize

        def initialize(*args: Any, **kwargs: Any) -> Any:
            kwargs["args"] = argparse.Namespace(device_rank=self.local_rank)
            return stock_initialize(*args, **kwargs)

        deepspeed.initialize = initialize  # Lightning looks it up at call time
        try:
            yield
        finally:
            deepspeed.initialize = stock_initialize

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        """The stock save (every rank writes its shards), then rank 0 writes the manifest."""
        super().save_checkpoint(checkpoint, filepath, storage_options)
        self.barrier("shards written")
        if self.is_global_zero:
            integrity.write_manifest(filepath)  # the path every rank saved under
        self.barrier("manifest written")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        """Refuse a folder that does not match its manifest before DeepSpeed unpickles it (its
        loader runs code). A single file goes through the checkpoint IO (weights-only)."""
        path = Path(str(checkpoint_path))
        if path.is_dir() and (why := integrity.manifest_problem(path)) is not None:
            raise CheckpointLoadError(
                f"DeepSpeed checkpoint {path} was refused: {why}. DeepSpeed's loader can run "
                "code, so only a folder whose every file matches the manifest this code wrote "
                "is loaded. Fix: resume from a checkpoint this run wrote, or start over with "
                "ckpt_path=null and a new hydra.run.dir"
            )
        return super().load_checkpoint(checkpoint_path, weights_only)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        # Own names only: the inherited method would re-register (and clash with) "deepspeed*".
        for name, stage in (("cpu_deepspeed", 2), ("cpu_deepspeed_stage_2", 2)):
            strategy_registry.register(
                name, cls, description=f"DeepSpeed ZeRO-{stage}, CPU or CUDA", stage=stage
            )
        strategy_registry.register(
            "cpu_deepspeed_stage_3", cls, description="DeepSpeed ZeRO-3, CPU or CUDA", stage=3
        )


if "cpu_deepspeed" not in StrategyRegistry:
    CPUDeepSpeedStrategy.register_strategies(StrategyRegistry)


def optimizer_update(
    module: LightningModule,
    micro_batches: Sequence[T],
    loss_fn: Callable[[T], Tensor],
    *,
    grad_clip: float | None,
) -> dict[str, float]:
    """Backpropagate ``loss_fn(mb)`` for every micro-batch, then take ONE optimizer step.

    ``loss_fn`` returns the micro-batch loss already scaled so that the sum over this rank's
    micro-batches is this rank's mini-batch loss. The step uses the gradient of that sum
    (averaged over data-parallel ranks), clipped to total norm ``grad_clip`` (None: no clipping),
    and leaves the gradients zeroed. Must be called from ``training_step`` of a module with
    ``automatic_optimization = False``, on every rank, with one micro-batch or more per rank;
    under DeepSpeed every rank must pass the same number (their sizes may differ).

    Returns ``grad_norm`` (total norm of the accumulated gradient before clipping) and ``loss``
    (this rank's sum of micro-batch losses).
    """
    if len(micro_batches) == 0:
        raise ValueError("optimizer_update needs at least one micro-batch; got an empty sequence.")
    if module.automatic_optimization:
        raise RuntimeError(
            "optimizer_update drives the optimizer itself: set `self.automatic_optimization = "
            "False` in the LightningModule's __init__."
        )
    if grad_clip is not None and grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive or None (no clipping); got {grad_clip}.")
    strategy = module.trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        return _deepspeed_update(module, strategy, micro_batches, loss_fn, grad_clip)
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        return _plain_update(module, strategy, micro_batches, loss_fn, grad_clip)
    raise NotImplementedError(
        f"optimizer_update supports single-device, DDP and DeepSpeed strategies; got "
        f"{type(strategy).__name__}. Pick trainer=default, ddp, deepspeed_stage_2/3 or "
        "cpu_deepspeed."
    )


def _plain_update(
    module: LightningModule,
    strategy: SingleDeviceStrategy | DDPStrategy,
    micro_batches: Sequence[T],
    loss_fn: Callable[[T], Tensor],
    grad_clip: float | None,
) -> dict[str, float]:
    if getattr(strategy.precision_plugin, "scaler", None) is not None:
        raise NotImplementedError(
            "optimizer_update does not support fp16 loss scaling (precision=16-mixed) outside "
            "DeepSpeed: the gradients would be clipped while still scaled. Use precision "
            "bf16-mixed or 32, or a DeepSpeed trainer."
        )
    optimizer = module.optimizers()
    assert not isinstance(optimizer, list), "optimizer_update expects exactly one optimizer"
    ddp = strategy.model if isinstance(strategy.model, DistributedDataParallel) else None
    total = torch.zeros((), device=module.device)
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # DDP averages .grad over ranks in the last backward; earlier ones only accumulate
        # locally (mean over ranks of the local sums, one all-reduce per update).
        with ddp.no_sync() if ddp is not None and not last else nullcontext():
            loss = loss_fn(mb)
            module.manual_backward(loss)
        total += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)  # returns the pre-clip norm
    if not torch.isfinite(norm):
        # Stepping would write NaN into the weights and the optimizer state (and then into
        # last.ckpt); stop with the weights of the last good step instead.
        optimizer.zero_grad()
        raise FloatingPointError(
            f"non-finite gradient norm ({float(norm)}) from a finite loss: the update was not "
            "applied. Lower optim.lr, check the advantages (advantage/* metrics) or the model's "
            "dtype (model.dtype=float32)."
        )
    optimizer.step()
    optimizer.zero_grad()
    return {"grad_norm": float(norm), "loss": float(total)}


def _deepspeed_update(
    module: LightningModule,
    strategy: DeepSpeedStrategy,
    micro_batches: Sequence[T],
    loss_fn: Callable[[T], Tensor],
    grad_clip: float | None,
) -> dict[str, float]:
    # Why each line matters (measured, docs/deepspeed.md): without the explicit boundary every
    # backward is a boundary (gradient_accumulation_steps = 1) and ZeRO keeps only the last
    # micro-batch; without routing the forward through the engine, ZeRO-3 never advances its
    # micro-step counter and overwrites instead of accumulating; `scale_wrt_gas=False` stops
    # DeepSpeed dividing each loss by gradient_accumulation_steps.
    engine = strategy.deepspeed_engine
    _check_same_count_on_all_ranks(len(micro_batches))
    _set_deepspeed_grad_clip(engine, grad_clip)
    total = torch.zeros((), device=module.device)
    try:
        for i, mb in enumerate(micro_batches):
            engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
            loss = _forward_through_engine(engine, module, loss_fn, mb)
            module.manual_backward(loss, scale_wrt_gas=False)  # -> engine.backward
            total += loss.detach()
        # -> engine.step(): reduce, clip the accumulated gradient, step, zero the gradients.
        # Going through Lightning's optimizer keeps its hooks and its global_step count.
        module.optimizers().step()
    finally:
        engine.set_gradient_accumulation_boundary(None)  # back to DeepSpeed's own counter
    norm = engine.get_global_grad_norm()  # pre-clip norm of the accumulated gradient
    return {"grad_norm": float("nan") if norm is None else float(norm), "loss": float(total)}


def _check_same_count_on_all_ranks(count: int) -> None:
    """Fail loudly instead of hanging: ZeRO-2/3 reduce after every backward, collectively."""
    high, neg_low = all_reduce([count, -count], "max")  # max(count), -min(count)
    if high != -neg_low:
        raise ValueError(
            f"Under DeepSpeed every rank must pass the same number of micro-batches to "
            f"optimizer_update (ZeRO reduces gradients after each backward); got between "
            f"{int(-neg_low)} and {int(high)}. Split each rank's mini-batch into the "
            "same number of micro-batches (their sizes may differ)."
        )


def _set_deepspeed_grad_clip(engine: Any, grad_clip: float | None) -> None:
    """DeepSpeed reads the clip value from its config at init; update both places it is read."""
    clip = 0.0 if grad_clip is None else float(grad_clip)
    engine._config.gradient_clipping = clip  # the engine's own fp32 path (_take_model_step)
    if hasattr(engine.optimizer, "clip_grad"):
        engine.optimizer.clip_grad = clip  # ZeRO-1/2/3 and BF16 optimizers clip in their step()


def _forward_through_engine(engine: Any, module: LightningModule, fn: Callable, mb: Any) -> Tensor:
    """Run ``fn(mb)`` inside ``engine.forward``, as Lightning does for ``training_step``.

    DeepSpeed's forward is where it starts a micro-step (ZeRO-3 accumulates gradient partitions
    only after that) and hooks the output so its backward prologue runs.
    """
    original_forward = module.forward

    def redirected(*args: Any, **kwargs: Any) -> Any:
        module.forward = original_forward  # fn may call the real forward
        return fn(*args, **kwargs)

    module.forward = redirected
    try:
        return engine(mb)
    finally:
        module.forward = original_forward
