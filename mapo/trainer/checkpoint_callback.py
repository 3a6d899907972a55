"""Lightning's ModelCheckpoint, plus: the final step is always saved, and stale numbered
checkpoints a killed run left beside the kept ones are removed (and counted) at the end.

Lightning 2.6.6 saves only on the interval (`every_n_train_steps`): a run of 8 steps with an
interval of 3 ends with `last.ckpt` at step 6, so resuming the finished run redoes steps 6-7.
Here the step that reaches `trainer.max_steps` is saved too (top-k file and `last.ckpt`).

With `save_top_k=1` Lightning saves the new numbered file, then removes the previous one; a kill
in between leaves both. `on_train_end` removes numbered `.ckpt` files in the checkpoint folder
that this callback does not track (not the best / top-k / last one), with their sidecars, and
only files of this run: their sidecar carries the same run identity as the kept `last.ckpt`. A
file of another run (or one without a sidecar) is left alone and named in a warning.

Names never version: Lightning would write `last-v1.ckpt` beside a `last.ckpt` it does not
track (a moved run folder, whose checkpoint state names the old path), and `ckpt_path=last`
would then resume the older file. A run folder holds one run (`mapo.pipeline.run_folder`), so a
name already there is this run's own older file and is overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from mapo.trainer.checkpoint_integrity import try_read_sidecar

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, *args, **kwargs):
        if kwargs.get("enable_version_counter"):
            raise ValueError(
                "RunCheckpoint overwrites a name (a run folder holds one run); drop "
                "callbacks.model_checkpoint.enable_version_counter"
            )
        super().__init__(*args, **{**kwargs, "enable_version_counter": False})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = trainer.max_steps is not None and trainer.global_step >= trainer.max_steps
        if final and self._last_global_step_saved != trainer.global_step:
            if self._should_skip_saving_checkpoint(trainer):
                return
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.is_global_zero and self.save_top_k >= 1 and self.dirpath:
            self.remove_stale(trainer)

    def remove_stale(self, trainer: pl.Trainer) -> list[Path]:
        """Remove untracked numbered checkpoints in `dirpath`; returns what was removed."""
        tracked = {self.best_model_path, self.last_model_path, *self.best_k_models}
        tracked = {Path(p).resolve() for p in tracked if p}
        untracked = [
            p
            for p in sorted(Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}"))
            if p.resolve() not in tracked and not p.name.startswith(self.CHECKPOINT_NAME_LAST)
        ]
        ours = _identity(Path(self.last_model_path)) if self.last_model_path else None
        stale = [p for p in untracked if ours is not None and _identity(p) == ours]
        if len(stale) < len(untracked):
            log.warning(
                "left %s in %s: not provably this run's (no sidecar with this run's identity)",
                [p.name for p in untracked if p not in stale],
                self.dirpath,
            )
        for p in stale:
            trainer.strategy.remove_checkpoint(p)  # the checkpoint IO removes the sidecar too
        if stale:
            log.warning(
                "removed %d stale checkpoint(s) a killed run left beside the kept ones "
                "(save_top_k=%d): %s",
                len(stale),
                self.save_top_k,
                [p.name for p in stale],
            )
        return stale


def _identity(path: Path) -> dict | None:
    meta = try_read_sidecar(path) if path.is_file() else None
    return meta.get("run_identity") if meta else None
