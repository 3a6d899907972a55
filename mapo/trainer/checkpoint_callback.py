"""Lightning's ModelCheckpoint, plus: the final step is always saved, and stale numbered
checkpoints a killed run left beside the kept ones are removed (and counted) at the end.

Lightning 2.6.6 saves only on the interval (`every_n_train_steps`): a run of 8 steps with an
interval of 3 ends with `last.ckpt` at step 6, so resuming the finished run redoes steps 6-7.
Here the step that reaches `trainer.max_steps` is saved too (top-k file and `last.ckpt`).

With `save_top_k=1` Lightning saves the new numbered file, then removes the previous one; a kill
in between leaves both. `on_train_end` removes numbered `.ckpt` files in the checkpoint folder
that this callback does not track (not the best / top-k / last one), with their sidecars.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
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
        stale = [
            p
            for p in sorted(Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}"))
            if p.resolve() not in tracked and not p.name.startswith(self.CHECKPOINT_NAME_LAST)
        ]
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
