"""The paper's topology in miniature: 2 ranks (gloo), ZeRO-3, one colocated vLLM engine per rank.

The tiny VLM trains DAPO (dynamic sampling: groups filtered, prompts resampled, short ranks
padded) for 3 steps with bucketed weight sync, evaluates, checkpoints every step; a second run
resumes from the checkpoint after step 2 and redoes step 3. Checked:
- group ids are unique across ranks, and the advantages equal one computation over the union
  of both ranks' rollouts;
- after every sync, each engine holds exactly the policy's weights (per-block checksums read
  back from vLLM against the gathered ZeRO-3 policy) and its greedy output equals the HF policy's;
- metrics.json is written once, by rank 0, and holds the whole evaluation set;
- the resumed run reproduces step 3 of the uninterrupted run on both ranks (DeepSpeed saves
  each rank's client state, RNG included, in its own file).

This file is also the worker: ``python tests/test_topology.py <hydra overrides>`` trains with a
``TopologyProbe`` callback (below) that records what each rank saw to ``$TOPO_OUT/rank{r}.json``;
Lightning re-runs the same command for rank 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mapo.pipeline.quickrun import model_load_args

ROOT = Path(__file__).resolve().parents[1]
STEPS, WORLD, PROMPTS, G, EVAL = 3, 2, 4, 4, 8
BUCKET_MB = 0.05  # ~50 KB: the 0.8 M-parameter model goes over in ~40 buckets
ARGS = [
    "experiment=synth_emo_dapo",
    "rollout=vllm",
    "rollout.max_model_len=512",
    "rollout.enforce_eager=true",
    f"rollout.sync_bucket_mb={BUCKET_MB}",
    "trainer=cpu_deepspeed",
    "trainer.strategy.stage=3",
    f"trainer.devices={WORLD}",
    "debug=fast",
    "logger=none",
    "callbacks.progress_bar=null",
    "eval.before=false",
    f"algorithm.rollout_batch_size={PROMPTS}",
    f"algorithm.mini_batch_size={PROMPTS}",
    "algorithm.micro_batch_size=16",
    f"algorithm.group_size={G}",
    "algorithm.filter_max_tries=3",
    # cold-started: format ~1, accuracy ~1/8, so overall is 0.1 (wrong) or 1 (right); groups
    # with no right answer (mean 0.1) are dropped and resampled, the others kept
    "algorithm.filter_low=0.1",
    f"data.eval_limit={EVAL}",
    "export_hf=false",
    "records_text=true",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.model_checkpoint.save_top_k=-1",
    "+callbacks.probe._target_=test_topology.TopologyProbe",
]

# ---------------------------------------------------------------- worker side


def _probe_prompts(processor):
    """Two image prompts and a text-only one, for the greedy comparison after each sync."""
    import numpy as np
    from PIL import Image

    from mapo.types import Prompt

    out = []
    for i, (question, sizes) in enumerate(
        [
            ("Which emotion does this image evoke?", [(56, 56)]),
            ("How many dots?", [(84, 28)]),
            ("Name an emotion.", []),
        ]
    ):
        rng = np.random.default_rng(i)
        images = tuple(
            Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes
        )
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        out.append(Prompt(uid=str(i), text=text, images=images, answer="", task="emotion"))
    return out


def _checksum_gap(a: dict, b: dict) -> float:
    """Largest relative difference between two block_checksums results (inf if keys differ)."""
    if set(a) != set(b):
        return float("inf")
    return max(abs(x - y) / max(1.0, abs(y)) for k in a for x, y in zip(a[k], b[k]))


def _make_probe_class():
    from lightning.pytorch.callbacks import Callback

    class TopologyProbe(Callback):
        """Records, per rank: every sync's checks, every step's DAPO metrics, every
        metrics.json write; dumps them to $TOPO_OUT/rank{r}.json after each event."""

        def __init__(self):
            self.out = Path(os.environ["TOPO_OUT"])
            self.record = {"syncs": [], "steps": [], "writes": []}

        def _dump(self, trainer):
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / f"rank{trainer.global_rank}.json"
            path.write_text(json.dumps(self.record))

        def setup(self, trainer, pl_module, stage):
            from mapo.models.loading import load_policy
            from mapo.rollout.hf import HFEngine
            from mapo.trainer.callbacks import Evaluation, RolloutCallback

            rollout = next(c for c in trainer.callbacks if isinstance(c, RolloutCallback))
            evaluation = next(c for c in trainer.callbacks if isinstance(c, Evaluation))
            engine = rollout.engine
            # plain copy for HF greedy
            reference = load_policy(engine.model_path, **model_load_args()).eval()
            hf = HFEngine(reference, pl_module.processor, share_prefill=False)
            prompts = _probe_prompts(pl_module.processor)
            self.record["bucket_bytes"] = engine.sync_bucket_bytes
            self.record["vllm_cores"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
            sync, write = engine.sync_weights, evaluation._write

            def checked_sync(model):
                sync(model)
                import deepspeed

                from mapo.rollout.weight_sync import block_checksums
                from mapo.types import SamplingConfig

                params = list(model.parameters())
                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                reference.load_state_dict(state)
                greedy = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8)
                ours, theirs = engine.generate(prompts, greedy), hf.generate(prompts, greedy)
                self.record["syncs"].append(
                    {
                        "global_step": trainer.global_step,
                        "sharded": all(p.numel() < p.ds_numel for p in params if p.ds_numel > 1),
                        "checksum_gap": _checksum_gap(
                            engine.weight_checksums(), block_checksums(state.items())
                        ),
                        "greedy_equal": ours.token_ids == theirs.token_ids,
                        "greedy_tokens": sum(map(len, ours.token_ids)),
                    }
                )
                self._dump(trainer)

            def counted_write(tr, tag, block):
                path = evaluation.run_dir / "metrics.json"
                before = path.stat().st_mtime_ns if path.exists() else None
                write(tr, tag, block)
                after = path.stat().st_mtime_ns if path.exists() else None
                self.record["writes"].append({"tag": tag, "changed": before != after})
                self._dump(tr)

            engine.sync_weights, evaluation._write = checked_sync, counted_write

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            m = pl_module.last_metrics
            self.record["steps"].append({k: v for k, v in m.items() if k.startswith("dapo/")})
            self._dump(trainer)

    return TopologyProbe


if importlib.util.find_spec("lightning") is not None:
    TopologyProbe = _make_probe_class()


def _worker_main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
    def main(cfg):
        from mapo.pipeline.run import train

        train(cfg)

    main()


# ---------------------------------------------------------------- the test

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.deepspeed,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed: run `make test-vllm`",
    ),
]


def _train(run_dir: Path, *extra: str) -> tuple[dict[int, dict], float]:
    from conftest import LAUNCHER_VARIABLES  # see there: a world-of-one env stalls rank 0

    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},
        "TOPO_OUT": str(run_dir / "probe"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions")
        ),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), *ARGS, *extra]
    cmd.append(f"hydra.run.dir={run_dir}")
    clock = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - clock
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    probes = {r: json.loads((run_dir / f"probe/rank{r}.json").read_text()) for r in range(WORLD)}
    return probes, seconds


def _rank_records(run_dir: Path, step: int, rank: int):
    import pandas as pd

    from mapo.analysis.records import record_path

    return pd.read_parquet(record_path(run_dir, step, rank))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("topology")
    straight, seconds = _train(root / "straight", f"steps={STEPS}")
    ckpt = root / "straight" / "checkpoints" / f"step{STEPS - 1:06d}.ckpt"
    resumed, resume_seconds = _train(
        root / "resumed", f"steps={STEPS}", f"ckpt_path={ckpt}", "eval.after=false"
    )
    print(f"\ntopology: straight run {seconds:.0f} s, resumed run {resume_seconds:.0f} s")
    return {"root": root, "straight": straight, "resumed": resumed}


def test_group_ids_unique_across_ranks_and_advantages_global(runs):
    import pandas as pd

    from mapo.algorithm.advantages import compute_advantages

    run_dir = runs["root"] / "straight"
    for step in range(STEPS):
        frames = [_rank_records(run_dir, step, r) for r in range(WORLD)]
        ids = [set(f.group_id) for f in frames]
        assert ids[0].isdisjoint(ids[1]), f"step {step}: ranks share group ids"
        for f, own in zip(frames, ids):  # each rank: its share of the groups, G rollouts each
            assert len(own) == PROMPTS // WORLD
            assert (f.groupby("group_id").size() == G).all()
        # each rank samples with noise of its own (same noise gave both ranks the same texts)
        assert frames[0].text.tolist() != frames[1].text.tolist()
        union = pd.concat(frames, ignore_index=True)
        overall = torch.tensor(union.reward_overall.to_numpy())
        gids = torch.tensor(union.group_id.to_numpy())
        # DAPO's settings (conf/algorithm/dapo.yaml <- mapo.yaml): GRPO, unbiased std, eps 1e-6
        want = compute_advantages("grpo", overall, gids, std="unbiased", eps=1e-6)
        got = torch.tensor(union.advantage.to_numpy())
        assert torch.allclose(got, want, atol=1e-6), f"step {step}"
    steps = [s for r in range(WORLD) for s in runs["straight"][r]["steps"]]
    assert len(steps) == WORLD * STEPS
    # DAPO resampled, kept groups unevenly (a full rank skips ahead while the other draws),
    # and padded a short rank; draws (tries) are the same on both ranks at every step.
    pairs = list(zip(runs["straight"][0]["steps"], runs["straight"][1]["steps"]))
    assert max(s["dapo/tries"] for s in steps) > 1
    assert all(a["dapo/tries"] == b["dapo/tries"] for a, b in pairs)
    assert any(a["dapo/generations"] != b["dapo/generations"] for a, b in pairs)
    assert any(s["dapo/padded_groups"] > 0 for s in steps)


def test_every_sync_puts_the_policy_into_both_engines(runs):
    cores = [set(runs["straight"][r]["vllm_cores"].split(",")) for r in range(WORLD)]
    assert cores[0].isdisjoint(cores[1]), cores  # each rank's engine binds its own cores
    for r in range(WORLD):
        probe = runs["straight"][r]
        assert 0 < probe["bucket_bytes"] < 100_000
        syncs = probe["syncs"]
        # one per step (each follows an update) and one before the final evaluation
        assert [s["global_step"] for s in syncs] == list(range(STEPS + 1))
        for s in syncs:
            assert s["sharded"], "the policy was not ZeRO-3 sharded"
            assert s["checksum_gap"] < 1e-9, s
            assert s["greedy_equal"] and s["greedy_tokens"] > 0, s


def test_metrics_json_written_once_by_rank_zero(runs):
    writes = [runs["straight"][r]["writes"] for r in range(WORLD)]
    assert [w["tag"] for w in writes[0]] == ["after"] and writes[0][0]["changed"]
    assert [w["changed"] for w in writes[1]] == [False]  # rank 1 evaluated, wrote nothing
    metrics = json.loads((runs["root"] / "straight" / "metrics.json").read_text())
    totals = metrics["after"]["n"]
    assert sum(totals.values()) == EVAL * len(totals), totals  # both ranks' shards


def test_resume_reproduces_the_next_step_on_both_ranks(runs):
    cols = ["group_id", "prompt_id", "text", "reward_overall", "advantage"]
    step = STEPS - 1
    for r in range(WORLD):
        a = _rank_records(runs["root"] / "straight", step, r)[cols]
        b = _rank_records(runs["root"] / "resumed", step, r)[cols]
        assert a.reset_index(drop=True).equals(b.reset_index(drop=True)), f"rank {r}"
    assert [s["global_step"] for s in runs["resumed"][0]["syncs"]] == [step]


if __name__ == "__main__":
    _worker_main()
