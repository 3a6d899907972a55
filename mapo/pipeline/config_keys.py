"""Unknown config keys and wrongly typed values, caught before anything loads.

Hydra refuses `rollout.temprature=0.5` (the key is not in the config), but `+rollout.temprature=0.5`
adds it, and nothing reads it: the run silently samples at the default temperature. So every
key of a composed config must be one that some YAML file under conf/ defines (the union over
all options of every group, experiments included), except under free-form maps (the
evaluation sets, the logger and callback objects, Hydra's own). `trainer.*` keys must be
arguments of `lightning.pytorch.Trainer`, which receives them.

`check_types` compares the values of a dataclass-backed group (algorithm, optim) with the
field types (`check_number_types` the plain numeric keys such as `steps`), so `algorithm.group_size=abc` is named as "must be an int" instead of failing
with `TypeError: '<' not supported` inside a rule.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mapo.algorithm.config import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Maps whose keys the user names freely (or that Hydra/Lightning objects own).
FREE_FORM = ("hydra", "data.in_domain", "data.out_of_domain", "logger", "callbacks")
SET_BY_CODE = {"run_dir"}  # mapo.pipeline.quickrun.compose_config sets it


def _flatten(prefix: str, value: Any, out: set[str]) -> None:
    if prefix:
        out.add(prefix)
    if isinstance(value, Mapping) and not any(prefix == f for f in FREE_FORM):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)


@lru_cache(maxsize=4)
def known_keys(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every dotted key some YAML file under `conf_dir` defines."""
    out: set[str] = set()
    for path in sorted(conf_dir.rglob("*.yaml")):
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        data = {k: v for k, v in data.items() if k != "defaults"}
        group = path.parent.relative_to(conf_dir).as_posix()
        is_global = group == "." or "@package _global_" in text
        _flatten("" if is_global else group.replace("/", "."), data, out)
    return frozenset(out)


def _trainer_args() -> set[str]:
    import lightning.pytorch as pl

    return set(inspect.signature(pl.Trainer.__init__).parameters) | {"_target_"}


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in FREE_FORM)


def unknown_keys(cfg: Mapping[str, Any]) -> list[str]:
    """Keys of `cfg` (a plain nested dict) that no config file defines."""
    present: set[str] = set()
    _flatten("", cfg, present)
    known = known_keys()
    trainer = _trainer_args()
    bad = []
    for key in sorted(present):
        if _free(key) or key in SET_BY_CODE or key in known:
            continue
        if key.startswith("trainer.") and key.split(".")[1] in trainer:
            continue
        bad.append(key)
    # report the outermost unknown key only (`+rollout.x.y=1` adds rollout.x and rollout.x.y)
    return [k for k in bad if not any(k.startswith(b + ".") for b in bad)]


def check_known_keys(cfg: Mapping[str, Any]) -> None:
    bad = unknown_keys(cfg)
    if not bad:
        return
    known = sorted(known_keys())
    hints = []
    for key in bad:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ConfigError(
        f"unknown config key(s): {', '.join(hints)}. No config file defines them, so nothing "
        "would read them (a `+key=value` override adds any key). Fix the spelling, or drop the "
        "`+` to let Hydra check the key."
    )


def _type_names(annotation: str) -> set[str]:
    return {t.strip() for t in str(annotation).split("|")}


def _matches(value: Any, names: set[str]) -> bool:
    if value is None:
        return "None" in names
    if isinstance(value, bool):
        return "bool" in names
    if isinstance(value, int):
        return bool(names & {"int", "float"})
    if isinstance(value, float):
        return "float" in names
    if isinstance(value, str):
        return "str" in names
    if isinstance(value, (list, tuple)):
        return any(n.startswith(("tuple", "list")) for n in names)
    return True


def check_types(cls: type, values: Mapping[str, Any], prefix: str) -> None:
    """Raise ConfigError naming the first value of `values` whose type is not its field's."""
    for f in fields(cls):
        if f.name in values and not _matches(values[f.name], _type_names(f.type)):
            raise ConfigError(
                f"{prefix}.{f.name}={values[f.name]!r} must be of type {f.type}; the default "
                f"config (conf/{prefix}/) shows the form"
            )


# Plain (not dataclass-backed) keys whose values rules compare as numbers: a wrong type is named
# here, not as a TypeError after the model loads (`steps=1.5`) or read as 1 (`steps=true`).
INT_KEYS = (
    "steps",
    "seed",
    "rollout.max_new_tokens",
    "rollout.eval.max_new_tokens",
    "rollout.eval.batch_size",
    "data.max_prompt_tokens",
    "data.min_pixels",
    "data.max_pixels",
    "eval.every_n_steps",
)
INT_OR_NULL_KEYS = (
    "data.eval_limit",
    "data.max_image_pixels",
    "callbacks.model_checkpoint.every_n_train_steps",
)
NUMBER_KEYS = (
    "rollout.temperature",
    "rollout.top_p",
    "rollout.eval.temperature",
    "rollout.eval.top_p",
    "reward.format_weight",
    "reward.timeout_s",
    "reward.budget_s",
)


def check_number_types(select) -> None:
    """ConfigError naming the first key of INT_KEYS / INT_OR_NULL_KEYS / NUMBER_KEYS whose value
    has the wrong type; `select(key)` returns the value, or the string "<absent>"."""
    for keys, names, what in (
        (INT_KEYS, {"int"}, "a whole number"),
        (INT_OR_NULL_KEYS, {"int", "None"}, "a whole number or null"),
        (NUMBER_KEYS, {"float"}, "a number"),
    ):
        for key in keys:
            value = select(key)
            if value != "<absent>" and not _matches(value, names):
                raise ConfigError(f"{key}={value!r} must be {what}: e.g. {key}=1")
