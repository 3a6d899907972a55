"""Token-budget micro-batches (algorithm.max_tokens_per_micro_batch): the plan, and the RL
module's update with it equal to one big micro-batch, plain and under DeepSpeed (ZeRO-2/3,
one and two processes), for every loss aggregation; ranks run the same number of forwards.

The module checks run in subprocesses (DeepSpeed's process group outlives a test); this file
is also their worker: ``python tests/test_token_budget.py --devices N --out F --configs a,b``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapo.models.micro_batching import computed_tokens, plan_micro_batches, row_lengths
from mapo.pipeline.quickrun import model_load_args

ROOT = Path(__file__).resolve().parents[1]
GROUP, PROMPTS = 4, 3
# completion lengths [rank][row]: long-tailed and different on each rank
LENGTHS = (
    [30, 40, 7, 32, 22, 25, 29, 5, 31, 24, 34, 28],
    [6, 2, 3, 1, 18, 4, 2, 7, 3, 5, 2, 1],
)
# tokens per micro-batch: several micro-batches, a different count on each rank (shared
# prompts count once, so that mode gets a smaller budget to still split)
BUDGET = {"budget": 260, "budget_packed": 260, "budget_packed_shared": 110}
LR = 1e-3
MODES = ("big", "budget", "budget_packed", "budget_packed_shared")


# ---------------------------------------------------------------- the plan (no model)


def _lognormal(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n, generator=gen) * 0.8 + 5.3).exp().round().clamp(1, 1024)
    return lengths.long()


@pytest.mark.parametrize("packed,share", [(False, False), (True, False), (True, True)])
def test_plan_covers_every_row_once_within_budget(packed, share):
    n, budget = 96, 4096
    completion = _lognormal(n)
    prompt = torch.randint(100, 400, (n // 8,), generator=torch.Generator().manual_seed(1))
    index = torch.arange(n) // 8
    prompt = prompt[index]
    plan = plan_micro_batches(
        prompt, completion, index, budget, padding_free=packed, share_prompt=share
    )
    rows = torch.cat(plan).sort().values
    assert rows.tolist() == list(range(n))
    for b in plan:
        tokens = computed_tokens(
            prompt[b], completion[b], index[b], padding_free=packed, share_prompt=share
        )
        assert 0 < tokens <= budget


def test_sorted_budget_wastes_less_than_fixed_micro_batches():
    n = 128
    completion, index = _lognormal(n, seed=2), torch.arange(n) // 8
    prompt = torch.full((n,), 200)
    fixed = sum(
        computed_tokens(prompt[b], completion[b], index[b], padding_free=False, share_prompt=False)
        for b in torch.arange(n).split(8)
    )
    plan = plan_micro_batches(
        prompt, completion, index, 8 * 1224, padding_free=False, share_prompt=False
    )
    budget = sum(
        computed_tokens(prompt[b], completion[b], index[b], padding_free=False, share_prompt=False)
        for b in plan
    )
    useful = int((prompt + completion).sum())
    assert (budget - useful) / budget < 0.5 * (fixed - useful) / fixed


def test_min_count_splits_then_pads_with_empty_micro_batches():
    prompt, completion, index = torch.tensor([5, 5, 5]), torch.tensor([3, 4, 2]), torch.zeros(3)
    index = index.long()
    kw = dict(padding_free=False, share_prompt=False)
    plan = plan_micro_batches(prompt, completion, index, 1000, min_count=2, **kw)
    assert len(plan) == 2 and sorted(torch.cat(plan).tolist()) == [0, 1, 2]
    plan = plan_micro_batches(prompt, completion, index, 1000, min_count=5, **kw)
    assert len(plan) == 5 and sum(b.numel() == 0 for b in plan) == 2
    assert sorted(torch.cat(plan).tolist()) == [0, 1, 2]


def test_a_row_over_the_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch=10 is below one rollout"):
        plan_micro_batches(
            torch.tensor([8]),
            torch.tensor([5]),
            torch.tensor([0]),
            10,
            padding_free=False,
            share_prompt=False,
        )


@torch.no_grad()
@pytest.mark.parametrize("packed", [False, True])
def test_trimmed_micro_batches_scatter_back_to_the_full_logprobs(
    tiny_model_dir, tiny_processor, tiny_prompts, sharpen, packed
):
    """The frozen log-prob phase: each budget micro-batch cut to its own longest row, the
    [n_k, L_k] results scattered back into [N, L], equal the one-batch log-probs."""
    from mapo.models.batching import build_policy_inputs
    from mapo.models.loading import load_policy
    from mapo.models.logprobs import token_logprobs
    from mapo.models.micro_batching import StepLayout
    from mapo.types import Completions

    model = sharpen(load_policy(tiny_model_dir, **model_load_args()).eval())
    lengths = [9, 2, 14, 3, 5, 1, 11, 4]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(30, 300, (k,), generator=gen).tolist() for k in lengths]
    comps = Completions(
        prompt_index=[0, 1, 2, 0, 1, 2, 0, 1], token_ids=ids, text=[""] * 8, truncated=[False] * 8
    )
    pad = tiny_processor.tokenizer.pad_token_id
    inputs = build_policy_inputs(tiny_processor, tiny_prompts, comps, pad_token_id=pad)
    full = token_logprobs(model, inputs, share_prompt=False, padding_free=False, temperature=1.0)
    layout = StepLayout(
        inputs,
        micro_batch_size=8,
        max_tokens_per_micro_batch=150,
        padding_free=packed,
        share_prompt=True,
    )
    micro_batches = layout.micro_batches(torch.arange(8))
    assert len(micro_batches) > 1 and not any(mb.dummy for mb in micro_batches)
    parts = []
    for mb in micro_batches:
        sub = layout.inputs(mb)
        assert sub.completion_len == max(lengths[i] for i in mb.rows.tolist())
        parts.append(
            token_logprobs(model, sub, share_prompt=True, padding_free=packed, temperature=1.0)
        )
    got = layout.scatter(micro_batches, parts)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert float(full.abs().max()) > 1.0


# ---------------------------------------------------------------- the module (worker)


def _prompts(processor):
    import numpy as np
    from PIL import Image

    from mapo.types import Prompt

    out = []
    for k, (size, question) in enumerate(
        [((56, 56), "Which emotion?"), ((84, 56), "How many dots are there?"), ((56, 28), "Go")]
    ):
        rng = np.random.default_rng(k)
        image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))
        content = [{"type": "image"}, {"type": "text", "text": question}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        out.append(Prompt(uid=str(k), text=text, images=(image,), answer="1", task="emotion"))
    return out


def _module(mode: str, aggregation: str, model_dir: Path):
    from mapo.models.batching import build_policy_inputs
    from mapo.models.loading import load_policy, load_processor
    from mapo.models.micro_batching import StepLayout
    from mapo.pipeline.quickrun import algorithm_config, optim_config
    from mapo.trainer.module import MAPOModule, StepTensors
    from mapo.types import Completions, SamplingConfig

    processor = load_processor(model_dir)
    torch.manual_seed(0)
    policy = load_policy(model_dir, **model_load_args())
    n = GROUP * PROMPTS
    algo = algorithm_config(
        group_size=GROUP,
        rollout_batch_size=PROMPTS,
        mini_batch_size=PROMPTS,
        micro_batch_size=n,
        shuffle=False,
        kl_coef=0.0,
        loss_agg=aggregation,
        max_tokens_per_micro_batch=BUDGET.get(mode),
    )

    class Probe(MAPOModule):
        def configure_optimizers(self):
            # eps 0.1 >> |grad|: the step is ~ lr * grad / eps, so the parameters after it
            # show the gradient's scale and direction (Adam's usual first step is ~ lr * sign)
            opt = torch.optim.AdamW(self.policy.parameters(), lr=LR, eps=0.1, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def training_step(self, batch, batch_idx):
            rank = self.global_rank
            gen = torch.Generator().manual_seed(rank)
            ids = [torch.randint(20, 400, (k,), generator=gen).tolist() for k in LENGTHS[rank]]
            comps = Completions(
                prompt_index=[i // GROUP for i in range(n)],
                token_ids=ids,
                text=[""] * n,
                truncated=[False] * n,
            )
            inputs = build_policy_inputs(
                self.processor, _prompts(self.processor), comps, pad_token_id=self.pad_token_id
            )
            adv = torch.randn(n, generator=gen)
            if algo.max_tokens_per_micro_batch is not None:  # this rank's plan before agreeing
                prompt, completion = row_lengths(inputs)
                local = plan_micro_batches(
                    prompt,
                    completion,
                    inputs.prompt_index,
                    algo.max_tokens_per_micro_batch,
                    padding_free=self.padding_free,
                    share_prompt=self.share_prompt,
                )
                self.local_count = len(local)
            counter = []
            hook = self.policy.model.register_forward_pre_hook(lambda *_: counter.append(1))
            layout = StepLayout(
                inputs.to(self.device),
                micro_batch_size=algo.micro_batch_size,
                max_tokens_per_micro_batch=algo.max_tokens_per_micro_batch,
                padding_free=self.padding_free,
                share_prompt=self.share_prompt,
            )
            mask = layout.batch.completion_mask
            self.result, _ = self._update(StepTensors(layout, adv, None, None, None, mask))
            hook.remove()
            self.result["forwards"] = len(counter)
            self.result["local_count"] = getattr(self, "local_count", 1)

    return Probe(
        policy,
        processor,
        algo,
        optim_config(lr=LR, grad_clip=None),
        log_entropy=False,
        sampling=SamplingConfig(n=algo.group_size, temperature=1.0, top_p=1.0, max_new_tokens=16),
        share_prompt=mode.endswith("shared"),
        padding_free="packed" in mode,
    )


def _params(module):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = module.trainer.strategy
    params = list(module.policy.parameters())
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().flatten() for p in params]).tolist()
    return torch.cat([p.detach().flatten() for p in params]).tolist()


def run_worker(devices: int, configs: list[str], model_dir: Path) -> dict:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    torch.set_num_threads(1)
    results = {}
    for config in configs:  # strategy:aggregation:mode
        strategy_name, aggregation, mode = config.split(":")
        strategy = (
            CPUDeepSpeedStrategy(stage=int(strategy_name[-1]), process_group_backend="gloo")
            if strategy_name.startswith("zero")
            else "auto"
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = _module(mode, aggregation, model_dir)
        initial = torch.cat([p.detach().flatten() for p in module.policy.parameters()]).tolist()
        trainer.fit(module, train_dataloaders=DataLoader([0]))
        results[config] = {**module.result, "params": _params(module), "initial": initial}
    return results


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--configs", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = run_worker(args.devices, args.configs.split(","), Path(args.model_dir))
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    Path(f"{args.out}.rank{rank}").write_text(json.dumps(results))


def _run(tmp_path, model_dir, devices, configs) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    out = tmp_path / "out.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--devices",
        str(devices),
        "--configs",
        ",".join(configs),
        "--model-dir",
        str(model_dir),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(devices)]


def _assert_same_update(got: dict, ref: dict) -> None:
    """Same pre-clip gradient norm and same parameters after the step (~ lr * grad / 0.1)."""
    assert abs(got["grad_norm"] - ref["grad_norm"]) <= 1e-5 * ref["grad_norm"]
    moved = (torch.tensor(ref["params"]) - torch.tensor(ref["initial"])).abs().max()
    diff = (torch.tensor(got["params"]) - torch.tensor(ref["params"])).abs().max()
    assert float(diff) < 1e-4 * float(moved), (float(diff), float(moved))


AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


@pytest.mark.slow
def test_budget_update_equals_one_big_batch_plain(tmp_path, tiny_model_dir):
    configs = [f"plain:{a}:{m}" for a in AGGREGATIONS for m in MODES]
    (res,) = _run(tmp_path, tiny_model_dir, 1, configs)
    for a in AGGREGATIONS:
        ref = res[f"plain:{a}:big"]
        assert ref["forwards"] == 1
        for m in MODES[1:]:
            got = res[f"plain:{a}:{m}"]
            assert got["forwards"] > 1, m  # the budget really split the mini-batch
            _assert_same_update(got, ref)


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_budget_update_equals_one_big_batch_under_deepspeed_two_ranks(
    tmp_path, tiny_model_dir, stage
):
    aggs = AGGREGATIONS if stage == 3 else ("token-mean",)
    configs = [f"zero{stage}:{a}:{m}" for a in aggs for m in ("big", "budget", "budget_packed")]
    ranks = _run(tmp_path, tiny_model_dir, 2, configs)
    for a in aggs:
        for m in ("budget", "budget_packed"):
            key = f"zero{stage}:{a}:{m}"
            for res in ranks:
                _assert_same_update(res[key], res[f"zero{stage}:{a}:big"])
            counts = [res[key]["forwards"] for res in ranks]
            assert counts[0] == counts[1] > 1, (m, counts)
            local = [res[key]["local_count"] for res in ranks]
            assert local[0] != local[1] and max(local) == counts[0], local  # agreement needed


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "8k"])
def test_a_bad_budget_fails_at_config_time(bad):
    from mapo.algorithm.config import ConfigError
    from mapo.pipeline.quickrun import algorithm_config

    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):
        algorithm_config(max_tokens_per_micro_batch=bad)


@pytest.mark.slow
def test_train_py_runs_with_a_budget_and_packing(tmp_path):
    """The config keys reach the module: a short real run (reference + pi_old + 2 updates)
    with algorithm.max_tokens_per_micro_batch and model.padding_free."""
    from mapo.pipeline.quickrun import compose_config
    from mapo.pipeline.run import train

    cfg = compose_config(
        [
            "experiment=synth_emo_mapo",
            "debug=fast",
            "logger=none",
            "callbacks.progress_bar=null",
            "algorithm.rollout_batch_size=4",
            "algorithm.mini_batch_size=2",
            "algorithm.micro_batch_size=4",
            "algorithm.group_size=4",
            "model.coldstart.steps=20",
            "data.eval_limit=8",
            "steps=2",
            "eval.before=false",
            "eval.after=false",
            "export_hf=false",
            "algorithm.max_tokens_per_micro_batch=400",
            "model.padding_free=true",
        ],
        run_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    module = objs["module"]
    assert module.padding_free and module.algo.max_tokens_per_micro_batch == 400
    m = metrics["train"]
    assert m["actor/grad_norm"] > 0 and "actor/kl_ref" in m


if __name__ == "__main__":
    _worker_main()
