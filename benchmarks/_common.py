"""Shared by the benchmark scripts: the quick suite's data and net, model building, and interleaved timing.

Every benchmark builds what it measures through the project's own code (``load_config`` on
suites/quick.toml, ``build_data``, the registered model plugins) and times two things A and B side by
side in one process: repetitions alternate A, B, B, A, ... so that slow drifts of a shared machine
hit both, and the ratio A/B of each repetition is reported as median, min and max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # training progress bars would bury the figures
os.environ.setdefault("STF_EVAL_STEP_MEMORY", "0")  # no fresh-process step-memory measurement per fitted stage

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "suites" / "quick.toml"


def parser(description: str, repeats: int = 5) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help="timed repetitions of each side (default %(default)s)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                   help="torch CPU threads (default 1, or $BENCH_THREADS; see README)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--cache-dir", default=None,
                   help="checkpoint cache for the pretrained base net (default: $STF_EVAL_CACHE or ~/.cache/stf-eval)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of suites/quick.toml, as with stf-eval run --set")
    return p


def setup(args) -> tuple:
    """(cfg, data, device) for suites/quick.toml with the command line's overrides."""
    import torch

    from stf_eval.config import load_config
    from stf_eval.data.plan import build_data
    from stf_eval.device import resolve_device

    torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if args.cache_dir:
        overrides.append(f'cache_dir="{args.cache_dir}"')
    cfg = load_config(QUICK, overrides=overrides)
    from stf_eval.allocator import apply

    apply(cfg.allocator)  # malloc as in a run's processes (`--set allocator="system"`: glibc's defaults)
    return cfg, build_data(cfg), resolve_device(args.device)


def suite_params(cfg, plugin: str) -> dict:
    """The parameters of model plugin ``plugin`` as the suite file (and its --set overrides) give
    them, or {} (the plugin's defaults) when the suite has no such model."""
    from stf_eval.params import as_dict

    for spec in cfg.models:
        if spec.plugin == plugin:
            return as_dict(spec.params)
    return {}


def build(name: str, cfg, data, device, seed: int = 0, cache="", **params):
    """A fitted model plugin ``name`` with the suite file's recipe and ``params`` over its defaults.

    ``cache``: "" = the suite file's checkpoint cache, None = no caching (every stage trains), or a
    CheckpointCache object.
    """
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.params import parse_params
    from stf_eval.registry import MODELS
    from stf_eval.runner import build_model

    cls = MODELS.get(name)
    spec = PluginSpec(name=name, plugin=name, params=parse_params(cls.Params, params, f"models.{name}"))
    if not isinstance(cache, CheckpointCache):
        cache = CheckpointCache(cfg.cache_dir if cache == "" else cache)
    return build_model(spec, cfg, data, seed, device, cache)


def sync(device) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def timer(fn: Callable[[], object], device) -> Callable[[], float]:
    """A callable that runs ``fn`` once and returns its wall-clock seconds (device synchronised)."""
    def run() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start
    return run


class Timings(list):
    """Wall-clock seconds of one side's repetitions; ``.cpu`` holds the process CPU seconds of each."""

    def __init__(self):
        super().__init__()
        self.cpu: list[float] = []


def interleaved(fns: list[Callable[[], float]], repeats: int, warmup: int = 1, label: str = "",
                scale_b: float = 1.0) -> list[Timings]:
    """Seconds of ``repeats`` runs of each callable (each returns its own wall-clock seconds), in
    order A B C on even repetitions and C B A on odd ones, so drifts of a shared machine hit every
    side alike; ``warmup`` untimed rounds first. ``label``: print each repetition (stderr) with its
    ratio A / (scale_b * B). The process CPU time of each call is kept too: on a
    machine shared with other work it is less disturbed by contention than wall time."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [Timings() for _ in fns]
    for i in range(repeats):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            cpu0 = time.process_time()
            times[k].append(fns[k]())
            times[k].cpu.append(time.process_time() - cpu0)
        if label:
            shown = ", ".join(f"{chr(65 + k)} {t[-1]:.4f} s" for k, t in enumerate(times))
            print(f"  {label} rep {i + 1}/{repeats}: {shown}, ratio {times[0][-1] / (scale_b * times[1][-1]):.3f}",
                  file=sys.stderr, flush=True)
    return times


@dataclass
class Result:
    """One benchmark's outcome: per-repetition ratios A/B and what they are compared with."""

    name: str
    ratio: str  # what A/B means, in words
    target: float  # the ratio should be <= target
    ratios: list[float]
    seconds_a: list[float]
    seconds_b: list[float]
    details: dict = field(default_factory=dict)
    scale_b: float = 1.0  # B's seconds are multiplied by this in the ratio (e.g. S x one deterministic pass)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def passed(self) -> bool:
        return self.median <= self.target

    def line(self) -> str:
        return (f"{self.name}: {self.ratio} = {self.median:.3f} (min {min(self.ratios):.3f}, "
                f"max {max(self.ratios):.3f}, {len(self.ratios)} reps; target <= {self.target}: "
                f"{'met' if self.passed else 'MISSED'})")

    @property
    def cpu_ratios(self) -> list[float]:
        a, b = getattr(self.seconds_a, "cpu", []), getattr(self.seconds_b, "cpu", [])
        return [x / (self.scale_b * y) for x, y in zip(a, b) if y > 0]

    def report(self) -> None:
        print(self.line())
        print(f"  A: median {statistics.median(self.seconds_a):.4f} s, B: median {statistics.median(self.seconds_b):.4f} s"
              + (f" (B scaled by {self.scale_b:g} in the ratio)" if self.scale_b != 1 else ""))
        cpu = self.cpu_ratios
        if cpu:
            print(f"  same ratio in process CPU time: {statistics.median(cpu):.3f} (min {min(cpu):.3f}, max {max(cpu):.3f})")
        for k, v in self.details.items():
            print(f"  {k}: {v}")


def result(name: str, ratio: str, target: float, ta: list[float], tb: list[float], scale_b: float = 1.0,
           details: dict | None = None) -> Result:
    """A Result with the per-repetition ratios A / (scale_b * B)."""
    return Result(name, ratio, target, [x / (scale_b * y) for x, y in zip(ta, tb)], ta, tb, details or {}, scale_b)


def environment() -> str:
    import platform

    import torch

    return (f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU(s)")
