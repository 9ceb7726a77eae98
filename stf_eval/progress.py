"""Progress bars: on by default, off with ``stf-eval -q`` (or ``STF_EVAL_QUIET=1`` in the environment).

The switch is an environment variable so that worker processes (a process pool, Ray) inherit it.
"""

from __future__ import annotations

import os

QUIET_ENV = "STF_EVAL_QUIET"


def set_quiet(quiet: bool = True) -> None:
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def bars_disabled() -> bool:
    """``disable=`` for every tqdm bar of the package."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0")
