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
import logging
import multiprocessing
import pickle
import signal
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
        work_blob = pickle.dumps(dataclasses.replace(work, threads=threads))
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

        def submit(item) -> None:
            schedule.started(item)
            running[pool.submit(pool_worker.run, item, name_of(item))] = item

        try:
            while schedule.unfinished() or retry:
                if pool is None:
                    pool = ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=pool_worker.init,
                                               initargs=(work_blob, threads, filters_blob, started))
                while retry and len(running) < n:
                    submit(retry.pop(0))
                for item in schedule.ready(limit=n - len(running)) if len(running) < n else ():
                    submit(item)
                if not running:
                    schedule.strand_rest()
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    self._broken(pool, schedule, running, started, on_cell, retry)
                    pool = None
                    continue
                for future in done:
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

    def _broken(self, pool: ProcessPoolExecutor, schedule: Schedule, running: dict, started, on_cell,
                retry: list) -> None:
        """A worker died: every task in the pool fails at once. Charge the task(s) of the process that
        died; run the others again without counting an attempt (the pool ended them), in a new pool."""
        processes = dict(getattr(pool, "_processes", None) or {})  # pid -> process, before shutdown drops it
        wait(list(running))
        pool.shutdown(wait=True)  # the workers are joined: their exit codes are known
        where: dict[str, int] = {}
        while not started.empty():
            token, pid = started.get()
            where[token] = pid  # a retried task's latest start wins
        broken = {f: item for f, item in running.items() if isinstance(f.exception(), BrokenProcessPool)}
        for future in [f for f in running if f not in broken]:  # finished before the break
            self._finish(schedule, running.pop(future), future, on_cell, retry)

        def ended_by_pool(item) -> bool:
            proc = processes.get(where.get(name_of(item), -1))
            return proc is not None and proc.exitcode == -signal.SIGTERM

        spared = [item for item in broken.values() if ended_by_pool(item)]
        if len(spared) == len(broken):  # no culprit found (e.g. a worker died while starting): charge all
            spared = []
        for future, item in broken.items():
            running.pop(future)
            if item in spared:
                schedule.running.pop(name_of(item), None)
                retry.append(item)
            else:
                self._finish(schedule, item, future, on_cell, retry)

    @staticmethod
    def _finish(schedule: Schedule, item, future: Future, on_cell, retry: list) -> None:
        exc = future.exception()
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
