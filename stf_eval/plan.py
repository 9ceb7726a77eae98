"""The run plan: every training job and evaluation cell of a run, as plain data, before anything runs.

A *build* is one fit of a model of the suite file on a training split with a seed: the cell's own
model, and the reference models a suite declares (``SuitePlugin.reference_builds``). A build is a
chain of cacheable *stages* (``BuildContext.cached``); the plan learns their cache keys by running
each build's ``fit`` with a context that records the stages instead of training or loading them.

A *job* trains one stage, keyed by its cache key, so a stage that several builds share (the
deterministic base of deterministic, temperature_scaled, stf_bnn, last_layer_bnn and ensemble member
0) is one job. A stage depends on the earlier stages of its build (an SVI stage needs its base),
except a stage that trains a fresh network from scratch (a deterministic base, e.g. an ensemble
member), which needs nothing. A *cell* (model, seed) is evaluated once every stage of its builds is in
the checkpoint cache. Executors (``stf_eval.executors``) run a plan; they import this module only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import CheckpointCache, cache_key
from .config import PluginSpec, RunConfig
from .data.base import DataBundle, Split
from .device import resolve_device
from .models.base import BuildContext
from .registry import MODELS, SUITES
from .seeding import seeded_all

log = logging.getLogger("stf_eval")

#: stage kind of ``pretrained_base``: a fresh network trained from scratch, needing no earlier stage
FROM_SCRATCH_KIND = "deterministic"


@dataclass(frozen=True)
class Cell:
    """One evaluation: a model of the suite file with one seed."""

    model: PluginSpec
    seed: int

    @property
    def label(self) -> str:
        return f"{self.model.name}--seed{self.seed}"


@dataclass(frozen=True)
class Build:
    """One fit: model ``model`` (its name in the suite file) on split ``split`` with seed ``seed``.

    ``split`` is "train" (the run's training split) or "ref-<fingerprint>" (a reference model's split).
    """

    model: str
    split: str
    seed: int


@dataclass
class Job:
    """Train one cacheable stage (``key``) by fitting ``build`` up to that stage."""

    key: str
    kind: str  # what the stage trains: deterministic, stf_bnn, mc_dropout, full_bnn, dp_sgd ...
    build: Build  # the first build planned that reaches this stage
    seed: int  # the seed the stage trains with (an ensemble member's differs from its build's)
    deps: tuple[str, ...]  # keys of the stages it needs trained first
    cached: bool  # already in the checkpoint cache
    epochs: int
    examples: int
    seconds: float | None = None  # training seconds as measured, when cached

    @property
    def label(self) -> str:
        ref = "" if self.build.split == "train" else " (reference)"
        return f"{self.kind}[{self.build.model} seed {self.build.seed}{ref}] {self.key[:8]}"


@dataclass
class PlannedCell:
    cell: Cell
    stages: tuple[str, ...]  # keys of every stage of the cell's builds (its own and its references')
    done: bool = False  # finished in an earlier run (resume)


@dataclass
class Plan:
    jobs: dict[str, Job]  # by key, each after its dependencies
    cells: list[PlannedCell]
    splits: dict = field(default_factory=dict)  # reference builds' training splits by name (RowRef or Split)
    note: str = ""  # e.g. planned from the config because the data files are absent

    def pending_cells(self) -> list[PlannedCell]:
        return [c for c in self.cells if not c.done]

    def pending_jobs(self) -> list[Job]:
        """Jobs to run: not cached and needed by a cell still to evaluate (with their dependencies)."""
        needed: set[str] = set()
        stack = [k for c in self.pending_cells() for k in c.stages]
        while stack:
            key = stack.pop()
            if key in needed:
                continue
            needed.add(key)
            stack.extend(self.jobs[key].deps)
        return [j for k, j in self.jobs.items() if k in needed and not j.cached]

    def counts(self) -> dict[str, int]:
        """Jobs by kind (all of them, cached or not)."""
        out: dict[str, int] = {}
        for job in self.jobs.values():
            out[job.kind] = out.get(job.kind, 0) + 1
        return out


# -- building models --------------------------------------------------------------------------------

def build_model(spec: PluginSpec, cfg: RunConfig, data: DataBundle, seed: int, device: torch.device,
                cache: CheckpointCache, context_cls: type[BuildContext] = BuildContext, **context_args):
    """Construct model ``spec`` with the run's recipe and fit it on ``data`` (stages load from the cache)."""
    plugin_cls = MODELS.get(spec.plugin)
    ctx = context_cls(spec=spec, net=cfg.net, train=cfg.train, device=device, seed=seed, cache=cache,
                      **context_args)
    # the build draws from generators named by (seed, plugin) and leaves the caller's global state alone:
    # a reference model built inside a suite neither depends on nor changes what the suite draws next
    with seeded_all(seed, "build", spec.plugin, device=device):
        model = plugin_cls(spec.params, ctx)
        return model.fit(data)


