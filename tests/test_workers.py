"""The local executor's pool of worker processes (``[executor] workers = N``): jobs and cells side by
side in spawned processes, dependencies respected, the thread rule, quiet workers, failures and dying
workers reported on one line, Ctrl-C, and the same results.csv as a one-worker run.

The fakes below live at module level (no conftest import at the top): a spawned worker unpickles them
by importing this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

WAIT_S = 60  # how long a job waits for its partner to start: a serial executor would time out


def _wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never started alongside")
        time.sleep(0.05)


@dataclasses.dataclass
class FakeWork:
    """Stands for ``plan.Work``: jobs write marker files into ``root``, checking their dependencies'."""

    root: str
    cfg: SimpleNamespace
    threads: int = 0

    def run_job(self, job):
        root = Path(self.root)
        (root / f"{job.key}.started").touch()
        for dep in job.deps:
            if not (root / f"{dep}.done").exists():
                raise RuntimeError(f"{job.key} started before {dep} was trained")
        if job.kind == "pair":  # started together with its partner or never
            _wait_for(root / f"{job.seed}.started", f"job {job.seed}")
        elif job.kind == "boom":
            raise RuntimeError("boom\non two lines")
        elif job.kind == "die" and not (root / "died").exists():  # once, while its neighbour runs
            _wait_for(root / f"{job.seed}.started", f"job {job.seed}")
            (root / "died").touch()
            os._exit(3)
        elif job.kind == "slow":
            time.sleep(1.0)
        elif job.kind == "sleep":
            (root / f"{job.key}.pid").write_text(str(os.getpid()))
            time.sleep(WAIT_S)
        with open(root / "attempts.log", "a") as fh:
            fh.write(f"{job.key}\n")
        (root / f"{job.key}.done").touch()
        return {"seconds": 0.0, "cached": False}

    def run_cell(self, cell):
        for key in self.cfg.stages[cell.label]:
            if not (Path(self.root) / f"{key}.done").exists():
                raise RuntimeError(f"{cell.label} evaluated before {key} was trained")
        return {"pid": os.getpid(), "threads": torch.get_num_threads(),
                "tqdm_disable": os.environ.get("TQDM_DISABLE"), "quiet": os.environ.get("STF_EVAL_QUIET"),
                "log_level": logging.getLogger("stf_eval").level,
                "sigint": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                "allocator": _allocator_applied()}


def _allocator_applied() -> bool:
    from stf_eval import allocator

    return allocator._applied


def _plan(jobs: list[tuple[str, str, tuple, str]], cells: dict[str, tuple]):
    """jobs: (key, kind, deps, partner); cells: label -> stage keys."""
    from stf_eval.config import PluginSpec
    from stf_eval.plan import Build, Cell, Job, Plan, PlannedCell

    plan_jobs = {key: Job(key=key, kind=kind, build=Build("m", "train", 0), seed=partner, deps=deps, cached=False,
                          epochs=1, examples=1) for key, kind, deps, partner in jobs}
    plan_cells = [PlannedCell(Cell(PluginSpec(label, "deterministic", None), 0), stages)
                  for label, stages in cells.items()]
    return Plan(jobs=plan_jobs, cells=plan_cells)


def _work(tmp_path, cells, num_threads=0):
    stages = {f"{label}--seed0": keys for label, keys in cells.items()}
    return FakeWork(root=str(tmp_path), cfg=SimpleNamespace(num_threads=num_threads, stages=stages,
                                                            allocator="reuse"))


def _executor(workers=2, max_retries=1):
    from stf_eval.config import ExecutorConfig
    from stf_eval.executors.local import LocalExecutor

    return LocalExecutor(ExecutorConfig(workers=workers, max_retries=max_retries), progress=False)


def test_pool_runs_independent_jobs_side_by_side_after_their_dependencies(tmp_path):
    """Two independent jobs must be running at once (each waits for the other), a dependent job waits
    for its dependency, each cell for its stages; workers run quiet at CPUs // workers threads."""
    from stf_eval.plan import default_threads

    cells = {"x": ("a", "c"), "y": ("b",)}
    plan = _plan([("a", "pair", (), "b"), ("b", "pair", (), "a"), ("c", "stage", ("a",), "")], cells)
    kept = {}
    start = time.monotonic()
    _executor().run(plan, _work(tmp_path, cells), lambda cell, r: kept.setdefault(cell.label, r))
    assert set(kept) == {"x--seed0", "y--seed0"}
    assert time.monotonic() - start < WAIT_S
    for result in kept.values():
        assert result["pid"] != os.getpid()
        assert result["threads"] == default_threads(2)
        assert result["tqdm_disable"] == "1" and result["quiet"] == "1"
        assert result["log_level"] == logging.WARNING and result["sigint"]
        assert result["allocator"] == (_glibc() is not None)  # the run's allocator setting, in force


def _glibc():
    from stf_eval.allocator import _glibc

    return _glibc()


