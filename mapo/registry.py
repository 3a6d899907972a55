"""One registry helper for every pluggable kind: advantage estimators, rewards, rollout
engines, data sources.

    ESTIMATORS = Registry("advantage estimator")

    @ESTIMATORS.register("my_adv")
    def my_adv(...): ...

* a name that is taken by a different object fails (the same or an equal one again is fine);
* an unknown name fails with a message that lists the known ones;
* `discover="mapo.rewards"` imports every module of that package the first time the registry is
  read, so a new file there is found without editing an import list; a module that fails to
  import is named in the error;
* `import_plugins(["my_pkg.my_reward"])` imports modules from outside the package (the
  top-level config key `plugins`), so they can register themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; a KeyError for mappings and a ValueError for callers."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str, *, discover: str | None = None) -> None:
        self.what = what  # "reward kind", used in every message
        self._items: dict[str, T] = {}
        self._discover = discover  # a package whose modules are imported on first read
        self._discovered = discover is None

    def add(self, name: str, obj: T) -> T:
        taken = self._items.get(name)
        if taken is not None and taken is not obj and taken != obj:
            where = getattr(taken, "__module__", "?") + "." + getattr(taken, "__qualname__", "?")
            raise ValueError(
                f"{self.what} {name!r} is already registered to {where}; pick another name"
            )
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")`."""
        return lambda obj: self.add(name, obj)

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register a temporary entry clean up with this)."""
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._discover)
        for info in pkgutil.iter_modules(package.__path__, prefix=package.__name__ + "."):
            try:
                importlib.import_module(info.name)
            except Exception as e:
                raise ImportError(
                    f"importing {info.name} (to find every {self.what}) failed: {e}"
                ) from e

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.what} {name!r}; known: {sorted(self._items)}")
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(dict(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self)


def import_plugins(modules: Iterable[str]) -> None:
    """Import modules named in the config (`plugins: [my_pkg.my_reward]`) so they register."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(
                f"plugins: cannot import {name!r} ({e}); put it on PYTHONPATH or fix the name"
            ) from e
