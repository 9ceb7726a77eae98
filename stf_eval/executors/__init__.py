"""Executors run a plan (``stf_eval.plan``): train its pending jobs, then evaluate each cell once every
stage it needs is in the checkpoint cache. ``local`` runs everything in this process, in plan order;
``ray`` submits jobs and cells as Ray tasks. Both share ``Schedule``: what is ready, what failed,
how many retries are left, and the one progress bar.
"""

from __future__ import annotations

from ..config import ExecutorConfig
from ..errors import ConfigError
from .schedule import Schedule, one_line

__all__ = ["Schedule", "make_executor", "one_line"]


def make_executor(config: ExecutorConfig, progress: bool = True):
    if config.kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ConfigError("executor 'ray' needs Ray: pip install 'stf-eval[ray]' (or ray[default])") from exc
        from .ray import RayExecutor

        return RayExecutor(config, progress=progress)
    from .local import LocalExecutor

    return LocalExecutor(config, progress=progress)
