"""One generic plugin registry for models, suites, datasets and network architectures.

Built-in plugins live one per file in the sub-packages named below and register themselves with a
decorator when imported. Third-party packages add plugins through entry points (groups
``stf_eval.models``, ``stf_eval.suites``, ``stf_eval.datasets``, ``stf_eval.nets``): each entry point
names a module (or object) that is imported on the first lookup, which registers its plugins.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigError, UnknownPluginError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plugin mapping with decorator registration and helpful lookup errors."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str):
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} plugin {name!r} is already registered by {existing!r}")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin_package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.builtin_package}.{info.name}")
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the others
                raise ConfigError(
                    f"third-party {self.kind} plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._load()
        if name in self._items:
            return self._items[name]
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPluginError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def items(self) -> list[tuple[str, Any]]:
        self._load()
        return sorted(self._items.items())


MODELS: Registry = Registry("model", "stf_eval.models", "stf_eval.models")
SUITES: Registry = Registry("suite", "stf_eval.suites", "stf_eval.suites")
DATASETS: Registry = Registry("dataset", "stf_eval.data", "stf_eval.datasets")
NETS: Registry = Registry("net", "stf_eval.nets", "stf_eval.nets")
