"""Every policy loss and every rollout-correction mode with LoRA adapters on (model.lora,
docs/lora.md): one real RL step each (rollouts, rewards, advantages, two updates) whose loss is
finite and which changes the adapters and nothing else."""

from __future__ import annotations

import math

import pytest
import torch

from mapo.algorithm.policy_losses import POLICY_LOSSES
from mapo.algorithm.rollout_correction import MODES
from mapo.analysis.records import read_records
from mapo.models.loading import load_policy
from mapo.pipeline.quickrun import compose_config, model_load_args

LOSSES = sorted(POLICY_LOSSES)
# each loss once with no correction, then every correction mode under one of the losses
CASES = [(loss, "none") for loss in LOSSES] + [
    (LOSSES[i % len(LOSSES)], mode) for i, mode in enumerate(m for m in MODES if m != "none")
]


def _loss_overrides(loss: str) -> list[str]:
    """The loss with the aggregation its paper defines it for (dual clip: ppo_clip's only)."""
    agg = POLICY_LOSSES[loss].aggregations[0]
    return [
        f"algorithm.policy_loss={loss}",
        f"algorithm.loss_agg={agg}",
        *([] if POLICY_LOSSES[loss].dual_clip else ["algorithm.dual_clip=null"]),
    ]


def _config(run_dir, loss: str, mode: str):
    return compose_config(
        [
            "experiment=synth_emo_mapo",
            "debug=fast",
            "logger=none",
            "callbacks.progress_bar=null",
            "algorithm.rollout_batch_size=4",
            "algorithm.mini_batch_size=2",
            "algorithm.micro_batch_size=4",
            "algorithm.group_size=4",
            "data.eval_limit=8",
            "eval.before=false",
            "eval.after=false",
            "export_hf=false",
            "steps=1",
            "model.lora.rank=4",
            f"algorithm.rollout_correction.mode={mode}",
            *_loss_overrides(loss),
        ],
        run_dir=run_dir,
    )


def test_cases_cover_every_loss_and_mode():
    assert {loss for loss, _ in CASES} == set(POLICY_LOSSES)
    assert {mode for _, mode in CASES} == set(MODES)


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "mode"), CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_one_rl_step_trains_only_the_adapters(tmp_path, loss, mode):
    from mapo.pipeline.run import train

    _, objs = train(_config(tmp_path / "run", loss, mode))
    module, policy = objs["module"], objs["module"].policy
    m = module.last_metrics
    assert math.isfinite(m["actor/loss"]) and math.isfinite(m["actor/pg_loss"])
    assert read_records(tmp_path / "run").advantage.abs().max() > 0  # cold-started: rewards vary
    assert m["actor/grad_norm"] > 0  # a real update
    assert (mode != "none") == ("rollout_correction/weight_mean" in m)  # the correction ran
    # lora_B starts at zero: every adapter layer moved away from it
    b = [p for n, p in policy.named_parameters() if ".lora_B." in n]
    assert b and all(p.detach().abs().sum() > 0 for p in b)
    # every base weight is still the model folder's, exactly
    base = load_policy(objs["model_path"], **model_load_args()).state_dict()
    frozen = {
        n.replace(".base_layer", ""): t for n, t in policy.state_dict().items() if ".lora_" not in n
    }
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[n], base[n]) for n in base)
