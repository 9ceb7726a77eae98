"""plan -> train the plan's jobs -> evaluate each (model, seed) cell -> tidy records -> report.

The plan (``stf_eval/plan.py``) lists every training stage the run needs, de-duplicated by cache key,
and the cells. An executor (``local``: in order, in this process; ``ray``: tasks on a cluster) trains
the stages into the checkpoint cache and evaluates each cell once its stages are there: fit (every
stage a cache hit) -> predict once per (model, split) -> suites -> records. This process writes each
finished cell atomically to ``cells/``, so a killed run resumes with ``--resume``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from .cache import CheckpointCache, atomic_write_text, cache_key
from .config import RunConfig, resolved_dict
from .context import EvalContext
from .data.base import DataBundle
from .data.plan import build_data, split_record
from .device import apply_numerics, resolve_device
from .environment import describe
from .errors import ConfigError
from .examples import write_examples
from .models.base import ModelPlugin
from .params import as_dict
from .paths import inside
from .plan import Cell, Plan, Work, build_model, job_threads, make_plan
from .registry import MODELS, SUITES
from .seeding import seeded

log = logging.getLogger("stf_eval")

__all__ = ["Cell", "build_model", "cell_key", "evaluate_cell", "plan_run", "run", "write_results"]


def cell_key(cfg: RunConfig, cell: Cell, data: DataBundle) -> str:
    """Everything that determines a cell's results: resume only reuses a cell whose key matches."""
    resolved = resolved_dict(cfg)
    parts = {"model": cell.model.as_dict(), "plugin": cell.model.plugin, "seed": cell.seed,
             "figures": cfg.saves_figures(cell.seed),
             "net": resolved["net"], "train": resolved["train"], "suites": resolved["suites"],
             "data": resolved["data"], "ood": resolved["ood"], "train_fp": data.train.fingerprint,
             "test_fp": data.test.fingerprint}
    for spec in cfg.suites:  # other models' recipes a suite measures this cell against
        declared = getattr(SUITES.get(spec.plugin)(spec.params, spec.name), "compared_specs", None)
        compared = declared(cell.model, cfg.models) if declared else None  # plugins not derived from SuitePlugin
        if compared:
            parts.setdefault("compared", {})[spec.name] = compared
    return cache_key(parts)


def evaluate_cell(work: Work, cell: Cell, cache: CheckpointCache, run_dir: Path, device: torch.device) -> dict:
    """Fit the cell's model (from the cache once its jobs ran) and run every suite on it."""
    cfg, data = work.cfg, work.data
    start = time.perf_counter()
    log.info("[%s] fitting", cell.label)
    model = build_model(cell.model, cfg, data, cell.seed, device, cache)

    def build_like(bundle: DataBundle, seed: int) -> ModelPlugin:
        # reference models are not reported by the efficiency suite: no step-memory measurement
        return build_model(cell.model, cfg, bundle, seed, device, cache, measure_step_memory=False)

    ctx = EvalContext(model_name=cell.model.name, model=model, data=data, seed=cell.seed, run_dir=run_dir,
                      device=device, build_like=build_like, save_figures=cfg.saves_figures(cell.seed),
                      run_models=cfg.models)
    suite_seconds = {}
    for suite_spec in cfg.suites:
        suite = SUITES.get(suite_spec.plugin)(suite_spec.params, suite_spec.name)
        ctx.suite = suite_spec.name
        reason = suite.skip_reason(model, data)
        if reason:
            ctx.note(f"skipped: {reason}")
            continue
        log.info("[%s] suite %s", cell.label, suite_spec.name)
        t0 = time.perf_counter()
        with seeded(cell.seed, "suite", suite_spec.name, cell.model.name, device=device):
            suite.run(model, data, ctx)
        suite_seconds[suite_spec.name] = time.perf_counter() - t0
        if ctx.examples.get(suite_spec.name):
            write_examples(run_dir, suite_spec.name, cell.model.name, cell.seed, ctx.examples[suite_spec.name])
    caps = model.capabilities()
    return {
        "model": cell.model.name, "plugin": cell.model.plugin, "seed": cell.seed,
        "params": as_dict(cell.model.params),
        "capabilities": {"stochastic": caps.stochastic, "differentiable": caps.differentiable,
                         "n_samples": caps.n_samples, "notes": caps.notes},
        "efficiency": model.efficiency(),
        "suite_seconds": suite_seconds,
        "cell_seconds": time.perf_counter() - start,
        "records": ctx.records, "figures": ctx.figures, "notes": ctx.notes,
    }


