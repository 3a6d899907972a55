"""The real pipeline (in process, tiny model, 1-2 steps) under failure: a non-finite loss, bad
and over-long training rows, a hostile checkpoint. Uses the project's .cache."""

import copy
import json
import os
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from mapo.analysis.records import read_records
from mapo.data.schema import rows_to_table
from mapo.data.synthetic import generate
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.run import train
from mapo.trainer.checkpointing import CheckpointLoadError
from mapo.trainer.module import MAPOModule

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads")]

SMALL = [
    "experiment=synth_emo_mapo",
    "debug=fast",
    "logger=none",
    "callbacks.progress_bar=null",
    "algorithm.rollout_batch_size=4",
    "algorithm.mini_batch_size=4",
    "algorithm.micro_batch_size=4",  # 4 micro-batches: a failure can come after a backward
    "algorithm.group_size=4",
    "model.coldstart.steps=20",
    "data.eval_limit=2",
    "eval.before=false",
    "eval.after=false",
    "export_hf=false",
]


def _cfg(run_dir, *extra):
    return compose_config([*SMALL, *extra], run_dir=run_dir)


def _poison_step(monkeypatch, step_number: int, poison) -> dict:
    """Run `poison(module, adv) -> adv` at the start of RL step `step_number`'s update, after taking
    a snapshot of the weights and the optimizer state."""
    seen: dict = {}
    update = MAPOModule._update

    def patched(self, step):
        if self.rl_step == step_number:
            seen["module"] = self
            seen["weights"] = {k: v.clone() for k, v in self.policy.state_dict().items()}
            seen["optim"] = copy.deepcopy(self.optimizers().optimizer.state_dict())
            step = replace(step, advantages=poison(self, step.advantages.clone()))
        return update(self, step)

    monkeypatch.setattr(MAPOModule, "_update", patched)
    return seen


def _assert_unchanged(seen: dict) -> None:
    module = seen["module"]
    for k, v in module.policy.state_dict().items():
        assert torch.equal(v, seen["weights"][k]), f"{k} changed in the failed step"
    after = module.optimizers().optimizer.state_dict()["state"]
    before = seen["optim"]["state"]
    assert after.keys() == before.keys()
    for i in before:
        for name, value in before[i].items():
            assert torch.equal(torch.as_tensor(after[i][name]), torch.as_tensor(value)), name


def _nan_advantage(module, adv):
    adv[-1] = float("nan")  # one rollout; shuffling puts it in some micro-batch
    return adv


def test_a_nonfinite_loss_stops_the_step_before_any_weight_changes(tmp_path, monkeypatch):
    seen = _poison_step(monkeypatch, step_number=1, poison=_nan_advantage)
    with pytest.raises(
        FloatingPointError, match="non-finite loss .* RL step 1; the update was not"
    ):
        train(_cfg(tmp_path / "run", "steps=2"))
    _assert_unchanged(seen)
    # the checkpoint on disk is the last good step's, and it is finite
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def _inf_gradient(module, adv):
    param = next(p for p in module.policy.parameters() if p.requires_grad)
    param.register_hook(lambda g: torch.full_like(g, float("inf")))  # finite loss, inf grad
    return adv


def test_a_nonfinite_gradient_stops_the_step_before_any_weight_changes(tmp_path, monkeypatch):
    seen = _poison_step(monkeypatch, step_number=1, poison=_inf_gradient)
    with pytest.raises(FloatingPointError):
        train(_cfg(tmp_path / "run", "steps=2"))
    _assert_unchanged(seen)


def _training_parquet(path, n_missing_image=2, n_unknown_label=1, n_long=3):
    rows = generate("synth_emo", "train", 24, seed=0)
    bad = {r["id"] for r in rows[: n_missing_image + n_unknown_label]}
    for r in rows[:n_missing_image]:
        r["images"] = []
    for r in rows[n_missing_image : n_missing_image + n_unknown_label]:
        r["answer"] = "boredom"
    long_rows = rows[-n_long:]
    for r in long_rows:
        r["problem"] = "Look closely. " * 2000  # ~6000 tokens
    pq.write_table(rows_to_table(rows), path)
    return bad, {r["id"] for r in long_rows}


def test_bad_rows_are_skipped_and_long_prompts_dropped_and_counted(tmp_path):
    bad, long_ids = _training_parquet(tmp_path / "train.parquet")
    eval_rows = generate("synth_emo", "test", 8, seed=1)
    eval_rows[1]["problem"] = "Look closely. " * 2000  # dropped from the eval set, counted
    pq.write_table(rows_to_table(eval_rows), tmp_path / "ood.parquet")
    cfg = _cfg(
        tmp_path / "run",
        f"data.train={tmp_path / 'train.parquet'}",
        f"data.out_of_domain.synth_webemo={tmp_path / 'ood.parquet'}",
        "data.on_bad_row=skip",
        "data.max_prompt_tokens=256",
        "model.coldstart.enabled=false",
        "eval.after=true",  # metrics.json (with the counts) is written by the evaluation
        "steps=1",
    )
    _, objs = train(cfg)
    config = json.loads((tmp_path / "run/metrics.json").read_text())["config"]
    assert config["skipped_rows"]["train"] == len(bad)
    assert config["filtered_long_prompts"]["train"] == len(long_ids)
    assert config["filtered_long_prompts"]["synth_webemo"] == 1  # of data.eval_limit=2 rows
    assert config["filtered_long_prompts"]["synth_emotion6"] == 0
    kept = {r["id"] for r in objs["module"].stream.rows}
    assert len(kept) == 24 - len(bad) - len(long_ids) and not kept & (bad | long_ids)
    used = set(read_records(tmp_path / "run").prompt_id)
    assert used and used <= kept


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_is_weights_only_and_refuses_a_pickled_object(tmp_path):
    run = tmp_path / "run"
    fast = ("model.coldstart.enabled=false",)
    train(_cfg(run, *fast, "steps=1"))
    last = run / "checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # what we write loads weights-only
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({**ckpt, "callbacks_extra": Payload(marker)}, evil)
    with pytest.raises(CheckpointLoadError, match="could run code"):
        train(_cfg(run, *fast, "steps=2", f"ckpt_path={evil}"))
    assert not marker.exists()
    _, objs = train(_cfg(run, *fast, "steps=2", "ckpt_path=last"))  # the real one resumes
    assert objs["trainer"].global_step == 2
    assert sorted(read_records(run).step.unique()) == [0, 1]


def test_an_eval_set_with_only_overlong_prompts_fails_clearly(tiny_processor, make_tiny_prompt):
    from mapo.trainer.evaluation import EvalSets

    short, long = make_tiny_prompt("Which emotion?"), make_tiny_prompt("Look closely. " * 500)
    sets, dropped = EvalSets.build(
        "a", {"a": [short, long], "b": [short]}, lambda p: p, tiny_processor, 256
    )
    assert sets.prompts == {"a": [short], "b": [short]} and dropped == {"a": 1, "b": 0}
    with pytest.raises(ValueError, match="eval set b: every prompt is longer than data.max_"):
        EvalSets.build("a", {"a": [short], "b": [long]}, lambda p: p, tiny_processor, 256)
