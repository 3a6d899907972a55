"""The realistic-shape benchmark's vLLM side (`make test-vllm`): our trainer with the vLLM engine
samples every rollout at its drawn length (one vLLM request per rollout), so the two stacks'
comparison in benchmarks/vs_trl_shape.py sees the same completion tokens as TRL's side."""

import importlib.util
import sys

import pytest

from benchmarks.common import Settings
from benchmarks.shape_setup import length_table, prepare, step_completion_tokens
from benchmarks.vs_trl_shape import spawn

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed: run `make test-vllm`",
    ),
]


def test_our_vllm_engine_generates_the_drawn_lengths(tmp_path):
    s = Settings(
        workload="shape-quick",
        engine="vllm",
        prompts=2,
        group=3,
        warmup=1,
        timed=1,
        cache_dir=str(tmp_path),
    )
    table = length_table(s, prepare(s))
    assert len({n for lengths in table.values() for n in lengths}) > 1  # not one fixed length
    result = spawn("ours", s, sys.executable, timeout=1200)
    tokens = result["mean_completion_tokens"] * s.prompts * s.group
    assert tokens == pytest.approx(step_completion_tokens(table))
    assert len(result["step_times"]) == 1
