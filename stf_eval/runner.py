"""plan -> fit (or load) -> predict once per (model, split) -> suites -> tidy records.

Each (model, seed) cell is written atomically to ``cells/`` as soon as it finishes, so a killed run
resumes with ``--resume``. Cells are independent: ``LocalExecutor`` runs them in order; another
executor (Ray, a process pool) can be dropped in behind the same ``map`` seam.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import CheckpointCache, atomic_write_text, cache_key
from .config import PluginSpec, RunConfig, resolved_dict
from .context import EvalContext
from .data.base import DataBundle
from .data.plan import build_data, split_record
from .device import apply_numerics, resolve_device, seed_everything
from .environment import describe
from .errors import StfEvalError
from .examples import write_examples
from .models.base import BuildContext, ModelPlugin
from .params import as_dict
from .registry import MODELS, SUITES
from .seeding import seeded

log = logging.getLogger("stf_eval")


@dataclass(frozen=True)
class Cell:
    model: PluginSpec
    seed: int

    @property
    def label(self) -> str:
        return f"{self.model.name}--seed{self.seed}"


class LocalExecutor:
    """Runs cells one after the other in this process (the only executor so far)."""

    def map(self, fn: Callable[[Cell], dict], cells: Iterable[Cell]) -> list[dict]:
        return [fn(c) for c in cells]


def build_model(spec: PluginSpec, cfg: RunConfig, data: DataBundle, seed: int, device: torch.device,
                cache: CheckpointCache, measure_step_memory: bool | None = None) -> ModelPlugin:
    plugin_cls = MODELS.get(spec.plugin)
    ctx = BuildContext(spec=spec, net=cfg.net, train=cfg.train, device=device, seed=seed, cache=cache)
    if measure_step_memory is not None:
        ctx.measure_step_memory = measure_step_memory
    seed_everything(seed)
    model = plugin_cls(spec.params, ctx)
    return model.fit(data)


def cell_key(cfg: RunConfig, cell: Cell, data: DataBundle) -> str:
    """Everything that determines a cell's results: resume only reuses a cell whose key matches."""
    resolved = resolved_dict(cfg)
    return cache_key({"model": cell.model.as_dict(), "plugin": cell.model.plugin, "seed": cell.seed,
                      "net": resolved["net"], "train": resolved["train"], "suites": resolved["suites"],
                      "data": resolved["data"], "ood": resolved["ood"], "train_fp": data.train.fingerprint,
                      "test_fp": data.test.fingerprint})


def run_cell(cfg: RunConfig, cell: Cell, data: DataBundle, device: torch.device, cache: CheckpointCache,
             run_dir: Path) -> dict:
    start = time.perf_counter()
    log.info("[%s] fitting", cell.label)
    model = build_model(cell.model, cfg, data, cell.seed, device, cache)

    def build_like(bundle: DataBundle, seed: int) -> ModelPlugin:
        # reference models are not reported by the efficiency suite: no step-memory measurement
        return build_model(cell.model, cfg, bundle, seed, device, cache, measure_step_memory=False)

    ctx = EvalContext(model_name=cell.model.name, model=model, data=data, seed=cell.seed, run_dir=run_dir,
                      device=device, build_like=build_like)
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


def run(cfg: RunConfig, *, resume: bool = False, out_dir: str | None = None, executor=None,
        render: bool = True) -> Path:
    """Run every (model, seed) cell of ``cfg``; write results and the report; return the run directory."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    apply_numerics(device, cfg.deterministic)
    data = build_data(cfg)  # data errors surface before anything is written
    run_dir = Path(out_dir or cfg.output_dir)
    cells_dir = run_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cache = CheckpointCache(cfg.cache_dir)
    env = describe(device, cfg.deterministic)
    atomic_write_text(run_dir / "config.json", json.dumps(resolved_dict(cfg), indent=1))
    atomic_write_text(run_dir / "environment.json", json.dumps(env, indent=1))
    atomic_write_text(run_dir / "splits.json", json.dumps(split_record(data)))
    cells = [Cell(spec, seed) for spec in cfg.models for seed in cfg.seeds]
    log.info("run %s: %d model(s) x %d seed(s) on %s, device %s -> %s", cfg.name, len(cfg.models),
             len(cfg.seeds), data.name, device, run_dir)

    def do(cell: Cell) -> dict:
        path = cells_dir / f"{cell.label}.json"
        key = cell_key(cfg, cell, data)
        if resume and path.is_file():
            try:
                done = json.loads(path.read_text())
                if done.get("cell_key") == key:
                    log.info("[%s] done already (resume)", cell.label)
                    return done
            except json.JSONDecodeError:
                pass
        try:
            result = run_cell(cfg, cell, data, device, cache, run_dir)
        except StfEvalError:
            raise
        except Exception as exc:
            raise StfEvalError(f"{cell.label} failed: {type(exc).__name__}: {exc}") from exc
        result["cell_key"] = key
        atomic_write_text(path, json.dumps(result, indent=1, default=float))
        return result

    results = (executor or LocalExecutor()).map(do, cells)
    write_results(run_dir, results, cfg.name)
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
