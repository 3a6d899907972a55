"""Bucketed weight streaming (ZeRO-3 gathers a bucket at a time), block checksums, and the
environment a colocated vLLM engine gets (cores, local rank). No vLLM needed."""

from __future__ import annotations

import pytest
import torch

from mapo.rollout.vllm_env import cpu_cores_for, local_rank_of
from mapo.rollout.weight_sync import (
    block_checksums,
    block_key,
    iter_weights,
    plan_buckets,
    weight_buckets,
)


def _named(*sizes):
    return [(f"t{i}", torch.zeros(n)) for i, n in enumerate(sizes)]  # float32: 4 bytes each


def test_plan_buckets_caps_full_bytes_and_keeps_order():
    entries = _named(10, 10, 30, 5, 5)  # 40, 40, 120, 20, 20 bytes
    buckets = plan_buckets(entries, 80)
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert plan_buckets(entries, None) == [entries]  # one bucket: the whole model
    assert [n for b in plan_buckets(entries, 1) for n, _ in b] == [n for n, _ in entries]
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(entries, 0)


def test_plan_buckets_counts_a_zero3_shard_at_its_full_size():
    shard = torch.zeros(2)
    shard.ds_numel = 100  # ZeRO-3: 2 local elements of a 100-element parameter
    buckets = plan_buckets([("a", shard), ("b", torch.zeros(1))], 200)
    assert [[n for n, _ in b] for b in buckets] == [["a"], ["b"]]


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight  # tied, as some checkpoints are


def test_weight_buckets_gathers_each_bucket_alone(monkeypatch):
    """Under ZeRO-3 (parameters carry ds_id) every bucket is gathered on its own, its tensors
    are read inside the gather, and a tied parameter is gathered once."""
    deepspeed = pytest.importorskip("deepspeed")
    model = _Tied()
    for p in model.parameters():
        p.ds_id, p.ds_numel = id(p), p.numel()
    events = []

    class FakeGathered:  # what DeepSpeed would gather, and when
        def __init__(self, params, modifier_rank=None):
            self.names = sorted(
                n for n, p in model.named_parameters() if any(p is q for q in params)
            )
            assert len(params) == len({id(p) for p in params}) and modifier_rank is None

        def __enter__(self):
            events.append(("gather", self.names))

        def __exit__(self, *exc):
            events.append(("release", self.names))

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", FakeGathered)
    bucket_bytes = 6 * 4 * 4  # the embedding: one bucket of its own
    for bucket in weight_buckets(model, bucket_bytes):
        assert events[-1][0] == "gather"  # the bucket is in use while gathered
        events.append(("read", [n for n, _ in bucket]))
    assert events == [
        ("gather", ["embed.weight"]),
        ("read", ["embed.weight"]),
        ("release", ["embed.weight"]),
        ("gather", ["mid.bias", "mid.weight"]),
        ("read", ["mid.weight", "mid.bias"]),
        ("release", ["mid.bias", "mid.weight"]),
        ("gather", ["embed.weight"]),
        ("read", ["head.weight"]),
        ("release", ["embed.weight"]),
    ]


def test_iter_weights_is_the_state_dict_whatever_the_bucket_size():
    model = _Tied()
    want = model.state_dict()
    for bucket_bytes in (None, 1, 64, 10**9):
        got = list(iter_weights(model, bucket_bytes))
        assert [n for n, _ in got] == list(want)
        assert all(torch.equal(t, want[n]) for n, t in got)
    assert len(list(weight_buckets(model, None))) == 1
    assert len(list(weight_buckets(model, 1))) == len(want)


def test_block_key_agrees_for_hf_and_vllm_names():
    pairs = [
        (
            "model.language_model.layers.3.self_attn.q_proj.weight",
            "language_model.model.layers.3.self_attn.qkv_proj.weight",
            "language.3",
        ),
        (
            "model.visual.blocks.0.mlp.gate_proj.weight",
            "visual.blocks.0.mlp.gate_up_proj.weight",
            "visual.0",
        ),
        ("model.visual.merger.mlp.0.weight", "visual.merger.mlp.0.weight", "visual.rest"),
        ("lm_head.weight", "language_model.lm_head.weight", "language.rest"),
    ]
    for hf, vllm, key in pairs:
        assert block_key(hf) == block_key(vllm) == key


def test_block_checksums_see_through_fusion_and_padding_but_not_changes():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 4, generator=gen) for n in (4, 2, 2))
    emb = torch.randn(5, 4, generator=gen)
    hf = [
        ("model.layers.0.q_proj.weight", q),
        ("model.layers.0.k_proj.weight", k),
        ("model.layers.0.v_proj.weight", v),
        ("model.embed.weight", emb),
        ("lm_head.weight", emb),
    ]  # lm_head is tied to the embedding: counted once
    fused = [
        ("layers.0.qkv_proj.weight", torch.cat([q, k, v])),
        ("embed.weight", torch.cat([emb, torch.zeros(3, 4)])),
    ]  # the fused embedding is padded to the vocab size
    a, b = block_checksums(hf), block_checksums(fused)
    assert a.keys() == b.keys() == {"language.0", "language.rest"}
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12)
    q2 = q.clone()
    q2[0, 0] += 1e-4
    changed = block_checksums([(n, q2 if t is q else t) for n, t in hf])
    assert changed["language.0"][0] != pytest.approx(a["language.0"][0], rel=1e-9, abs=0)
    assert changed["language.rest"] == a["language.rest"]


def test_cpu_cores_are_split_between_local_ranks(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    shares = [cpu_cores_for(r, 2) for r in range(2)]
    assert shares == [[0, 1, 2], [3, 4]]
    assert cpu_cores_for(0, 1) == [0, 1, 2, 3, 4]
    assert cpu_cores_for(5, 8) == [0, 1, 2, 3, 4]  # fewer cores than ranks: share them all


def test_local_rank_comes_from_the_launcher(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_rank_of(9) == 9  # one CPU machine: the global rank
    monkeypatch.setenv("SLURM_LOCALID", "1")  # srun: rank 9 of 16 is the second on its node
    assert local_rank_of(9) == 1
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun / Lightning
    assert local_rank_of(9) == 3
