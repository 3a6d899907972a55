"""A resumable, rank-aware stream of training prompts.

Lightning restarts a plain DataLoader from the top of the epoch on resume; RL needs the exact
data position (and DAPO draws a variable number of extra prompts per step). The stream is a
seeded permutation per epoch plus a cursor, saved in the checkpoint, so a resumed run sees the
same prompts as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class PromptStream:
    rows: Sequence[Any]
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    cursor: int = 0  # position in the current epoch's permutation (global, all ranks)
    drawn: int = 0  # prompts drawn so far by this stream (global), for group ids

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("the training set is empty; check data.train")
        self._perm = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next(self, n_global: int) -> tuple[list[Any], list[int]]:
        """Draw `n_global` prompts for all ranks; return this rank's rows and their global
        draw indices (unique over the whole run: used to build group ids)."""
        if n_global % self.world_size:
            raise ValueError(
                f"{n_global} prompts cannot be split evenly over {self.world_size} ranks"
            )
        picked: list[int] = []
        while len(picked) < n_global:
            if self.cursor == len(self._perm):
                self.epoch += 1
                self.cursor = 0
                self._perm = self._permutation(self.epoch)
            take = min(n_global - len(picked), len(self._perm) - self.cursor)
            picked.extend(self._perm[self.cursor : self.cursor + take].tolist())
            self.cursor += take
        draw_ids = list(range(self.drawn, self.drawn + n_global))
        self.drawn += n_global
        mine = slice(self.rank, None, self.world_size)
        return [self.rows[i] for i in picked[mine]], draw_ids[mine]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.cursor, self.drawn = int(state["cursor"]), int(state["drawn"])
        self._perm = self._permutation(self.epoch)