def test_pool_reports_failures_and_a_dying_worker_on_one_line_and_runs_the_rest(tmp_path, monkeypatch):
    """A raising job is retried, then reported on one line; a worker that dies is a failed attempt of
    the job it ran only (its neighbour, taken down with the pool, runs again uncharged, in a new pool);
    a cell needing a failed job is not run; the rest finishes, at ``num_threads`` threads."""
    from stf_eval.errors import StfEvalError
    from stf_eval.executors.schedule import Schedule, name_of, one_line

    attempts = []
    real = Schedule.failed

    def record(self, item, exc):
        attempts.append((name_of(item).split()[1].split("[")[0], one_line(exc)))
        return real(self, item, exc)

    monkeypatch.setattr(Schedule, "failed", record)
    cells = {"bad": ("boom",), "dead": ("die",), "fine": ("ok", "ok2")}
    plan = _plan([("die", "die", (), "ok"), ("ok", "slow", (), ""), ("boom", "boom", (), ""),
                  ("ok2", "stage", ("ok",), "")], cells)
    kept = {}
    with pytest.raises(StfEvalError) as err:
        _executor(max_retries=1).run(plan, _work(tmp_path, cells, num_threads=2),
                                     lambda cell, r: kept.setdefault(cell.label, r))
    assert str(err.value).startswith("job boom[m seed 0] boom failed: RuntimeError: boom on two lines "
                                     "(after 2 attempts) (and 1 more: cell bad--seed0)")
    assert sorted(attempts) == [
        ("boom", "RuntimeError: boom on two lines"), ("boom", "RuntimeError: boom on two lines"),
        ("die", "WorkerDied: the worker process running it ended abruptly (killed, e.g. out of memory, or "
                "crashed)")]
    assert set(kept) == {"dead--seed0", "fine--seed0"} and kept["fine--seed0"]["threads"] == 2
    assert sorted((tmp_path / "attempts.log").read_text().split()) == ["die", "ok", "ok2"]


def test_pool_ctrl_c_ends_the_workers_at_once(tmp_path):
    """KeyboardInterrupt in the driver (here: while keeping a cell) cancels what is queued and ends the
    worker still busy with a long job, instead of waiting for it."""
    cells = {"quick": ("ok",), "slow": ("long",)}
    plan = _plan([("long", "sleep", (), ""), ("ok", "stage", (), "")], cells)

    def interrupt(cell, result):
        # the interrupt must find the long job running: under load its worker may start after the cell ends
        deadline = time.monotonic() + WAIT_S / 4
        while not (tmp_path / "long.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _executor().run(plan, _work(tmp_path, cells), interrupt)
    assert time.monotonic() - start < WAIT_S / 2
    pid = int((tmp_path / "long.pid").read_text())
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)


def test_workers_option_and_flag(tmp_path):
    from conftest import tiny_toml

    from stf_eval.cli import _parser, _run_overrides
    from stf_eval.config import load_config
    from stf_eval.errors import ConfigError

    args = _parser().parse_args(["run", "x.toml", "--workers", "3"])
    overrides = _run_overrides(args)
    assert "executor.workers=3" in overrides
    assert load_config(text=tiny_toml(), overrides=overrides).executor.workers == 3
    assert load_config(text=tiny_toml()).executor.workers == 1
    with pytest.raises(ConfigError, match=r"executor\.workers: expected an integer >= 1"):
        load_config(text=tiny_toml(), overrides=["executor.workers=0"])
    from stf_eval.plan import default_threads, job_threads

    cfg = load_config(text=tiny_toml(), overrides=["executor.workers=2"])
    assert job_threads(cfg) == default_threads(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert job_threads(load_config(text=tiny_toml(), overrides=["executor.workers=2", "num_threads=3"])) == 3


def _results(run_dir):
    from test_ray import _results as without_timing  # the timing metrics the Ray comparison leaves out

    return without_timing(run_dir)


@pytest.mark.slow  # ~40 s on 2 shared cores (the workers' start is most of it): CI's slow step
def test_two_workers_give_the_one_worker_results_from_cold_caches(tmp_path):
    """The same tiny suite (with the membership suite's reference models, cells landing on either
    worker) from cold caches, in this process and in two workers, both at num_threads = 1: one
    results.csv (timing metrics aside), the same run-directory files, and cpu_threads recorded."""
    import json

    import pandas as pd
    from conftest import tiny_toml

    from stf_eval.config import load_config
    from stf_eval.runner import run

    models = "[models.deterministic]\n[models.stf_bnn]\nsvi_epochs = 1\ntest_samples = 4\n"
    suites = "[suites.calibration]\nbootstrap = 5\nseverities = [1]\nshifts = ['gaussian_noise']\n" \
             "[suites.membership]\nnum_references = 3\npool_size = 240\ntop_exposed = 4\n"
    runs = {}
    for workers in (1, 2):
        cfg = load_config(text=tiny_toml(models=models, suites=suites),
                          overrides=[f'cache_dir="{tmp_path / f"cache{workers}"}"', "num_threads=1",
                                     "train.epochs=2", f"executor.workers={workers}"])
        runs[workers] = run(cfg, out_dir=str(tmp_path / f"run{workers}"), render=False, progress=False)
    expected = _results(runs[1])
    assert len(expected) > 20 and (expected["suite"] == "membership").any()
    pd.testing.assert_frame_equal(_results(runs[2]), expected)

    def files(run_dir):
        return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    assert files(runs[2]) == files(runs[1]) and any(f.startswith("examples/") for f in files(runs[1]))
    for workers in (1, 2):
        assert json.loads((runs[workers] / "environment.json").read_text())["cpu_threads"] == 1


def test_in_process_objects_run_in_this_process_whatever_workers_says(tmp_path, cache_dir):
    """stf_eval.evaluate with a live network: a suite file's workers = 2 becomes 1 for the run (the
    objects cannot reach a worker process); an explicit pool executor is a one-line error."""
    from test_api import NO_SHIFT, _mlp

    import stf_eval
    from stf_eval.errors import ConfigError

    kw = dict(data="digits", split={"max_train": 200, "max_test": 100}, suites={"calibration": NO_SHIFT},
              render=False, cache_dir=str(cache_dir))
    run = stf_eval.evaluate(models={"m": _mlp()}, out=tmp_path / "run", overrides=["executor.workers=2"], **kw)
    assert run.config["executor"]["workers"] == 1 and len(run.results) > 0
    with pytest.raises(ConfigError, match="only run in this process"):
        stf_eval.evaluate(models={"m": _mlp()}, out=tmp_path / "run2", executor=_executor(workers=2), **kw)
