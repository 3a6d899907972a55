"""The package layout is the architecture: imports run only downward, read from the source.

Layers, bottom to top (docs/architecture.md draws them):

    types, registry, atomic, console, shared types, the registry, crash-safe writes, logging and
    rng                              progress, the RNG state; no mapo imports
    algorithm                        advantages, losses, their config; torch and the bottom only
    data, rewards                    the bottom only
    models                           the bottom and data (templates for the cold start)
    rollout                          the bottom, data and models
    analysis                         the bottom and the algorithm
    trainer                          everything above except the pipeline
    pipeline                         entry points; anything

Every `import` is read, the lazy ones inside functions included, so a function-level import
cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mapo"

BOTTOM = {"types", "registry", "atomic", "console", "rng", "ranks"}
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "registry": set(),
    "atomic": set(),
    "console": set(),
    "rng": set(),
    "ranks": set(),
    "algorithm": BOTTOM,
    "data": BOTTOM,
    "rewards": BOTTOM,
    "models": BOTTOM | {"data"},
    "rollout": BOTTOM | {"data", "models"},
    "analysis": BOTTOM | {"algorithm"},
    "trainer": BOTTOM | {"algorithm", "data", "rewards", "models", "rollout", "analysis"},
    "pipeline": BOTTOM
    | {"algorithm", "data", "rewards", "models", "rollout", "analysis", "trainer"},
    "__init__": set(),
}
# third-party packages the algorithm may use: the formulas are torch, nothing else
ALGORITHM_THIRD_PARTY = {"torch"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def _component(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mapo":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_file_belongs_to_a_layer():
    unknown = {_component(_module_name(p)) for p in _sources()} - set(ALLOWED)
    assert not unknown, f"mapo/ has parts with no layer in this test: {sorted(unknown)}"


def test_imports_run_only_downward():
    bad = []
    for path in _sources():
        own = _component(_module_name(path))
        for line, mod, _ in _imports(path):
            target = _component(mod)
            if target is None or target == own:
                continue
            if target not in ALLOWED[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {mod} ({target})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_algorithm_imports_only_torch():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for path in sorted((PKG / "algorithm").rglob("*.py")):
        for line, mod, _ in _imports(path):
            top = mod.split(".")[0]
            if top in stdlib or top == "mapo" or top in ALGORITHM_THIRD_PARTY:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "the algorithm imports only torch:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in _sources():
        me = _module_name(path)
        for line, mod, names in _imports(path):
            if _component(mod) is None or mod == me:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {mod}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from mapo.trainer.module import MAPOModule\n", "imports mapo.trainer.module (trainer)"),
        ("def f():\n    from mapo.rollout import build_engine\n", "imports mapo.rollout"),
        ("from ..rollout import ENGINES\n", "imports mapo.rollout (rollout)"),
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, source, expected):
    """The rule can fail: a models/ file importing the trainer or rollout/ is reported."""
    fake_root = tmp_path
    (fake_root / "mapo" / "models").mkdir(parents=True)
    (fake_root / "mapo" / "__init__.py").write_text("")
    (fake_root / "mapo" / "models" / "__init__.py").write_text("")
    (fake_root / "mapo" / "models" / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake_root / "mapo")
    with pytest.raises(AssertionError, match="upward imports") as info:
        test_imports_run_only_downward()
    assert expected in str(info.value)


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def _oversized(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > MAX_FILE_LINES:
            out.append(f"{path.relative_to(root)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(
                        f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines"
                    )
    return out


def test_files_and_functions_stay_small():
    """Every file under 400 lines and every function under 60, so each reads in one sitting."""
    assert _oversized(PKG) == []


def test_the_size_rule_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "big.py").write_text(f"def f():\n{body}\n")
    assert _oversized(tmp_path) == ["big.py:1 f: 62 lines"]
