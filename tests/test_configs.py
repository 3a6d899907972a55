"""Every experiment composes and validates without loading a model or touching data."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from mapo.algorithm.config import ConfigError
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.validate import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(
    p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_")
)


def compose_cfg(overrides=(), tmp_path=None):
    return compose_config(overrides, run_dir=tmp_path)


def test_there_are_paper_and_cpu_experiments():
    for name in (
        "emoset_mapo",
        "emoset_grpo",
        "emoset_dapo",
        "geo3k_mapo",
        "geo3k_grpo",
        "geo3k_dapo",
        "emoset_apd",
        "emoset_mapo_rand",
        "geo3k_apd",
        "geo3k_mapo_rand",
        "emoset_mapo_g8",
        "synth_emo_mapo",
        "synth_emo_grpo",
        "synth_emo_dapo",
        "synth_math_mapo",
    ):
        assert name in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    cfg = compose_cfg([f"experiment={name}"], tmp_path)
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]  # hydra's own sweep keys are only filled in by a real launch
    OmegaConf.to_container(job, resolve=True)  # every interpolation of the job's config resolves
    assert cfg.experiment_name == name
    if name.startswith("synth"):
        settings = validate(cfg)  # synthetic: nothing external is needed
        assert settings.algo.group_size >= 2
    else:
        with pytest.raises(FileNotFoundError, match="model.path|data"):
            validate(cfg)  # no weights or data on this machine: fails fast naming the path


def test_default_is_synth_emo_mapo(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert cfg.experiment_name == "synth_emo_mapo"
    assert (
        cfg.model.name == "tiny"
        and cfg.algorithm.estimator == "mapo"
        and cfg.data.name == "synth_emo"
    )


def test_paper_hyperparameters(tmp_path):
    cfg = compose_cfg(["experiment=emoset_mapo"], tmp_path)
    a = cfg.algorithm
    assert (a.group_size, a.rollout_batch_size, a.mini_batch_size) == (12, 512, 128)
    assert a.kl_coef == 0.01 and a.kl_estimator == "k3" and a.loss_agg == "token-mean"
    assert cfg.optim.lr == 1e-6 and cfg.rollout.temperature == 1.0 and cfg.rollout.top_p == 0.99
    assert cfg.rollout.eval.temperature == 0.5 and cfg.rollout.eval.top_p == 0.95
    assert cfg.rollout.eval.max_new_tokens == 2048 and cfg.steps == 60
    assert compose_cfg(["experiment=geo3k_mapo"], tmp_path).steps == 80
    d = compose_cfg(["experiment=emoset_dapo"], tmp_path).algorithm
    assert d.clip_high == 0.28 and d.kl_coef == 0 and d.filter_groups and d.estimator == "grpo"
    assert compose_cfg(["experiment=emoset_mapo_g8"], tmp_path).algorithm.group_size == 8


def test_missing_model_path_names_it(tmp_path):
    cfg = compose_cfg(["experiment=emoset_mapo", "model.path=/nowhere/Qwen"], tmp_path)
    with pytest.raises(FileNotFoundError, match="(?s)/nowhere/Qwen.*model.path="):
        validate(cfg)


def test_missing_data_names_prepare_command(tmp_path):
    model = tmp_path / "model"  # passes the model-folder check (config.json + weights)
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (model / "model.safetensors").write_bytes(b"")
    cfg = compose_cfg(
        ["experiment=emoset_mapo", f"model.path={model}", "data.root=/nowhere"], tmp_path
    )
    with pytest.raises(
        FileNotFoundError, match="(?s)/nowhere/emoset/train.parquet.*mapo.data.prepare emoset"
    ):
        validate(cfg)


def test_missing_eval_set_names_its_own_prepare_command(tmp_path):
    for split in ("train", "test"):  # geo3k is there, the MathVision set is not
        (tmp_path / "data" / "geo3k").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "geo3k" / f"{split}.parquet").write_bytes(b"")
    model = tmp_path / "model"  # passes the model-folder check (config.json + weights)
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (model / "model.safetensors").write_bytes(b"")
    overrides = ["experiment=geo3k_mapo", f"model.path={model}", f"data.root={tmp_path}/data"]
    with pytest.raises(FileNotFoundError) as info:
        validate(compose_cfg(overrides, tmp_path))
    msg = str(info.value)
    assert "evaluation set 'mathvision'" in msg and "mapo.data.prepare mathvision" in msg
    assert "prepare geo3k" not in msg


@pytest.mark.parametrize(
    "override, msg",
    [
        ("algorithm.group_size=1", "at least 2"),
        ("algorithm.rollout_batch_size=10", "not a multiple"),
        ("algorithm.estimator=nope", "known"),
        ("rollout.engine=sglang", "rollout.engine"),
        ("reward.format_weight=-0.5", "non-negative"),
        ("+algorithm.typo=1", r"unknown config key\(s\): algorithm.typo"),
    ],
)
def test_bad_configs_fail_before_any_model_loads(override, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg):
        validate(compose_cfg([override], tmp_path))


def test_the_yaml_instantiates_the_settings(tmp_path):
    """Each config group file builds its typed settings, key for key: the algorithm blocks of
    every conf/algorithm/*.yaml, optim, and the sampling the default run derives from them
    (the code holds no defaults of its own; conf/ is their one home)."""
    from mapo.algorithm.loss_config import LossConfig
    from mapo.pipeline.quickrun import algorithm_config, optim_config
    from mapo.types import SamplingConfig

    for path in sorted((CONF / "algorithm").glob("*.yaml")):
        algo = algorithm_config(path.stem)
        raw = OmegaConf.load(path)
        for key in raw:
            if key != "defaults" and key != "rollout_correction":
                assert getattr(algo, key) == raw[key], (path.name, key)
    assert optim_config().lr == OmegaConf.load(CONF / "optim/adamw.yaml").lr
    cfg = compose_cfg([], tmp_path)
    settings = validate(cfg)
    a, r = cfg.algorithm, cfg.rollout
    assert settings.algo.loss_config() == LossConfig(
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        dual_clip=a.dual_clip,
        kl_coef=a.kl_coef,
        kl_estimator=a.kl_estimator,
        loss_agg=a.loss_agg,
        policy_loss=a.policy_loss,
        sapo_tau_pos=a.sapo_tau_pos,
        sapo_tau_neg=a.sapo_tau_neg,
    )
    assert settings.sampling == SamplingConfig(
        n=a.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        seed=None,
    )
    assert settings.eval_sampling == SamplingConfig(
        n=1,
        temperature=r.eval.temperature,
        top_p=r.eval.top_p,
        max_new_tokens=r.eval.max_new_tokens,
        seed=cfg.seed,
    )


@pytest.mark.parametrize(
    "model, family",
    [
        ("qwen3_vl_2b", "qwen3_vl"),
        ("qwen3_vl_4b", "qwen3_vl"),
        ("qwen3_vl_8b", "qwen3_vl"),
        ("qwen2_vl_7b", "qwen2_vl"),
        ("qwen2_5_vl_7b", "qwen2_5_vl"),
    ],
)
def test_paper_experiment_on_each_family(model, family, tmp_path):
    """experiment=emoset_mapo model=NAME composes with that model and validates up to the
    data (a folder of the family passes the model checks, no model loads)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "{family}"}}')
    (folder / "model.safetensors").write_bytes(b"")
    cfg = compose_cfg(["experiment=emoset_mapo", f"model={model}"], tmp_path)
    assert cfg.model.name == model and cfg.model.family == family
    assert cfg.algorithm.group_size == 12 and cfg.rollout.engine == "vllm"
    overrides = [
        "experiment=emoset_mapo",
        f"model={model}",
        f"model.path={folder}",
        f"data.root={tmp_path}/data",
    ]
    with pytest.raises(FileNotFoundError, match="data.train"):  # past the model checks
        validate(compose_cfg(overrides, tmp_path))


@pytest.mark.parametrize(
    "overrides, msg",
    [
        (["model.family=llava"], r"model family 'llava' is not supported; supported families"),
        (
            ["experiment=emoset_mapo", "model=qwen3_vl_8b", "model.path=FOLDER"],
            r"model.family=qwen3_vl but .*model_type qwen2_5_vl",
        ),
        (
            ["experiment=emoset_mapo", "model.path=FOLDER", "model.family=null"],
            r"model family 'llava' is not supported",
        ),
    ],
)
def test_unsupported_family_fails_before_any_model_loads(overrides, msg, tmp_path, no_model):
    folder = tmp_path / "model"
    folder.mkdir()
    model_type = "llava" if "model.family=null" in overrides else "qwen2_5_vl"
    (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    (folder / "model.safetensors").write_bytes(b"")
    overrides = [o.replace("FOLDER", str(folder)) for o in overrides]
    with pytest.raises(ConfigError, match=msg):
        validate(compose_cfg(overrides, tmp_path))


def test_the_test_helpers_give_what_a_run_composes(tmp_path):
    """quickrun's helpers hand tests and benchmarks the values a run composes from conf/ (the
    one home of every default), group by group."""
    from mapo.pipeline.quickrun import (
        model_load_args,
        pixel_args,
        reference_load_args,
        reward_args,
        synthetic_args,
    )

    cfg = compose_cfg(["~experiment"], tmp_path)
    assert reward_args() == {k: cfg.reward[k] for k in cfg.reward}  # every scoring setting
    assert model_load_args() == {k: cfg.model[k] for k in model_load_args()}
    assert reference_load_args().items() <= model_load_args().items()
    for data in sorted(p.stem for p in (CONF / "data").glob("*.yaml")):
        d = compose_cfg(["~experiment", f"data={data}"], tmp_path).data
        assert pixel_args(data) == {"min_pixels": d.min_pixels, "max_pixels": d.max_pixels}
        if d.synthetic is not None:
            assert synthetic_args(data) == {k: d.synthetic[k] for k in synthetic_args(data)}


@pytest.mark.parametrize(
    "module, name, params",
    [
        ("mapo.rewards", "score", "format_weight grader timeout_s budget_s"),
        ("mapo.rewards", "score_batch", "format_weight grader timeout_s budget_s"),
        (
            "mapo.models.loading",
            "load_policy",
            "dtype attn_implementation trust_remote_code freeze_vision gradient_checkpointing",
        ),
        ("mapo.models.loading", "load_reference", "dtype attn_implementation trust_remote_code"),
        ("mapo.models.logprobs", "token_logprobs", "temperature share_prompt padding_free"),
        ("mapo.data.synthetic", "write_synthetic", "seed n_train n_test"),
        ("mapo.data.synthetic", "generate", "seed"),
        ("mapo.data.loader", "load_split", "on_bad_row"),
        ("mapo.data.schema", "validate_rows", "on_bad_row"),
        ("mapo.data.prompts", "to_prompt", "min_pixels max_pixels"),
        ("mapo.models.coldstart", "coldstart", "min_pixels max_pixels gold_labels steps lr"),
        ("mapo.models.coldstart", "coldstarted_model_path", "min_pixels max_pixels gold_labels"),
    ],
)
def test_config_values_have_no_library_default(module, name, params):
    """A value conf/ holds is the caller's to pass: a library default would restate the YAML
    or, worse, contradict it."""
    import importlib
    import inspect

    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for param in params.split():
        assert parameters[param].default is inspect.Parameter.empty, (name, param)
