"""Bad configs and bad data fail with a clear message before any model loads; paths and
checkpoints are never run as code; the sources hold no eval/exec/unsafe load of outside data.

`train(cfg)` runs with every model loader replaced by one that fails the test, so each case
proves that the error comes first. Uses the project's .cache (the debug=fast synthetic set)."""

import ast
import inspect
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from mapo.algorithm.config import ConfigError
from mapo.data.schema import BadRowError, SchemaError, rows_to_table
from mapo.data.synthetic import generate
from mapo.pipeline.quickrun import compose_config
from mapo.pipeline.run import train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["debug=fast", "logger=none", "callbacks.progress_bar=null"]


def _train(tmp_path, *overrides):
    return train(compose_config([*FAST, *overrides], run_dir=tmp_path / "run"))


# ---------------------------------------------------------------- configs
BAD_CONFIGS = [
    ("algorithm.group_size=1", ConfigError, "at least 2"),
    ("algorithm.rollout_batch_size=10", ConfigError, "not a multiple of mini_batch_size"),
    ("algorithm.micro_batch_size=5", ConfigError, "micro_batch_size=5 must divide"),
    ("trainer.devices=3", ConfigError, "multiples of the world size 3"),
    ("algorithm.estimator=ppo", ConfigError, "estimator='ppo' is unknown; known"),
    ("algorithm.loss_agg=mean", ConfigError, "algorithm.loss_agg='mean' is unknown; known"),
    ("algorithm.kl_estimator=k4", ConfigError, "algorithm.kl_estimator='k4' is unknown; known"),
    ("algorithm.std=sample", ConfigError, "algorithm.std"),
    ("algorithm.eps=-1e-6", ConfigError, "algorithm.eps=-1e-06 must be >= 0"),
    ("rollout.engine=sglang", ConfigError, "rollout.engine='sglang' is unknown; known"),
    ("rollout.temperature=0", ConfigError, "rollout.temperature=0 must be > 0"),
    ("rollout.top_p=1.5", ConfigError, "rollout.top_p"),
    ("reward.format_weight=-0.1", ConfigError, "non-negative"),  # APD/MAPO need r >= 0
    ("reward.format_weight=1.5", ConfigError, "non-negative"),  # overall = -0.5 acc + 1.5 fmt
    ("reward.grader=sympy", ConfigError, "reward.grader"),
    ("data.task=caption", ConfigError, "data.task='caption' has no reward"),
    ("data.on_bad_row=ignore", ConfigError, "data.on_bad_row"),
    ("data.max_prompt_tokens=0", ConfigError, "data.max_prompt_tokens"),
    ("data.template=nope", FileNotFoundError, "template 'nope' not found"),
    ("optim.grad_clip=0", ConfigError, "optim.grad_clip"),
    ("optim.lr=0", ValueError, "optim.lr"),
    ("model.dtype=fp8", ConfigError, "model.dtype"),
    ("seed=-1", ConfigError, "seed=-1"),
    ("model.path=/nowhere/Qwen2.5-VL-7B", FileNotFoundError, "/nowhere/Qwen2.5-VL-7B"),
    ("ckpt_path=/nowhere/last.ckpt", FileNotFoundError, "ckpt_path=/nowhere/last.ckpt"),
]


