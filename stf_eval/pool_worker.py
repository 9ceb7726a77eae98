"""What runs inside a worker process of the local executor's pool (``[executor] workers = N``).

This module imports nothing heavy at the top on purpose. A worker starts with ``spawn``: a fresh
interpreter imports this module to find ``init``, then calls it, and only ``init`` unpickles the run
(``Work``), which imports torch, tqdm and the plugins. So the worker's environment (bars off,
``TQDM_DISABLE`` read by tqdm when it is first imported) and its thread count are set before any of
them is imported.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal

_WORK = None  # the run's Work, unpickled once per worker process
_INIT_ERROR: BaseException | None = None  # why the Work could not be loaded here (reported per task)
_STARTED = None  # a queue to the driver: (token, pid) of each task as it starts


def init(work_file: str, threads: int, filters_blob: bytes | None, started=None) -> None:
    """The pool's initializer: quiet, ``threads`` torch threads, the driver's warning filters, the Work
    (pickled into ``work_file`` by the driver);
    ``started``: a queue on which each task says which process runs it (the driver then knows, when a
    worker dies, which task it took down)."""
    global _WORK, _INIT_ERROR, _STARTED
    _STARTED = started
    # Ctrl-C reaches every process of the terminal's group: the driver handles it (it stops the pool),
    # a worker ignores it instead of printing a traceback of whatever it was running
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TQDM_DISABLE"] = "1"  # the driver shows one bar over jobs and cells
    os.environ["STF_EVAL_QUIET"] = "1"  # the package's own training bars (stf_eval.progress)
    logging.getLogger("stf_eval").setLevel(logging.WARNING)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    try:
        if filters_blob is not None:
            import warnings

            warnings.filters[:] = pickle.loads(filters_blob)
        with open(work_file, "rb") as fh:
            _WORK = pickle.load(fh)
        from .allocator import apply

        apply(_WORK.cfg.allocator)  # a process of the run's own: malloc keeps freed blocks (allocator.py)
        import torch

        torch.set_num_threads(threads)
    except Exception as exc:  # noqa: BLE001 - said by every task this worker is given, on one line
        _INIT_ERROR = exc


def run(item, token: int = -1):
    """Train a job or evaluate a cell with the run's Work, in the driver's cache and run directory."""
    if _STARTED is not None:
        _STARTED.put((token, os.getpid()))  # written through before the task starts (a SimpleQueue)
    if _INIT_ERROR is not None:
        from .executors.schedule import one_line

        raise RuntimeError(f"the worker process could not load the run: {one_line(_INIT_ERROR)}")
    from .plan import Job

    if isinstance(item, Job):
        return _WORK.run_job(item)
    return _WORK.run_cell(item.cell)
