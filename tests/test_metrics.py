"""Evaluation metrics (single process and 2-process gloo sync) and training-metric helpers."""

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mapo.algorithm.advantages import compute_advantages_with_stats
from mapo.analysis.metrics import (
    DatasetAccuracy,
    EvalMetrics,
    advantage_metrics,
    response_metrics,
    reward_metrics,
)

torch.set_num_threads(1)

MATH = ("geo3k", ["mathvision", "mathvista", "mathverse"])
EMO = ("emoset", ["webemo", "emotion6"])

# Paper rows (percent): in-domain, OOD..., A^T, average. Tab. 3 and Tab. 2.
PAPER_ROWS = [
    (MATH, [37.43, 24.51, 67.20, 40.02], 43.91, 40.67),  # Tab. 3 Vanilla
    (MATH, [51.91, 26.74, 72.70, 43.93], 47.79, 49.85),  # Tab. 3 GRPO G=12
    (MATH, [52.91, 26.51, 73.50, 44.59], 48.20, 50.56),  # Tab. 3 DAPO G=12
    (MATH, [54.41, 27.30, 73.20, 43.81], 48.10, 51.26),  # Tab. 3 MAPO G=12
    (MATH, [50.92, 26.61, 73.00, 44.59], 48.07, 49.49),  # Tab. 2 APD only
    (MATH, [54.24, 27.37, 71.30, 43.40], 47.36, 50.80),  # Tab. 3 MAPO G=8
    (EMO, [77.86, 50.75, 60.61], 55.68, 66.77),  # Tab. 3 MAPO G=12 emotion
    (EMO, [76.40, 49.90, 60.27], 55.08, 65.74),  # Tab. 3 GRPO G=8 emotion
]


def metric_with_accuracies(layout, accs_pct):
    """One sample per dataset whose score is the accuracy itself: acc = score / 1."""
    m = EvalMetrics(layout[0], layout[1])
    for name, acc in zip(m.datasets, accs_pct):
        m.update(torch.tensor([acc / 100], dtype=torch.float64), name)
    return m


@pytest.mark.parametrize("layout, accs, a_t, a_avg", PAPER_ROWS)
def test_definitions_reproduce_paper_tables(layout, accs, a_t, a_avg):
    out = metric_with_accuracies(layout, accs).compute()
    # The paper rounds to 2 decimals, from unrounded accuracies: allow one unit in the last place.
    assert 100 * float(out["A_S"]) == pytest.approx(accs[0], abs=1e-9)
    assert 100 * float(out["A_T"]) == pytest.approx(a_t, abs=0.0101)
    assert 100 * float(out["A_avg"]) == pytest.approx(a_avg, abs=0.0101)
    # The average is over the two domains, not over all datasets pooled.
    assert abs(sum(accs) / len(accs) - a_avg) > 0.3