@dataclass
class RecordingContext(BuildContext):
    """Records each stage's (key, spec) instead of training or loading it (``fit`` walks the stages)."""

    stages: list = field(default_factory=list)
    stages_only = True

    def cached(self, spec, net, train_fn):
        self.stages.append((cache_key(spec), spec))
        return 0.0, True, {"planned": True}


@dataclass
class JobContext(BuildContext):
    """Trains (or loads) stage ``target``, loads the stages it ``needs``, and skips every other stage."""

    target: str = ""
    needs: tuple = ()
    result: dict | None = None
    stages_only = True

    def cached(self, spec, net, train_fn):
        key = cache_key(spec)
        if key == self.target or key in self.needs:
            seconds, cached, meta = super().cached(spec, net, train_fn)
            if key == self.target:
                self.result = {"seconds": seconds, "cached": cached}
            return seconds, cached, meta
        return 0.0, True, {"planned": True}


def stage_epochs(spec: dict) -> int:
    params = spec.get("params") or {}
    for name in ("svi_epochs", "epochs"):
        if isinstance(params.get(name), int):
            return params[name]
    return int((spec.get("train") or {}).get("epochs", 0))


# -- planning --------------------------------------------------------------------------------------

@dataclass
class RowRef:
    """A training split kept as row numbers into the run's train + val + test (not as pixels)."""

    rows: np.ndarray  # int64 [n], into the concatenation train, val, test
    indices: np.ndarray | None  # the split's own ``indices``

    def split(self, data: DataBundle) -> Split:
        parts = [data.train, data.val, data.test]
        x = torch.empty((len(self.rows), *data.train.x.shape[1:]), dtype=data.train.x.dtype)
        y = torch.empty(len(self.rows), dtype=data.train.y.dtype)
        start = 0
        for part in parts:
            inside = (self.rows >= start) & (self.rows < start + len(part))
            take = torch.as_tensor(np.flatnonzero(inside))
            src = torch.as_tensor(self.rows[inside] - start)
            x[take], y[take] = part.x[src], part.y[src]
            start += len(part)
        return Split(x, y, self.indices)


class RowIndex:
    """Finds the rows of the run's data a split consists of, by content, so that a plan holding many
    reference splits (membership: R halves per seed) keeps row numbers instead of copies of images."""

    def __init__(self, data: DataBundle):
        self.where: dict[bytes, int] = {}
        start = 0
        for part in (data.train, data.val, data.test):
            for i, digest in enumerate(_row_digests(part)):
                self.where.setdefault(digest, start + i)
            start += len(part)

    def compact(self, split: Split) -> Split | RowRef:
        rows = [self.where.get(d) for d in _row_digests(split)]
        if any(r is None for r in rows):  # rows from elsewhere: keep the split itself
            return split
        return RowRef(np.asarray(rows, dtype=np.int64), split.indices)


def _row_digests(split: Split) -> list[bytes]:
    x = split.x.detach().cpu().contiguous().numpy()
    y = split.y.detach().cpu().numpy()
    return [hashlib.blake2b(x[i].tobytes() + y[i].tobytes(), digest_size=16).digest() for i in range(len(y))]


def make_plan(cfg: RunConfig, data: DataBundle, cache: CheckpointCache, *, done: set[str] = frozenset(),
              note: str = "") -> Plan:
    """Every job and cell of ``cfg`` on ``data``; ``done``: labels of cells finished earlier (resume)."""
    # planning trains nothing, but cache keys name the device type and numerics (models/base.py key_spec),
    # so stages are recorded on the device the run trains on
    device = resolve_device(cfg.device)
    suites = [SUITES.get(s.plugin)(s.params, s.name) for s in cfg.suites]
    jobs: dict[str, Job] = {}
    splits: dict[str, Split | RowRef] = {}
    rows = None
    cells = []
    for spec in cfg.models:
        for seed in cfg.seeds:
            cell = Cell(spec, seed)
            builds = [(Build(spec.name, "train", seed), data)]
            # a model supplied already trained (an adapter) has no recipe to repeat: no reference builds
            retrainable = getattr(MODELS.get(spec.plugin), "retrainable", True)
            for suite in suites if retrainable else ():
                declared = getattr(suite, "reference_builds", None)  # plugins not derived from SuitePlugin
                for split, ref_seed in (declared(spec.name, data, seed) if declared else ()):
                    name = f"ref-{split.fingerprint}"
                    if name not in splits and not note:  # placeholder data: nothing will run
                        rows = rows or RowIndex(data)
                        splits[name] = rows.compact(split)
                    builds.append((Build(spec.name, name, ref_seed), data.with_train(split)))
            keys: list[str] = []
            for build, bundle in builds:
                model = build_model(spec, cfg, bundle, build.seed, device, cache, context_cls=RecordingContext)
                earlier: list[str] = []
                for key, stage_spec in model.ctx.stages:
                    kind = stage_spec.get("kind", "stage")
                    if key not in jobs:
                        deps = () if kind == FROM_SCRATCH_KIND else tuple(earlier)
                        meta = cache.meta(key)
                        jobs[key] = Job(key=key, kind=kind, build=build, deps=deps, cached=meta is not None,
                                        seed=int(stage_spec.get("seed", build.seed)),
                                        epochs=stage_epochs(stage_spec), examples=len(bundle.train),
                                        seconds=None if meta is None else float(meta.get("seconds", 0.0)))
                    earlier.append(key)
                    if key not in keys:
                        keys.append(key)
            cells.append(PlannedCell(cell, tuple(keys), done=cell.label in done))
    return Plan(jobs=jobs, cells=cells, splits=splits, note=note)


