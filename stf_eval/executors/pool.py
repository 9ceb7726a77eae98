"""Run the plan in a pool of worker processes on this machine (``[executor] workers = N``, N > 1).

The workers are ``spawn``-started processes (never forked from a process whose torch threads exist)
that share the driver's checkpoint cache and run directory: a job trains into the cache under the
key's file lock, a cell writes its figures and per-example arrays into the run directory, and the
driver keeps each cell's result (``on_cell``). At most N items run at a time, chosen by the shared
``Schedule`` when a slot frees (cells first, then jobs in plan order). Each worker runs at the thread
count of ``Work.threads`` (``num_threads``, else CPUs // N), so the numbers equal those of a one-worker
run at the same ``num_threads``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import tempfile
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .. import pool_worker
from ..config import ExecutorConfig
from ..plan import Job, Plan, Work, default_threads
from .schedule import Schedule, name_of

log = logging.getLogger("stf_eval")


class WorkerDied(RuntimeError):
    """The worker process running a job or cell ended abruptly (killed, e.g. out of memory, or crashed)."""


class PoolExecutor:
    def __init__(self, config: ExecutorConfig, progress: bool = True):
        self.config = config
        self.progress = progress

    def run(self, plan: Plan, work: Work, on_cell) -> None:
        """Train the pending jobs and evaluate the pending cells in ``config.workers`` processes."""
        n = self.config.workers
        threads = work.cfg.num_threads or work.threads or default_threads(n)
        # the run (data included) reaches the workers as a file: a spawned worker gets its initializer's
        # arguments through a pipe that the driver fills before it goes on, and a worker that died while
        # starting would leave a large write blocked for good; a path is small
        fd, work_file = tempfile.mkstemp(prefix="stf-eval-work-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(dataclasses.replace(work, threads=threads), fh, protocol=pickle.HIGHEST_PROTOCOL)
            self._run(plan, work_file, threads, on_cell)
        finally:
            os.unlink(work_file)

    def _run(self, plan: Plan, work_file: str, threads: int, on_cell) -> None:
        n = self.config.workers
        try:
            filters_blob = pickle.dumps(list(warnings.filters))
        except Exception:  # noqa: BLE001 - a filter naming something a worker cannot import: its defaults
            filters_blob = None
        spawn = multiprocessing.get_context("spawn")
        started = spawn.SimpleQueue()  # (token, pid) of each task as a worker starts it
        schedule = Schedule(plan, self.config.max_retries, self.progress)
        log.info("local executor: %d worker processes, %d torch thread(s) each", n, threads)
        running: dict[Future, object] = {}  # future -> job or planned cell
        retry: list = []  # to run again (a failed attempt, or one a dying neighbour took down), first
        pool: ProcessPoolExecutor | None = None
        tokens = itertools.count()
        where: dict[int, int] = {}  # token of each running attempt that started -> pid of its process

        def submit(item) -> None:
            schedule.started(item)
            token = next(tokens)  # names this attempt: which process started it, if a worker dies
            future = pool.submit(pool_worker.run, item, token)
            future.token = token
            running[future] = item

        try:
            while schedule.unfinished() or retry:
                if pool is None:
                    pool = ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=pool_worker.init,
                                               initargs=(work_file, threads, filters_blob, started))
                while retry and len(running) < n:
                    submit(retry.pop(0))
                for item in schedule.ready(limit=n - len(running)) if len(running) < n else ():
                    submit(item)
                if not running:
                    schedule.strand_rest()
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    self._broken(pool, schedule, running, started, where, on_cell, retry)
                    pool = None
                    where.clear()
                    continue
                _drain(started, where)  # read as it comes: a full pipe would block the workers' starts
                for future in done:
                    where.pop(future.token, None)
                    self._finish(schedule, running.pop(future), future, on_cell, retry)
        except KeyboardInterrupt:
            self._stop(pool, running)  # finished jobs and cells are kept
            pool = None
            raise
        finally:
            schedule.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            started.close()
        schedule.raise_failures()

    def _broken(self, pool: ProcessPoolExecutor, schedule: Schedule, running: dict, started, where: dict,
                on_cell, retry: list) -> None:
        """A worker died: every task in the pool fails at once. Charge the task(s) of the process that
        died; run the others again without counting an attempt (the pool ended them), in a new pool."""
        processes = dict(getattr(pool, "_processes", None) or {})  # pid -> process, before shutdown drops it
        wait(list(running))
        pool.shutdown(wait=True)  # the workers are joined: their exit codes are known
        _drain(started, where)
        broken = {f: item for f, item in running.items() if isinstance(f.exception(), BrokenProcessPool)}
        for future in [f for f in running if f not in broken]:  # finished before the break
            self._finish(schedule, running.pop(future), future, on_cell, retry)

        def ran_on_the_dead(future) -> bool:  # started, and its process did not end by the pool's hand
            pid = where.get(future.token)
            if pid is None:
                return False  # never started: it was queued when the pool broke
            proc = processes.get(pid)
            return proc is None or proc.exitcode != -signal.SIGTERM

        charged = [f for f in broken if ran_on_the_dead(f)] or list(broken)  # no culprit seen: all of them
        why = None
        if not any(f.token in where for f in broken):
            codes = sorted({p.exitcode for p in processes.values() if p.exitcode not in (0, -signal.SIGTERM)})
            why = WorkerDied(f"a worker process ended before it ran anything (exit code "
                             f"{', '.join(map(str, codes)) or '?'}); its error is printed above")
        for future, item in broken.items():
            running.pop(future)
            if future in charged:
                self._finish(schedule, item, future, on_cell, retry, why)
            else:  # taken down with the pool: run again, no attempt counted
                schedule.running.pop(name_of(item), None)
                retry.append(item)

    @staticmethod
    def _finish(schedule: Schedule, item, future: Future, on_cell, retry: list,
                why: BaseException | None = None) -> None:
        exc = why or future.exception()
        if exc is None:
            try:
                if not isinstance(item, Job):
                    on_cell(item.cell, future.result())
            except Exception as err:  # noqa: BLE001 - keeping the cell failed: reported like a failing cell
                exc = err
            else:
                schedule.succeeded(item)
                return
        if isinstance(exc, BrokenProcessPool):
            exc = WorkerDied("the worker process running it ended abruptly (killed, e.g. out of memory, "
                             "or crashed)")
        elif exc.__cause__ is not None:  # the worker's traceback, as text: for -v
            log.debug("%s failed in a worker process:%s", name_of(item), exc.__cause__)
        if schedule.failed(item, exc):
            retry.append(item)

    @staticmethod
    def _stop(pool: ProcessPoolExecutor | None, running: dict) -> None:
        """Ctrl-C: drop what is queued, end the workers now (not after their current job), reap them."""
        for future in running:
            future.cancel()
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(started, where: dict) -> None:
    """Read the workers' (token, pid) start messages that have arrived into ``where``."""
    while not started.empty():
        token, pid = started.get()
        where[token] = pid
