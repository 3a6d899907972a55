"""benchmarks.vs_trl_shape and its pieces: the forced lengths, the crossover interpolation, and
the whole comparison in its tiniest configuration (real worker processes), with and without
TRL."""

import importlib.util
import json
import math

import pytest
import torch

from benchmarks import crossover, vs_trl_shape
from benchmarks.shape_setup import ForceLengths, regroup, split_requests, targets_for

TINY = ["--quick", "--prompts", "2", "--group", "2", "--rounds", "1", "--warmup", "1"]
TINY += ["--timed", "1", "--ckpt", "on"]


def test_targets_follow_each_prompt_not_the_row_order():
    table = {64: [3, 5], 70: [7, 2]}
    assert targets_for([70, 64, 64, 70], table) == [7, 3, 5, 2]
    with pytest.raises(RuntimeError, match="not in the workload"):
        targets_for([65], table)
    with pytest.raises(RuntimeError, match="more than 2 rows"):
        targets_for([64, 64, 64], table)


class _Params:  # the fields of vllm.SamplingParams that split_requests touches
    def __init__(self, n, seed=None):
        self.n, self.seed, self.min_tokens, self.max_tokens = n, seed, 0, 99

    def clone(self):
        return _Params(self.n, self.seed)


class _Out:  # a vllm RequestOutput with its samples
    def __init__(self, samples):
        self.outputs = samples


class _Sample:
    def __init__(self, text):
        self.text, self.index = text, 0


def test_vllm_requests_split_per_rollout_and_regroup_in_order():
    table = {64: [3, 5], 70: [7, 2]}
    rows, params, owner = split_requests(
        ["a", "b"], [_Params(2, seed=10), _Params(2)], [70, 64], table
    )
    assert rows == ["a", "a", "b", "b"] and owner == [0, 0, 1, 1]
    assert [(q.n, q.min_tokens, q.max_tokens) for q in params] == [
        (1, 7, 7),
        (1, 2, 2),
        (1, 3, 3),
        (1, 5, 5),
    ]
    assert [q.seed for q in params] == [10, 11, None, None]  # distinct samples per seeded prompt
    outs = [_Out([_Sample(t)]) for t in ("a0", "a1", "b0", "b1")]
    merged = regroup(outs, owner)
    assert [[(x.text, x.index) for x in m.outputs] for m in merged] == [
        [("a0", 0), ("a1", 1)],
        [("b0", 0), ("b1", 1)],
    ]
    with pytest.raises(RuntimeError, match="more than 2 rows"):
        split_requests(["a"], [_Params(3)], [64], table)


def test_force_lengths_forbids_eos_then_forces_it():
    force = ForceLengths([2, 3], eos_ids=[5, 6], width=4, vocab=8)
    scores = torch.zeros(2, 8)
    first = force(torch.zeros(2, 4, dtype=torch.long), scores.clone())  # step 0
    assert torch.isinf(first[:, 5:7]).all() and not torch.isinf(first[:, :5]).any()
    second = force(torch.zeros(2, 5, dtype=torch.long), scores.clone())  # step 1
    assert second[0].argmax() == 5 and torch.isinf(second[0, [0, 1, 6]]).all()
    assert torch.isinf(second[1, 5:7]).all()


def test_crossover_interpolates_in_log_length():
    hf = {16: {"s_per_step": 1.0}, 64: {"s_per_step": 2.0}, 256: {"s_per_step": 4.0}}
    vllm = {16: {"s_per_step": 2.0}, 64: {"s_per_step": 3.0}, 256: {"s_per_step": 3.0}}
    assert crossover.crossover(hf, vllm) == pytest.approx(128.0)
    assert crossover.crossover(hf, {n: {"s_per_step": 9.0} for n in hf}) is None


def _run(s_per_step: float, logprobs: float, update: float) -> dict:
    phase = {"time/rollout": 1.0, "time/logprobs": logprobs, "time/update": update}
    return {"s_per_step": s_per_step, "phases": [phase]}


def test_the_two_stacks_report_whole_step_ratios_without_a_bare_side():
    """--engine vllm: ours (vLLM) and TRL only; the ratios skip the bare ones and the last line
    is the whole-step ratio."""
    runs = {"ours": [_run(2.0, 0.5, 1.0), _run(4.0, 0.5, 1.5)], "trl": [_run(8.0, 2.0, 4.0)] * 2}
    sides = {
        "ours": {"s_per_step": 3.0, "training_s": 1.75, "generation_s": 1.0},
        "trl": {"s_per_step": 8.0, "training_s": 6.0, "generation_s": 2.0},
    }
    r = vs_trl_shape.ratios(sides, runs)
    assert not any("bare" in k for k in r)
    assert r["ours_over_trl_step"] == pytest.approx(3 / 8)
    assert r["round_ours_over_trl_step"] == pytest.approx([0.25, 0.5])
    assert r["round_ours_over_trl_training"] == pytest.approx([1.5 / 6, 2.0 / 6])
    line = vs_trl_shape.final_line({"on": {"sides": sides, "ratios": r}})
    assert line == "stack_ratio 0.375"


def _positive_finite(node, path="") -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _positive_finite(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _positive_finite(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        assert math.isfinite(node) and node > 0, f"{path} = {node}"


def _check(out: dict, path, capsys, sides: tuple[str, ...]) -> list[str]:
    data = json.loads(path.read_text())
    assert data["sides"] == list(sides) and set(data["results"]) == {"on"}
    res = data["results"]["on"]
    assert set(res["sides"]) == set(sides)
    for side in set(sides) - {"bare"}:
        for key in ("s_per_step", "generation_s", "logprobs_s", "update_s", "training_s"):
            assert key in res["sides"][side]
        assert "completion_tokens_per_s" in res["sides"][side]
    _positive_finite(res["sides"])
    _positive_finite(res["ratios"])
    # the forced lengths: every side generated exactly the bare run's completion tokens
    tokens = res["sides"]["bare"]["completion_tokens"]
    for side in set(sides) - {"bare"}:
        assert res["sides"][side]["completion_tokens_per_step"] == pytest.approx(tokens)
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.slow  # two worker processes: ~65 s on a loaded 2-core machine
def test_tiny_run_without_trl(tmp_path, capsys):
    path = tmp_path / "shape.json"
    out = vs_trl_shape.main([*TINY, "--no-trl", "--json", str(path)])
    lines = _check(out, path, capsys, ("ours", "bare"))
    assert lines[-1].startswith("bare_ratio ") and float(lines[-1].split()[1]) > 0


@pytest.mark.slow  # three worker processes: ~90 s on a loaded 2-core machine
@pytest.mark.skipif(
    importlib.util.find_spec("trl") is None,
    reason="TRL is not installed in this env (it lives in .venv-bench: make bench-shape)",
)
def test_tiny_run_with_trl(tmp_path, capsys):
    path = tmp_path / "shape.json"
    out = vs_trl_shape.main([*TINY, "--json", str(path)])
    lines = _check(out, path, capsys, ("ours", "trl", "bare"))
    assert lines[-1].startswith("ratio ") and float(lines[-1].split()[1]) > 0
    ratios = json.loads(path.read_text())["results"]["on"]["ratios"]
    assert len(ratios["round_ours_over_trl_training"]) == 1
