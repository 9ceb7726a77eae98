"""Every third-party package the code imports is declared in pyproject.toml.

A package that only arrives as a dependency of a dependency installs today and silently stops
installing when that other package changes (statsmodels did): a fresh ``pip install -e .`` then
fails at the first verdict.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(package: Path) -> set[str]:
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_third_party_package_is_declared():
    stdlib = set(sys.stdlib_module_names)
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for name in sorted(_imported_top_levels(ROOT / "stf_eval") - stdlib - {"stf_eval", "tomli", "tomllib"}):
        owners = {_normalise(d) for d in dists.get(name, [name])}
        if not owners & declared:
            missing[name] = sorted(owners)
    assert not missing, f"imported by stf_eval but not declared in pyproject.toml: {missing}"