def check_before_writing(cfg: RunConfig, data: DataBundle) -> None:
    """Resolve every plugin, the net (a user callable too, with its options) and the data before the run
    directory exists: a bad name or option is a one-line error that leaves nothing behind."""
    from .nets.common import build_net

    for spec in cfg.models:
        MODELS.get(spec.plugin)
    for spec in cfg.suites:
        SUITES.get(spec.plugin)
    with seeded(0, "check-net"):  # builds one throw-away instance; draws nothing from the run's generators
        build_net(cfg.net, data.input_shape, data.num_classes, data.mean, data.std)


def prepare_run_dir(run_dir: Path) -> Path:
    """Create the output directory, or say in one line why it cannot be used."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir}: exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output directory {run_dir}: cannot be created ({exc.strerror or exc})") from exc
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {run_dir}: not writable")
    return run_dir.resolve()


def finished_cells(cells_dir: Path, keys: dict[str, str]) -> dict[str, dict]:
    """Cells of an earlier run whose saved key matches (``--resume``)."""
    out = {}
    for label, key in keys.items():
        path = cells_dir / f"{label}.json"
        try:
            done = json.loads(path.read_text()) if path.is_file() else None
        except (json.JSONDecodeError, OSError):
            done = None
        if done and done.get("cell_key") == key:
            out[label] = done
    return out


def plan_run(cfg: RunConfig, data: DataBundle, *, done: set[str] = frozenset(), note: str = "") -> Plan:
    return make_plan(cfg, data, CheckpointCache(cfg.cache_dir), done=done, note=note)


def run(cfg: RunConfig, *, resume: bool = False, out_dir: str | None = None, executor=None,
        render: bool = True, progress: bool = True, data: DataBundle | None = None) -> Path:
    """Run every (model, seed) cell of ``cfg``; write results and the report; return the run directory.

    ``executor``: an object with ``run(plan, work, on_cell)``; default from ``cfg.executor``.
    ``data``: an already split DataBundle to use instead of building ``cfg.data`` (stf_eval.evaluate).
    """
    from .executors import make_executor

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    apply_numerics(device, cfg.deterministic)
    data = data if data is not None else build_data(cfg)  # data errors surface before anything is written
    check_before_writing(cfg, data)
    run_dir = Path(out_dir or cfg.output_dir)
    cells_dir = run_dir / "cells"
    cells = [Cell(spec, seed) for spec in cfg.models for seed in cfg.seeds]
    keys = {c.label: cell_key(cfg, c, data) for c in cells}
    results = finished_cells(cells_dir, keys) if resume else {}
    for label in results:
        log.info("[%s] done already (resume)", label)
    plan = plan_run(cfg, data, done=set(results))  # planning errors, too, surface before any write
    run_dir = prepare_run_dir(run_dir)
    cells_dir = inside(run_dir, "cells")
    cells_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(resolved_dict(cfg), indent=1))
    threads = job_threads(cfg)  # what every job and cell runs at, in this process or a worker
    atomic_write_text(run_dir / "environment.json", json.dumps(describe(device, cfg.deterministic, threads),
                                                               indent=1))
    atomic_write_text(run_dir / "splits.json", json.dumps(split_record(data)))
    log.info("run %s: %d model(s) x %d seed(s) on %s, device %s -> %s; %d of %d training job(s) and %d of %d "
             "cell(s) to run", cfg.name, len(cfg.models), len(cfg.seeds), data.name, device, run_dir,
             len(plan.pending_jobs()), len(plan.jobs), len(plan.pending_cells()), len(plan.cells))

    def keep(cell: Cell, result: dict) -> None:
        result["cell_key"] = keys[cell.label]
        atomic_write_text(inside(cells_dir, f"{cell.label}.json"), json.dumps(result, indent=1, default=float))
        results[cell.label] = result

    work = Work(cfg=cfg, data=data, splits=plan.splits, cache_root=str(Path(cfg.cache_dir).expanduser().resolve()),
                run_dir=str(run_dir), evaluate=evaluate_cell, threads=threads)
    (executor or make_executor(cfg.executor, progress=progress)).run(plan, work, keep)
    write_results(run_dir, [results[c.label] for c in cells], cfg.name)
    if render:
        from .report.html import render_run

        render_run(run_dir)
    return run_dir


def write_results(run_dir: Path, cells: list[dict], name: str) -> None:
    from .records import to_frame

    records = [r for c in cells for r in c["records"]]
    df = to_frame(records)
    atomic_write_text(run_dir / "results.csv", df.to_csv(index=False))
    summary = {
        "name": name,
        "cells": [{k: c[k] for k in ("model", "plugin", "seed", "params", "capabilities", "efficiency",
                                     "suite_seconds", "cell_seconds")} for c in cells],
        "figures": [f for c in cells for f in c["figures"]],
        "notes": [n for c in cells for n in c["notes"]],
        "records": records,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=1, default=float))