@pytest.mark.parametrize("override, error, msg", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_fails_before_any_model_loads(override, error, msg, tmp_path, no_model):
    with pytest.raises(error, match=msg):
        _train(tmp_path, override)


def test_missing_data_path_fails_before_any_model_loads(tmp_path, no_model):
    overrides = ["data.synthetic=null", f"data.train={tmp_path}/nowhere/train.parquet"]
    with pytest.raises(FileNotFoundError, match="(?s)nowhere/train.parquet.*mapo.data.prepare"):
        _train(tmp_path, *overrides)


# ---------------------------------------------------------------- data
def _rows(n: int = 8) -> list[dict]:
    return generate("synth_emo", "train", n, seed=0)


def _spoil(kind: str, row: dict) -> None:
    if kind == "missing_image":
        row["images"] = []
    elif kind == "corrupt_image":
        row["images"] = [{"bytes": row["images"][0]["bytes"][:40], "path": None}]
    elif kind == "missing_answer":
        row["answer"] = None
    elif kind == "empty_problem":
        row["problem"] = "   "
    elif kind == "unknown_label":
        row["answer"] = "boredom"
    else:
        raise ValueError(kind)


BAD_ROWS = ["missing_image", "corrupt_image", "missing_answer", "empty_problem", "unknown_label"]


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_bad_training_row_names_file_row_and_fix(kind, tmp_path, no_model):
    rows = _rows()
    _spoil(kind, rows[5])
    path = tmp_path / "bad.parquet"
    pq.write_table(rows_to_table(rows), path)
    with pytest.raises(BadRowError, match=rf"{path}: row 5 .*Fix: .*data.on_bad_row=skip"):
        _train(tmp_path, f"data.train={path}")


def test_wrong_column_names_are_named_with_the_rename(tmp_path, no_model):
    table = rows_to_table(_rows())
    path = tmp_path / "renamed.parquet"
    pq.write_table(
        table.rename_columns(["question" if c == "problem" else c for c in table.column_names]),
        path,
    )
    with pytest.raises(SchemaError, match=rf"{path}.*problem.*question"):
        _train(tmp_path, f"data.train={path}")


def test_a_corrupt_parquet_file_is_named(tmp_path, no_model):
    path = tmp_path / "torn.parquet"
    pq.write_table(rows_to_table(_rows()), path)
    path.write_bytes(path.read_bytes()[:-200])  # a copy that was cut short
    with pytest.raises(Exception, match=str(path)):
        _train(tmp_path, f"data.train={path}")


# ---------------------------------------------------------------- security
CODE = "__import__('os').system('touch PWNED')"


@pytest.mark.parametrize("key", ["data.train", "model.path"])
def test_a_path_that_looks_like_code_is_a_missing_path(key, tmp_path, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["data.synthetic=null"] if key == "data.train" else []
    with pytest.raises(FileNotFoundError, match=r"__import__\('os'\)"):
        _train(tmp_path, *extra, f'{key}="{CODE}"')
    assert not (tmp_path / "PWNED").exists()


def test_no_resolver_evaluates_code():
    import mapo.pipeline.run  # noqa: F401  (registers whatever the project registers)

    for name in ("eval", "python", "exec", "py"):
        assert not OmegaConf.has_resolver(name), name


def test_trust_remote_code_is_off_unless_asked(tmp_path):
    """Every model config says false, no experiment or other group turns it on, the default run
    composes with false, and the loaders take it from the config (no default of their own)."""
    import yaml

    from mapo.models.loading import load_policy, load_reference

    for path in sorted((ROOT / "conf/model").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["trust_remote_code"] is False, path
    others = [p for p in (ROOT / "conf").rglob("*.yaml") if p.parent.name != "model"]
    assert not [p for p in others if "trust_remote_code" in p.read_text()]
    assert compose_config([], run_dir=tmp_path).model.trust_remote_code is False
    for fn in (load_policy, load_reference):
        parameter = inspect.signature(fn).parameters["trust_remote_code"]
        assert parameter.default is inspect.Parameter.empty


def _calls(tree: ast.AST):
    """(call, owner, name): owner None for a bare name (`eval(x)`), the module or object name
    for `pickle.loads(x)`, "" for calls on longer expressions (`self.model.eval()`)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            yield node, None, f.id
        elif isinstance(f, ast.Attribute):
            yield node, f.value.id if isinstance(f.value, ast.Name) else "", f.attr


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value
    return None


def _unsafe(node: ast.Call, owner: str, name: str) -> str | None:
    literal_only = bool(node.args) and isinstance(node.args[0], ast.Constant)  # the code
    if owner is None and name in ("eval", "exec", "__import__") and not literal_only:
        return f"{name}() on a non-literal"
    if owner in ("pickle", "dill", "marshal", "cloudpickle") and name in ("load", "loads"):
        return f"{owner}.{name}"
    if owner == "torch" and name == "load":
        wo = _kw(node, "weights_only")
        if not (isinstance(wo, ast.Constant) and wo.value is True):
            return "torch.load without weights_only=True"
    if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
        loader = _kw(node, "Loader")
        if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
            return "yaml.load without SafeLoader"
    if name in ("from_pretrained", "LLM") and isinstance(
        _kw(node, "trust_remote_code"), ast.Constant
    ):
        if _kw(node, "trust_remote_code").value is True:
            return "trust_remote_code=True"
    return None


def test_sources_never_run_or_unpickle_outside_data():
    """eval/exec only on literals; no pickle/marshal loads; torch.load only weights-only;
    yaml only with SafeLoader; no trust_remote_code=True. (The rewards package wraps sympy's
    parse_expr behind an allow-list: docs/reliability.md, "Injection".)"""
    files = sorted((ROOT / "mapo").rglob("*.py")) + [ROOT / "train.py", ROOT / "eval.py"]
    found = []
    for path in files:
        if not path.exists():
            continue
        for node, owner, name in _calls(ast.parse(path.read_text(), str(path))):
            why = _unsafe(node, owner, name)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {why}")
    assert not found, "\n".join(found)


def test_the_source_check_catches_what_it_looks_for():
    bad = """
import pickle, torch, yaml
eval(text)
pickle.loads(blob)
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(s)
AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    hits = [_unsafe(n, o, m) for n, o, m in _calls(ast.parse(bad))]
    assert sum(h is not None for h in hits) == 6
    ok = "torch.load(p, weights_only=True)\nyaml.load(s, Loader=yaml.SafeLoader)\nexec('x = 1')"
    assert all(_unsafe(n, o, m) is None for n, o, m in _calls(ast.parse(ok)))


# ---------------------------------------------------------------- keys, types, model folder
@pytest.mark.parametrize(
    "override, msg",
    [
        ("+rollout.temprature=0.5", r"rollout\.temprature \(did you mean rollout\.temperature\?\)"),
        (
            "+algorithm.grup_size=4",
            r"algorithm\.grup_size \(did you mean algorithm\.group_size\?\)",
        ),
        ("+trainer.max_epoch=3", r"trainer\.max_epoch"),
        ("+seeed=1", r"seeed \(did you mean seed\?\)"),
    ],
)
def test_a_typo_added_with_plus_is_an_unknown_key(override, msg, tmp_path, no_model):
    with pytest.raises(ConfigError, match=rf"unknown config key\(s\): {msg}"):
        _train(tmp_path, override)


def test_every_default_key_and_free_form_map_is_known(tmp_path):
    from mapo.pipeline.config_keys import unknown_keys

    for exp in ("synth_emo_mapo", "geo3k_dapo", "emoset_grpo"):
        cfg = compose_config(
            [f"experiment={exp}", "+data.in_domain.extra=/x.parquet", "trainer.max_epochs=3"],
            run_dir=tmp_path,
        )
        assert unknown_keys(OmegaConf.to_container(cfg, resolve=False)) == [], exp


@pytest.mark.parametrize(
    "override, msg",
    [
        ("algorithm.group_size=abc", r"algorithm\.group_size='abc' must be of type int"),
        ("algorithm.clip_high=high", r"algorithm\.clip_high='high' must be of type float"),
        ("algorithm.shuffle=3", r"algorithm\.shuffle=3 must be of type bool"),
        ("optim.lr=fast", r"optim\.lr='fast' must be of type float"),
        ("steps=1.5", r"steps=1\.5 must be a whole number"),
        ("steps=true", r"steps=True must be a whole number"),
        ("steps=abc", r"steps='abc' must be a whole number"),
        ("rollout.max_new_tokens=2.5", r"rollout\.max_new_tokens=2\.5 must be a whole number"),
        ("data.eval_limit=many", r"data\.eval_limit='many' must be a whole number or null"),
        ("rollout.temperature=hot", r"rollout\.temperature='hot' must be a number"),
        (
            "algorithm.rollout_correction=null",
            r"rollout_correction=None must be of type "
            r"RolloutCorrection; the default config \(conf/algorithm/\) shows the form",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named(override, msg, tmp_path, no_model):
    with pytest.raises(ConfigError, match=msg):
        _train(tmp_path, override)


def test_flash_attention_without_flash_attn_names_sdpa(tmp_path, no_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flash_attn" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"flash-attn.*model\.attn_implementation=sdpa"):
        _train(tmp_path, "model.attn_implementation=flash_attention_2")


def _model_folder(tmp_path, config: str | None, weights: bool) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
    return folder


@pytest.mark.parametrize(
    "config, weights, msg",
    [
        (None, False, "no config.json"),
        ('{"model_type": "qwen2_5_vl", ', True, "config.json is not valid JSON"),
        ('{"hidden_size": 8}', True, "config.json has no model_type"),
        ('{"model_type": "qwen2_5_vl"}', False, "no weights"),
    ],
    ids=["empty", "corrupt", "no_model_type", "no_weights"],
)
def test_a_model_folder_without_a_model_fails_before_the_data(
    config, weights, msg, tmp_path, no_model, monkeypatch
):
    import mapo.pipeline.run as pipeline

    def no_data(cfg):
        raise AssertionError("the data was prepared before the model folder was checked")

    monkeypatch.setattr(pipeline, "prepare_data", no_data)
    folder = _model_folder(tmp_path, config, weights)
    with pytest.raises(ValueError, match=rf"model.path={folder}.*{msg}"):
        _train(tmp_path, f"model.path={folder}")
