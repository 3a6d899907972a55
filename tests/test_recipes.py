"""The recipes of docs/architecture.md, done exactly as written, from outside the package.

Each test writes a plugin module into a temporary folder (not under mapo/), names it in the
config's `plugins` list, and checks that the config validates and the new name works; plus the
registry helper's rules (a taken name fails, an unknown name lists the known ones, a module that
fails to import is named).
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
from PIL import Image

from mapo.pipeline.quickrun import compose_config, reward_args
from mapo.pipeline.validate import validate
from mapo.registry import Registry, UnknownNameError, import_plugins


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write `source` as a uniquely named module in tmp_path; return its import name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def write(source: str) -> str:
        name = f"my_plugin_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name

    yield write
    for name in made:
        sys.modules.pop(name, None)


def _validate(tmp_path, *overrides):
    return validate(compose_config(["debug=fast", *overrides], run_dir=tmp_path / "run"))


def test_recipe_add_an_advantage_estimator(tmp_path, plugin):
    from mapo.algorithm.advantages import ADVANTAGE_ESTIMATORS, compute_advantages

    mod = plugin("""
        from mapo.algorithm.advantages import register_advantage

        @register_advantage("recipe_centered")
        def centered(r, s, *, eps, generator):
            return r - s.expand(s.mu), {}
    """)
    try:
        settings = _validate(tmp_path, f"plugins=[{mod}]", "algorithm.estimator=recipe_centered")
        assert settings.algo.estimator == "recipe_centered"
        r = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.1, 0.1])
        g = torch.tensor([0, 0, 0, 0, 1, 1])
        adv = compute_advantages("recipe_centered", r, g, eps=0.0, std="population")
        # by hand: group 0 mean 0.75, group 1 mean 0.1
        expected = torch.tensor([-0.75, 0.25, 0.25, 0.25, 0.0, 0.0])
        torch.testing.assert_close(adv, expected)
    finally:
        ADVANTAGE_ESTIMATORS.remove("recipe_centered")


def test_recipe_add_a_reward(tmp_path, plugin):
    from mapo.pipeline.build import make_scorer
    from mapo.rewards import REWARDS, score
    from mapo.types import Completions, Prompt

    mod = plugin("""
        from mapo.rewards import register_reward

        @register_reward("recipe_yes")
        def yes(completions, answers, grading):
            fmt = [1.0 if c.strip() else 0.0 for c in completions]
            acc = [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answers)]
            return fmt, acc
    """)
    try:
        cfg = compose_config(
            ["debug=fast", f"plugins=[{mod}]", "data.task=recipe_yes"], run_dir=tmp_path / "run"
        )
        assert cfg.data.task == "recipe_yes" and validate(cfg).run_dir == tmp_path / "run"
        # the run's scorer uses it for every row, whatever kind the row's `task` column names
        prompts = [Prompt(uid="r0", text="q", images=(), answer="yes", task="emotion")]
        done = Completions(
            prompt_index=[0, 0], token_ids=[[1], [1]], text=["yes", "no"], truncated=[False, False]
        )
        scores = make_scorer(cfg)(prompts, done)
        assert scores["accuracy"].tolist() == [1.0, 0.0]
        assert scores["format"].tolist() == [1.0, 1.0]
        assert score("recipe_yes", "yes", "yes", **reward_args()) == {
            "overall": 1.0,
            "format": 1.0,
            "accuracy": 1.0,
        }
        assert score("recipe_yes", "no", "yes", **reward_args())["accuracy"] == 0.0
    finally:
        REWARDS.remove("recipe_yes")


def test_recipe_add_a_dataset(tmp_path, plugin):
    from mapo.data.loader import load_split
    from mapo.data.prepare import prepare
    from mapo.data.sources import REGISTRY

    mod = plugin("""
        from collections import Counter

        from PIL import Image

        from mapo.data.schema import encode_image, write_rows
        from mapo.data.sources import Converted, register_source

        @register_source("recipe_red", help="one red square, no download", needs_src=False)
        def prepare_red(src, out, opts):
            row = {"id": "red-0", "images": [encode_image(Image.new("RGB", (28, 28), "red"))],
                   "problem": "<image>What colour is it?", "answer": "red", "choices": None,
                   "source": "recipe_red", "task": "math"}
            path = write_rows([row], out / "test.parquet")
            return Converted(paths={"test": path}, skipped={"test": Counter()}, rows={"test": 1})
    """)
    try:
        import_plugins([mod])  # what validate does with `plugins: [...]`
        assert "recipe_red" in REGISTRY
        result = prepare("recipe_red", None, tmp_path / "out")
        split = load_split(result.paths["test"], on_bad_row="error")
        assert [r["answer"] for r in split.rows] == ["red"]
        assert isinstance(split.rows[0]["images"][0], (dict, Image.Image))
    finally:
        REGISTRY.remove("recipe_red")


def test_recipe_add_a_rollout_engine(tmp_path, plugin):
    from mapo.rollout import ENGINES, build_engine
    from mapo.types import Prompt, SamplingConfig

    mod = plugin("""
        from mapo.rollout import register_engine
        from mapo.types import Completions

        class EchoEngine:
            def generate(self, prompts, sampling):
                idx = [i for i in range(len(prompts)) for _ in range(sampling.n)]
                text = [prompts[i].answer for i in idx]
                return Completions(prompt_index=idx, token_ids=[[1] for _ in idx], text=text,
                                   truncated=[False] * len(idx))

            def sync_weights(self, model):
                pass

        @register_engine("recipe_echo")
        def build(policy, processor, model_path, cfg):
            return EchoEngine()
    """)
    try:
        _validate(tmp_path, f"plugins=[{mod}]", "rollout.engine=recipe_echo")
        engine = build_engine("recipe_echo", None, None, "", {})
        p = Prompt(uid="0", text="q", images=(), answer="awe", task="emotion")
        out = engine.generate(
            [p, p], SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=64)
        )
        assert out.prompt_index == [0, 0, 0, 1, 1, 1] and out.text == ["awe"] * 6
    finally:
        ENGINES.remove("recipe_echo")


def test_recipe_add_a_policy_loss(tmp_path, plugin):
    from loss_config import plain_loss

    from mapo.algorithm.losses import policy_loss
    from mapo.algorithm.policy_losses import POLICY_LOSSES

    mod = plugin("""
        from mapo.algorithm.policy_losses import register_policy_loss

        @register_policy_loss("recipe_reinforce", aggregations=("token-mean",))
        def reinforce(logp, old_logp, adv, mask, p):
            return -adv * logp, {}
    """)
    try:
        overrides = [
            f"plugins=[{mod}]",
            "algorithm.policy_loss=recipe_reinforce",
            "algorithm.loss_agg=token-mean",
            "algorithm.dual_clip=null",
        ]
        assert _validate(tmp_path, *overrides).algo.policy_loss == "recipe_reinforce"
        with pytest.raises(Exception, match="loss_agg"):  # an aggregation it is not defined for
            _validate(
                tmp_path,
                *overrides[:-2],
                "algorithm.loss_agg=seq-mean-token-sum",
                "algorithm.dual_clip=null",
            )
        logp = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]])
        mask = torch.tensor([[1, 1], [1, 0]])
        loss, _ = policy_loss(
            logp,
            logp.detach(),
            torch.tensor([1.0, -2.0]),
            mask,
            plain_loss(policy_loss="recipe_reinforce"),
        )
        # by hand, token-mean over the 3 valid tokens: (-(1)(-1) - (1)(-2) - (-2)(-0.5)) / 3
        assert float(loss) == pytest.approx((1.0 + 2.0 - 1.0) / 3)
    finally:
        POLICY_LOSSES.remove("recipe_reinforce")


def test_unknown_plugin_module_is_named(tmp_path):
    with pytest.raises(ImportError, match="plugins: cannot import 'no_such_plugin_xyz'"):
        _validate(tmp_path, "plugins=[no_such_plugin_xyz]")


def test_registry_rules(tmp_path, monkeypatch):
    reg: Registry = Registry("widget")
    f = reg.register("a")(lambda: 1)
    assert reg.register("a")(f) is f  # the same object again: fine
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(ValueError, match=r"unknown widget 'b'; known: \['a'\]") as info:
        reg["b"]
    assert isinstance(info.value, (KeyError, UnknownNameError))
    assert reg.get("b") is None  # a Mapping: .get does not raise

    pkg = tmp_path / "widgets_pkg_recipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("from widgets_reg_recipe import REG\nREG.add('g', 1)\n")
    (pkg / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "widgets_reg_recipe.py").write_text(
        "from mapo.registry import Registry\nREG = Registry('widget', discover='widgets_pkg_recipe')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import widgets_reg_recipe

    try:
        with pytest.raises(ImportError, match="importing widgets_pkg_recipe.broken"):
            widgets_reg_recipe.REG["g"]
        (pkg / "broken.py").unlink()
        fresh = Registry("widget", discover="widgets_pkg_recipe")
        sys.modules.pop("widgets_pkg_recipe.good", None)
        widgets_reg_recipe.REG = fresh
        assert fresh["g"] == 1  # found by discovery: no import list names good.py
    finally:
        for name in [m for m in sys.modules if m.startswith("widgets_")]:
            sys.modules.pop(name)
