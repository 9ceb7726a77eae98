"""The bookkeeping every executor shares: readiness, bounded retries, failures, one progress bar."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..errors import InternalError, StfEvalError
from ..plan import Job, Plan, PlannedCell


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def name_of(item: Job | PlannedCell) -> str:
    return f"job {item.label}" if isinstance(item, Job) else f"cell {item.cell.label}"


class Schedule:
    """Pending jobs (in plan order) and cells; a job is ready once its dependencies are trained, a cell
    once every stage it needs is. Work that needs a failed job is not run and is reported with it."""

    def __init__(self, plan: Plan, max_retries: int = 0, progress: bool = True):
        self.plan = plan
        self.jobs = plan.pending_jobs()
        self.cells = plan.pending_cells()
        self.done = {k for k, j in plan.jobs.items() if j.cached}
        self.running: dict[str, str] = {}  # name -> kind
        self.attempts: dict[str, int] = {}
        self.failures: dict[str, str] = {}  # name -> one line
        # a bug is an internal error (exit 1); bad input keeps its class (exit 2) when reported first
        self.error_class: type[StfEvalError] = InternalError
        self.failed_keys: set[str] = set()
        self.max_retries = max_retries
        self.finished_jobs = 0
        self.finished_cells = 0
        self.total_jobs, self.total_cells = len(self.jobs), len(self.cells)
        self.bar = tqdm(total=self.total_jobs + self.total_cells, desc="stf-eval", unit="task",
                        disable=not progress, dynamic_ncols=True, mininterval=0.5)
        self._show()

    # -- what can start ----------------------------------------------------------------------------
    def ready(self, limit: int = 0) -> list[Job | PlannedCell]:
        """Remove and return what can start now (at most ``limit``, 0 = all): cells first, so results
        come early, then jobs in plan order."""
        out: list[Job | PlannedCell] = []
        for pc in list(self.cells):
            if limit and len(out) >= limit:
                return out
            if any(k in self.failed_keys for k in pc.stages):
                self.cells.remove(pc)
                self._fail(name_of(pc), "not run: a training job it needs failed")
            elif all(k in self.done for k in pc.stages):
                self.cells.remove(pc)
                out.append(pc)
        for job in list(self.jobs):
            if limit and len(out) >= limit:
                return out
            if any(k in self.failed_keys for k in job.deps):
                self.jobs.remove(job)
                self.failed_keys.add(job.key)
                self._fail(name_of(job), "not run: a job it needs failed")
            elif all(k in self.done for k in job.deps):
                self.jobs.remove(job)
                out.append(job)
        return out

    def strand_rest(self) -> None:
        """Report whatever is still queued when nothing can start any more (a stage that never came)."""
        for item in [*self.jobs, *self.cells]:
            self._fail(name_of(item), "not run: a stage it needs was never trained")
        self.jobs, self.cells = [], []

    def unfinished(self) -> bool:
        return bool(self.jobs or self.cells or self.running)

    # -- what happened -----------------------------------------------------------------------------
    def started(self, item: Job | PlannedCell) -> None:
        self.running[name_of(item)] = item.kind if isinstance(item, Job) else "cell"
        self._show()

    def succeeded(self, item: Job | PlannedCell) -> None:
        self.running.pop(name_of(item), None)
        if isinstance(item, Job):
            self.done.add(item.key)
            self.finished_jobs += 1
        else:
            self.finished_cells += 1
        self.bar.update(1)
        self._show()

    def failed(self, item: Job | PlannedCell, exc: BaseException) -> bool:
        """Record a failed attempt; True when it should be retried (bad input, StfEvalError, is not)."""
        name = name_of(item)
        self.running.pop(name, None)
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if not isinstance(exc, StfEvalError) and self.attempts[name] <= self.max_retries:
            return True
        if isinstance(item, Job):
            self.failed_keys.add(item.key)
        if isinstance(exc, StfEvalError):  # bad input: its own message, and its class if reported first
            if not self.failures:
                self.error_class = type(exc)
            self._fail(name, " ".join(str(exc).split()))
            return False
        tries = self.attempts[name]
        self._fail(name, f"{one_line(exc)}" + (f" (after {tries} attempts)" if tries > 1 else ""))
        return False

    def _fail(self, name: str, text: str) -> None:
        self.failures[name] = text
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()

    def raise_failures(self) -> None:
        if self.failures:
            first = next(iter(self.failures))
            more = f" (and {len(self.failures) - 1} more: {', '.join(list(self.failures)[1:4])}" \
                   f"{' ...' if len(self.failures) > 4 else ''})" if len(self.failures) > 1 else ""
            raise self.error_class(f"{first} failed: {self.failures[first]}{more}; finished work is kept, "
                                   f"rerun with --resume")

    def _show(self) -> None:
        kinds: dict[str, int] = {}
        for kind in self.running.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        running = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-"
        self.bar.set_postfix_str(f"jobs {self.finished_jobs}/{self.total_jobs} done, cells "
                                 f"{self.finished_cells}/{self.total_cells}; running: {running}; queued "
                                 f"{len(self.jobs)} job(s) {len(self.cells)} cell(s)"
                                 + (f"; failed {len(self.failures)}" if self.failures else ""), refresh=False)
