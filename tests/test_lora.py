"""LoRA (model.lora, mapo/models/lora.py): one model object whose adapters-off forward is the
reference, exactly; only the adapters train; config errors before any model loads; a short run
that checkpoints the adapter and its optimizer, resumes under the identity check, and exports
the peft adapter folder and the merged model, both loaded by the HF classes and generating."""

from __future__ import annotations

import json

import pytest
import torch

from mapo.algorithm.config import ConfigError
from mapo.models.batching import build_policy_inputs
from mapo.models.loading import load_policy
from mapo.models.logprobs import token_logprobs
from mapo.models.lora import adapters_disabled, apply_lora, has_lora
from mapo.models.micro_batching import StepLayout
from mapo.pipeline.quickrun import (
    algorithm_config,
    compose_config,
    lora_config,
    model_load_args,
    optim_config,
)
from mapo.pipeline.validate import check_lora_values
from mapo.types import Completions, SamplingConfig

SAMPLING = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8)


def _lora_policy(path, **changes):
    policy = apply_lora(load_policy(path, **model_load_args()), **lora_config(rank=4, **changes))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at 0: give the adapters an effect to switch off
        for name, p in policy.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return policy


def _layout(processor, prompts, special):
    gen = torch.Generator().manual_seed(1)
    allowed = [i for i in range(special["eos"]) if i not in special["suppress"]]
    lengths = [5, 3, 7, 2]
    ids = [
        [allowed[int(j)] for j in torch.randint(len(allowed), (n,), generator=gen)] for n in lengths
    ]
    comps = Completions(
        prompt_index=[0, 0, 1, 1], token_ids=ids, text=[""] * 4, truncated=[False] * 4
    )
    inputs = build_policy_inputs(processor, prompts[:2], comps, pad_token_id=special["pad"])
    return StepLayout(
        inputs,
        micro_batch_size=2,
        max_tokens_per_micro_batch=None,
        padding_free=False,
        share_prompt=True,
    )


def _module(policy, processor, reference=None, **algo):
    from mapo.trainer.module import MAPOModule

    return MAPOModule(
        policy,
        processor,
        algorithm_config("mapo", **algo),
        optim_config(),
        reference=reference,
        sampling=SAMPLING,
        share_prompt=True,
        padding_free=False,
    )


def test_reference_is_the_base_model_with_adapters_off(
    tiny_model_dir, tiny_processor, tiny_prompts, special
):
    policy = _lora_policy(tiny_model_dir)
    module = _module(policy, tiny_processor, kl_coef=0.1)
    models = [m for m in module.modules() if isinstance(m, type(policy))]
    assert models == [policy] and module.reference is None  # one model object
    layout = _layout(tiny_processor, tiny_prompts, special)
    _, ref = module._frozen_logprobs(layout)

    # a separately loaded base model, as the reference
    base = load_policy(tiny_model_dir, **model_load_args())
    _, want = _module(policy, tiny_processor, kl_coef=0.1, reference=base)._frozen_logprobs(layout)
    kw = dict(
        temperature=1.0, suppress_ids=module.suppress_ids, share_prompt=True, padding_free=False
    )
    with torch.no_grad():
        adapted = token_logprobs(policy, layout.batch, **kw)
        base_logp = token_logprobs(base, layout.batch, **kw)
    assert torch.equal(ref, want)
    assert not torch.allclose(adapted, base_logp, atol=1e-3)  # adapters on everywhere else
    assert all(p.requires_grad for n, p in policy.named_parameters() if ".lora_" in n)


def test_only_the_adapters_train(tiny_model_dir, tiny_processor):
    policy = _lora_policy(tiny_model_dir, vision=True)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert any(".visual.merger." in n for n in trainable)  # vision=true: tower and merger too
    module = _module(policy, tiny_processor, kl_coef=0.0)
    opt = module.configure_optimizers()["optimizer"]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in policy.named_parameters() if n in trainable}


def test_decoder_targets_leave_the_vision_tower_alone(tiny_model_dir):
    policy = _lora_policy(tiny_model_dir, vision=False)
    names = [n for n, _ in policy.named_parameters() if ".lora_" in n]
    assert names and not any(".visual." in n for n in names)