# -- running one job or cell (what an executor calls, in process or on a worker) -----------------

def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under taskset or a
    container's cpuset; else every CPU of the machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """torch threads of each of ``workers`` local worker processes when ``num_threads`` is unset."""
    return max(1, usable_cpus() // workers)


def job_threads(cfg: RunConfig) -> int:
    """torch's CPU threads for every job and cell of the run: ``num_threads`` if set; else, with a pool of
    N > 1 local workers, CPUs // N each (the cores shared out, not oversubscribed); else torch's default
    in this process. The run records it (environment.json ``cpu_threads``)."""
    if cfg.num_threads:
        return cfg.num_threads
    if cfg.executor.kind == "local" and cfg.executor.workers > 1:
        return default_threads(cfg.executor.workers)
    return torch.get_num_threads()


@dataclass
class Work:
    """Everything a job or a cell needs, in one picklable object (shipped once to Ray's object store).

    ``evaluate(work, cell, cache, run_dir, device) -> dict`` evaluates a cell (the runner's function).
    ``threads``: torch's CPU threads for every job and cell, wherever it runs (the driver sets it from
    ``job_threads``): kernels sum in another order with another thread count, so a worker uses the
    driver's count to give the driver's numbers.
    """

    cfg: RunConfig
    data: DataBundle
    splits: dict
    cache_root: str
    run_dir: str
    evaluate: Callable
    threads: int = 0

    def bundle(self, split: str) -> DataBundle:
        if split == "train":
            return self.data
        ref = self.splits[split]
        return self.data.with_train(ref.split(self.data) if isinstance(ref, RowRef) else ref)

    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def _threads(self) -> None:
        n = self.cfg.num_threads or self.threads
        if n and torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def run_job(self, job: Job, cache_root: str | None = None) -> dict:
        """Train (or load) the job's stage into the cache; return its seconds and whether it was cached."""
        self._threads()
        cache = CheckpointCache(cache_root or self.cache_root)
        spec = self.cfg.model(job.build.model)
        # a membership reference's stages report no step memory: only a cell's own model is measured, and
        # each measurement is a fresh process (a fraction of a second, times tens of reference stages)
        extra = {} if job.build.split == "train" else {"measure_step_memory": False}
        model = build_model(spec, self.cfg, self.bundle(job.build.split), job.build.seed, self.device(), cache,
                            context_cls=JobContext, target=job.key, needs=job.deps, **extra)
        if model.ctx.result is None:
            raise RuntimeError(f"job {job.label}: fitting {job.build} never reached stage {job.key}")
        return model.ctx.result

    def run_cell(self, cell: Cell, cache_root: str | None = None, run_dir: str | None = None) -> dict:
        self._threads()
        cache = CheckpointCache(cache_root or self.cache_root)
        return self.evaluate(self, cell, cache, Path(run_dir or self.run_dir), self.device())


# -- the printed plan and its cost ---------------------------------------------------------------

def seconds_per_example_epoch(plan: Plan) -> dict[str, float]:
    """Training seconds per (example x epoch) by stage kind, from cached stages' recorded seconds."""
    totals: dict[str, list[float]] = {}
    for job in plan.jobs.values():
        if job.seconds and job.epochs and job.examples:
            t = totals.setdefault(job.kind, [0.0, 0.0])
            t[0] += job.seconds
            t[1] += job.epochs * job.examples
    return {kind: s / n for kind, (s, n) in totals.items() if n}


def estimate(plan: Plan) -> tuple[float | None, int, list[str]]:
    """(estimated seconds of the pending jobs or None, their example-epochs, kinds without a measurement)."""
    rates = seconds_per_example_epoch(plan)
    fallback = max(rates.values()) if rates else None  # an unmeasured kind: the dearest measured rate
    seconds, units, unmeasured = 0.0, 0, set()
    for job in plan.pending_jobs():
        units += job.epochs * job.examples
        rate = rates.get(job.kind)
        if rate is None:
            unmeasured.add(job.kind)
            rate = fallback
        if rate is not None:
            seconds += rate * job.epochs * job.examples
    return (seconds if rates else None), units, sorted(unmeasured)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan, keys_known: bool = True) -> str:
    pending = {j.key for j in plan.pending_jobs()}
    lines = [f"jobs: {len(plan.jobs)} training stage(s), {len(pending)} to train "
             f"({', '.join(f'{k} {n}' for k, n in sorted(plan.counts().items()))})"]
    if plan.note:
        lines.append(f"note: {plan.note}")
    width = max([6, *(len(str(j.seed)) for j in plan.jobs.values())])
    lines.append(f"  {'kind':<16} {'model':<20} {'seed':>{width}} {'split':<22} {'key':<8} {'status':<8} "
                 f"{'epochs x examples':>18}  needs")
    for job in plan.jobs.values():
        status = "?" if not keys_known else "cached" if job.cached else "train" if job.key in pending else "unused"
        key = job.key[:8] if keys_known else "?"
        deps = ", ".join(d[:8] for d in job.deps) if keys_known else ", ".join(plan.jobs[d].kind for d in job.deps)
        lines.append(f"  {job.kind:<16} {job.build.model:<20} {job.seed:>{width}} {job.build.split[:22]:<22} "
                     f"{key:<8} {status:<8} {f'{job.epochs} x {job.examples}':>18}  {deps or '-'}")
    lines.append(f"cells: {len(plan.cells)} (model, seed), {len(plan.pending_cells())} to evaluate")
    for pc in plan.cells:
        lines.append(f"  {pc.cell.label:<28} {'done' if pc.done else 'to run':<7} {len(pc.stages)} stage(s)")
    seconds, units, unmeasured = estimate(plan)
    by_kind: dict[str, int] = {}
    for job in plan.pending_jobs():
        by_kind[job.kind] = by_kind.get(job.kind, 0) + job.epochs * job.examples
    cost = f"cost: {units:,} example-epochs of training to do"
    if by_kind:
        cost += f" ({', '.join(f'{k} {v:,}' for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]))})"
    if seconds is not None:
        cost += f", about {duration(seconds)} on one device of the kind that trained the cached stages"
        if unmeasured:
            cost += f" (no cached stage of {', '.join(unmeasured)}: priced at the dearest measured rate)"
    elif units:
        cost += "; nothing cached yet to time them by (run a smaller configuration first)"
    lines.append(cost)
    return "\n".join(lines)


