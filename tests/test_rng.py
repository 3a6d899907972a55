"""mapo/rng.py: the one home of saving and restoring the process's random state."""

import random

import numpy as np
import torch

from mapo.rng import rng_state, set_rng_state


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_restoring_the_state_repeats_the_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()
    state = rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)  # as inside a checkpoint
    first = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert _draws() != first
    set_rng_state(torch.load(path, weights_only=True))  # plain lists and tensors only
    assert _draws() == first