@pytest.mark.parametrize(
    "changes, key",
    [
        (dict(rank=-1), "model.lora.rank"),
        (dict(rank=4, alpha=0), "model.lora.alpha"),
        (dict(rank=4, dropout=1.0), "model.lora.dropout"),
        (dict(rank=4, target_modules=[]), "model.lora.target_modules"),
    ],
)
def test_bad_values_are_config_errors(changes, key):
    values = {**lora_config(), **changes}
    with pytest.raises(ConfigError, match=key):
        check_lora_values(
            values["rank"], values["alpha"], values["dropout"], values["target_modules"]
        )


def test_unknown_target_is_a_config_error(tiny_model_dir):
    with pytest.raises(ValueError, match=r"model.lora.target_modules: \['qkv_proj'\]"):
        apply_lora(
            load_policy(tiny_model_dir, **model_load_args()),
            **lora_config(rank=4, target_modules=["qkv_proj"]),
        )


def test_validate_refuses_a_bad_rank_before_any_model_loads(tmp_path, no_model):
    from mapo.pipeline.validate import validate

    cfg = compose_config(["model.lora.rank=-2"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="model.lora.rank=-2"):
        validate(cfg)
    cfg = compose_config(["model.lora.rank=8", "model.lora.lr=0.002"], run_dir=tmp_path)
    assert validate(cfg).optim.lr == 0.002  # the adapters' own learning rate


def _small(run_dir, *extra):
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
            "model.coldstart.steps=20",
            "data.eval_limit=8",
            "eval.before=false",
            "eval.after=false",
            "model.lora.rank=4",
            *extra,
        ],
        run_dir=run_dir,
    )


@pytest.mark.slow
def test_short_run_checkpoints_resumes_and_exports(tmp_path):
    from mapo.pipeline.run import train

    run = tmp_path / "run"
    _, objs = train(_small(run, "steps=2", "export_hf=false"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(".lora_" in k for k in keys)  # the adapter only
    n_adapter = sum(1 for n, p in objs["module"].policy.named_parameters() if p.requires_grad)
    assert len(ckpt["optimizer_states"][0]["state"]) == n_adapter

    with pytest.raises(ConfigError, match="model.lora.rank"):  # the run identity check
        train(_small(run, "steps=3", "ckpt_path=last", "model.lora.rank=8"))
    out = "model.lora.export_merged=true"
    _, objs = train(_small(run, "steps=3", "ckpt_path=last", out))
    policy = objs["module"].policy
    assert objs["module"].rl_step == 3 and has_lora(policy)
    _check_exports(run, policy, objs["model_path"])


def _check_exports(run, policy, base_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    config = json.loads((run / "hf_adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    adapted = PeftModel.from_pretrained(
        load_policy(base_path, **model_load_args()), run / "hf_adapter"
    ).eval()
    merged = AutoModelForImageTextToText.from_pretrained(run / "hf_model").eval()
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        want = policy.eval()(input_ids=ids).logits
        for model in (adapted, merged):
            torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
            out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
            assert out.shape[0] == 1 and out.shape[1] > ids.shape[1]
    with adapters_disabled(policy), torch.no_grad():
        assert not torch.allclose(policy(input_ids=ids).logits, want)


FEATURES = {  # the step's features with the adapters on: each short run must train them
    "budget_packed_checkpointing": [
        "algorithm.max_tokens_per_micro_batch=400",
        "model.padding_free=true",
        "model.gradient_checkpointing=true",
    ],
    "seq_mask_correction_cispo": [
        "algorithm.rollout_correction.mode=seq_mask",
        "algorithm.policy_loss=cispo",
        "algorithm.dual_clip=null",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_step_features_train_the_adapters(tmp_path, name):
    from mapo.pipeline.run import train

    _, objs = train(_small(tmp_path / "run", "steps=1", "export_hf=false", *FEATURES[name]))
    policy = objs["module"].policy
    assert objs["engine"].model is policy  # the HF engine samples with the adapters on
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    assert "actor/grad_norm" in objs["module"].last_metrics  # the update ran