def test_accuracy_counts_and_batches_of_names():
    m = EvalMetrics("geo3k", ["mathvista", "mathverse"])
    m.update(torch.tensor([1, 0, 1, 1]), ["geo3k", "geo3k", "mathvista", "geo3k"])
    m.update(torch.tensor([True, False]), "mathverse")
    m.update(torch.tensor([0.0]), torch.tensor([1]))  # by dataset index
    out = m.compute()
    assert float(out["acc/geo3k"]) == pytest.approx(2 / 3)
    assert float(out["acc/mathvista"]) == pytest.approx(1 / 2)
    assert float(out["acc/mathverse"]) == pytest.approx(1 / 2)
    assert float(out["A_T"]) == pytest.approx(1 / 2)
    assert float(out["A_avg"]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    block = m.to_block()
    assert block["n"] == {"geo3k": 3, "mathvista": 2, "mathverse": 2}
    assert block["in_domain"] == "geo3k" and block["out_of_domain"] == ["mathvista", "mathverse"]
    assert block["A_S"] == pytest.approx(2 / 3)
    assert json.loads(json.dumps(block)) == block
    m.reset()
    assert float(m.total.sum()) == 0


def test_unevaluated_dataset_is_null_not_zero():
    m = EvalMetrics("emoset", ["webemo", "emotion6"])
    m.update(torch.tensor([1.0, 1.0]), "emoset")
    m.update(torch.tensor([0.0]), "webemo")
    out = m.compute()
    assert math.isnan(float(out["acc/emotion6"])) and math.isnan(float(out["A_T"]))
    block = m.to_block()
    assert block["datasets"]["emotion6"] is None and block["A_T"] is None
    assert block["A_S"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="also listed as out-of-domain"):
        EvalMetrics("geo3k", ["geo3k"])
    m = DatasetAccuracy(["a", "b"])
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['c'\]"):
        m.update(torch.tensor([1.0]), "c")
    with pytest.raises(ValueError, match="2 results but 1 dataset labels"):
        m.update(torch.tensor([1.0, 0.0]), ["a"])
    with pytest.raises(ValueError, match="out of range"):
        m.update(torch.tensor([1.0]), torch.tensor([2]))


# ------------------------------------------------------------------ distributed sync (gloo)
def _samples():
    """A fixed evaluation set: 11 (score, dataset name) pairs across 3 datasets."""
    labels = ["geo3k", "mathvista", "mathverse", "geo3k", "geo3k", "mathvista"] * 2
    scores = [1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1]
    return torch.tensor(scores[:11], dtype=torch.float64), labels[:11]


def _rank_main(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    scores, labels = _samples()
    m = EvalMetrics("geo3k", ["mathvista", "mathverse"])
    idx = list(range(rank, len(labels), world))  # each rank gets different samples
    m.update(scores[idx], [labels[i] for i in idx])
    local_total = float(m.total.sum())
    computed = {k: float(v) for k, v in m.compute().items()}  # syncs states across ranks
    block = m.to_block()  # syncs too
    assert float(m.total.sum()) == local_total  # local states are restored after each sync
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"block": block, "computed": computed, "local_total": local_total}, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_sync_equals_single_process(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    scores, labels = _samples()
    single = EvalMetrics("geo3k", ["mathvista", "mathverse"])
    single.update(scores, labels)
    expected = single.to_block()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["local_total"] for r in results] == [6.0, 5.0]  # really split
    assert 0 < expected["A_S"] < 1 and 0 < expected["A_T"] < 1  # a non-trivial check
    expected_computed = {k: float(v) for k, v in single.compute().items()}
    for r in results:
        assert r["computed"] == pytest.approx(expected_computed, abs=1e-12)
        got = r["block"]
        assert got["n"] == expected["n"] and got["out_of_domain"] == expected["out_of_domain"]
        assert got["datasets"] == pytest.approx(expected["datasets"], abs=1e-12)
        for key in ("A_S", "A_T", "A_avg"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12)


# ------------------------------------------------------------------ training helpers
def test_reward_and_response_metrics():
    out = reward_metrics(torch.tensor([1.0, 0.1]), torch.tensor([1.0, 1.0]), torch.tensor([1, 0]))
    assert out == pytest.approx(
        {"reward/overall": 0.55, "reward/format": 1.0, "reward/accuracy": 0.5}
    )
    lengths = torch.tensor([3, 16, 9, 16])
    out = response_metrics(lengths, torch.tensor([False, True, False, False]), 16)
    assert out == pytest.approx(
        {
            "response_length/mean": 11.0,
            "response_length/max": 16.0,
            "response_length/min": 3.0,
            "response_length/clip_ratio": 0.25,  # `truncated` wins over length == limit
        }
    )
    assert response_metrics(lengths, max_new_tokens=16)["response_length/clip_ratio"] == 0.5
    with pytest.raises(ValueError, match="truncated"):
        response_metrics(lengths)


def test_advantage_metrics_on_paper_groups():
    # groups: [0.9, 1, 1, 1] (N=3), [0, 0.1, 0.1, 0.1] (N=0), [1, 1, 1, 1] (N=4), [0.1, 0.1, 1, 1]
    r = torch.tensor([0.9, 1, 1, 1, 0, 0.1, 0.1, 0.1, 1, 1, 1, 1, 0.1, 0.1, 1, 1])
    g = torch.arange(4).repeat_interleave(4)
    result = compute_advantages_with_stats("mapo", r.double(), g, std="population", eps=1e-6)
    out = advantage_metrics(result)
    a = result.advantages
    assert out["advantage/mean"] == pytest.approx(float(a.mean()))
    assert out["advantage/abs_max"] == pytest.approx(float(a.abs().max()))
    assert out["advantage/std"] == pytest.approx(float(a.std(correction=0)))
    # APD of the all-fail group: (0 - 0.075) / 0.075 = -1; of [0.9, 1, 1, 1]: 0.075/0.975.
    assert out["advantage/apd_abs_max"] == pytest.approx(1.0, rel=1e-4)
    p = torch.tensor([0.75, 0.0, 1.0, 0.5])
    assert out["certainty/p_mean"] == pytest.approx(float(p.mean()))
    assert out["certainty/lambda_mean"] == pytest.approx(float((1 - 4 * p * (1 - p)).mean()))
    assert out["certainty/frac_p0"] == 0.25 and out["certainty/frac_p1"] == 0.25
    assert out["certainty/n_success_hist"].tolist() == [1, 0, 1, 1, 1]
    grpo = advantage_metrics(
        compute_advantages_with_stats("grpo", r.double(), g, std="population", eps=1e-6)
    )
    assert "advantage/apd_abs_max" not in grpo
