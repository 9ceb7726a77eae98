"""Run the plan in this process: each job in plan order, each cell as soon as its stages are trained.
With ``workers`` > 1, in a pool of that many processes on this machine instead (``pool.py``)."""

from __future__ import annotations

from ..config import ExecutorConfig
from ..plan import Job, Plan, Work
from .schedule import Schedule


class LocalExecutor:
    def __init__(self, config: ExecutorConfig | None = None, progress: bool = True):
        self.config = config or ExecutorConfig()
        self.progress = progress

    def run(self, plan: Plan, work: Work, on_cell) -> None:
        """Train the pending jobs and evaluate the pending cells; ``on_cell(cell, result)`` keeps each."""
        if self.config.workers > 1:
            from .pool import PoolExecutor

            return PoolExecutor(self.config, progress=self.progress).run(plan, work, on_cell)
        schedule = Schedule(plan, self.config.max_retries, self.progress)
        try:
            while True:
                ready = schedule.ready(limit=1)  # one at a time: a ready cell runs before further jobs
                if not ready:
                    schedule.strand_rest()
                    break
                self._attempt(schedule, ready[0], work, on_cell)
        finally:
            schedule.close()
        schedule.raise_failures()

    @staticmethod
    def _attempt(schedule: Schedule, item, work: Work, on_cell) -> None:
        while True:
            schedule.started(item)
            try:
                if isinstance(item, Job):
                    work.run_job(item)
                else:
                    on_cell(item.cell, work.run_cell(item.cell))
            except Exception as exc:  # noqa: BLE001 - reported by name, retried if it may pass
                if schedule.failed(item, exc):
                    continue
                return
            schedule.succeeded(item)
            return