# -- data for a plan --------------------------------------------------------------------------------

def data_for_plan(cfg: RunConfig) -> tuple[DataBundle, str]:
    """The run's data, or, when its files are absent, placeholder splits of the sizes the config implies.

    Placeholders (zeros, never materialised) give the right job and cell counts and costs, but not the
    cache keys: those hash the training images. Returns (data, a note saying which).
    """
    from .data.plan import build_data
    from .errors import DataError
    from .registry import DATASETS

    try:
        return build_data(cfg), ""
    except DataError as exc:
        info = getattr(DATASETS.get(cfg.data.dataset), "plan_info", None)
        if info is None:
            raise
        reason = str(exc)
    shape, n_train, n_test = info
    dc = cfg.data
    n_val = int(round(n_train * dc.val_fraction))
    n_train -= n_val
    if dc.max_train:
        n_train, n_val = min(n_train, dc.max_train), min(n_val, max(1, dc.max_train // 5)) if n_val else 0
    if dc.max_test:
        n_test = min(n_test, dc.max_test)
    num_classes = DATASETS.get(dc.dataset).num_classes

    def placeholder(n: int, part: str) -> Split:
        import numpy as np

        x = torch.zeros(1, *shape).expand(n, *shape)
        y = torch.arange(n) % num_classes
        return Split(x, y, np.arange(n), _fingerprint=f"placeholder-{part}-{n}")

    data = DataBundle(name=dc.dataset, num_classes=num_classes, input_shape=tuple(shape),
                      train=placeholder(n_train, "train"), val=placeholder(n_val, "val"),
                      test=placeholder(n_test, "test"), mean=(0.5,) * shape[0], std=(0.25,) * shape[0], ood={},
                      split_seed=dc.split_seed)
    note = (f"planned from the config: {reason.split(':')[0]} here, so the splits are placeholders of the "
            f"sizes the config implies; job and cell counts and costs hold, cache keys and 'cached' do not")
    return data, note
