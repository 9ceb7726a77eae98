"""Suite files shipped with the package (the repository's suites/*.toml), found by name.

In a wheel they are package data under ``stf_eval/suite_files/`` (pyproject maps that package to the
repository's ``suites/`` folder); in a source checkout they are read from ``suites/`` directly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError

DEFAULT_SUITE_NAME = "quick"


def shipped_dir() -> Path | None:
    """The folder holding the shipped suite files, or None if neither location has any."""
    candidates = []
    try:
        candidates.append(Path(str(resources.files("stf_eval") / "suite_files")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        pass
    candidates.append(Path(__file__).resolve().parent.parent / "suites")
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.toml")):
            return folder
    return None


def shipped_suites() -> dict[str, Path]:
    """name -> path of every shipped suite file (``quick`` -> .../quick.toml)."""
    folder = shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder else {}


def find_suite(arg: str | None) -> Path:
    """A suite argument as a path: an existing path as given, else the shipped suite of that name."""
    if arg is None:
        arg = DEFAULT_SUITE_NAME
    path = Path(arg)
    if path.exists():
        return path
    shipped = shipped_suites()
    name = path.name[:-5] if path.name.endswith(".toml") else path.name
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    if path.parent == Path(".") and not arg.endswith(".toml"):
        known = ", ".join(shipped) or "none"
        raise ConfigError(f"{arg}: no such suite file, and no shipped suite of that name (shipped: {known})")
    return path
