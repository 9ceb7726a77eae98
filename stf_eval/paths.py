"""Names that become file names, and paths that cannot leave their root.

Every name from a suite file that ends up in a path (model, suite, OOD set, run name) must match
``SAFE_NAME``: letters (any script), digits, ``_``, ``-``, ``.``, ``+``, not starting with a dot or
dash, at most 64 characters. ``inside(root, *parts)`` builds a path and verifies that it stays under
``root`` once resolved, so nothing lands outside the run directory or the cache even if a check was
missed upstream.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

SAFE_NAME = re.compile(r"[^\W][\w.+-]{0,63}")
SAFE_NAME_RULE = ("letters, digits, '_', '-', '.', '+' (not starting with '.', '-' or '+'), "
                  "at most 64 characters")


def check_name(name: object, where: str) -> str:
    """``name`` if it is safe as a file-name component; else a one-line ConfigError naming ``where``."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} cannot be used as a name: use {SAFE_NAME_RULE}")
    return name


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root/parts...``, refused (ConfigError) if it resolves outside ``root``."""
    base = Path(root).expanduser().resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ConfigError(f"refusing to write {Path(*parts)!s}: it would land outside {base}")
    return path
