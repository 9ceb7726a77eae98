"""Efficiency suite: parameter counts, training time and peak memory per stage, inference latency.

Training figures are read from the model (``ModelPlugin.efficiency()``): the core measures them while
a stage trains (``BuildContext.cached``). A stage loaded from the checkpoint cache keeps the figures
measured when it was originally trained; such rows say so in their ``note`` column.

Latency is the one thing this suite measures itself: ``predict_samples`` on a fixed batch of test
examples at the evaluation S (a deliberate extra forward pass, not shared with other suites), after a
warm-up, as the median of a few repetitions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..params import require
from ..registry import SUITES
from .base import SuitePlugin

CACHED_NOTE = "from cache: measured when originally trained"


@dataclass(frozen=True)
class EfficiencyParams:
    latency_examples: int = 256  # test examples in the fixed latency batch (fewer if test is smaller)
    latency_repeats: int = 5  # timed repetitions; the median is recorded
    latency_warmup: int = 1  # untimed repetitions first (allocator, kernels, lazy initialisation)
    figure: bool = True  # one bar chart per (model, seed) cell

    def check(self) -> None:
        require(self.latency_examples >= 1, "latency_examples", "an integer >= 1", self.latency_examples)
        require(self.latency_repeats >= 1, "latency_repeats", "an integer >= 1", self.latency_repeats)
        require(self.latency_warmup >= 0, "latency_warmup", "an integer >= 0", self.latency_warmup)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model, x: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``model.predict_samples(x)`` (evaluation S), ``repeats`` timed calls."""
    for _ in range(warmup):
        model.predict_samples(x)
    times = []
    for _ in range(repeats):
        _sync(model.device)
        start = time.perf_counter()
        model.predict_samples(x)  # returns CPU tensors, so device work has finished when it returns
        _sync(model.device)
        times.append(time.perf_counter() - start)
    return times


@SUITES.register("efficiency")
class Efficiency(SuitePlugin):
    """Trainable and distribution parameters, seconds and peak memory per training stage, latency."""

    Params = EfficiencyParams
    metrics = ("trainable_params", "distribution_params", "total_params", "train_seconds", "peak_memory_mb",
               "latency_ms_per_example", "forward_passes_per_prediction")
    tiny = {"latency_examples": 16, "latency_repeats": 2}

    def run(self, model, data, ctx) -> None:
        eff = model.efficiency()
        ctx.record("trainable_params", eff["trainable_params"])
        ctx.record("distribution_params", eff["distribution_params"])
        ctx.record("total_params", eff["total_params"])
        ctx.record("forward_passes_per_prediction", eff["forward_passes_per_prediction"])

        seconds, memory, cached = eff["train_seconds"], eff["peak_memory_mb"], eff["from_cache"]
        method = eff.get("memory_method") or ""
        for stage, value in seconds.items():
            ctx.record("train_seconds", value, stage=stage, note=CACHED_NOTE if cached.get(stage) else None)
        if seconds:
            any_cached = any(cached.get(s) for s in seconds)
            ctx.record("train_seconds", sum(seconds.values()), stage="total",
                       note=f"sum of {len(seconds)} stage(s)" + ("; some " + CACHED_NOTE if any_cached else ""))
        for stage, value in memory.items():
            note = method + ("; " + CACHED_NOTE if cached.get(stage) else "")
            ctx.record("peak_memory_mb", value, stage=stage, note=note)
        if memory:
            ctx.record("peak_memory_mb", max(memory.values()), stage="total", note=f"{method}; max over stages")
        cached_stages = [s for s in seconds if cached.get(s)]
        if cached_stages:
            ctx.note(f"training stage(s) {', '.join(cached_stages)} loaded from the checkpoint cache: their "
                     "seconds and peak memory are those measured when they were originally trained")
        if method:
            ctx.note(f"peak memory method: {method} (" + (
                "growth of torch.cuda.max_memory_allocated over the stage start, tensors only)"
                if method == "cuda_max_allocated" else
                "growth of the process' resident set size over the stage start, sampled every 5 ms; "
                "includes allocator caching, approximate, comparable only between models run alike)"))

        for row in getattr(model, "extra_records", []):  # model-specific figures, e.g. KL weight
            row = dict(row)
            if row.pop("suite", "efficiency") == "efficiency":
                ctx.record(row.pop("metric"), row.pop("value"), **row)

        n = min(self.params.latency_examples, len(data.test))
        x = data.test.x[:n]
        times = measure_latency(model, x, self.params.latency_repeats, self.params.latency_warmup)
        per_example_ms = [1000.0 * t / n for t in times]
        median = statistics.median(per_example_ms)
        ctx.record("latency_ms_per_example", median, n=n,
                   note=f"S={model.n_samples}, batch of {n} test examples, device {model.device.type}, "
                        f"median of {len(times)} after {self.params.latency_warmup} warm-up "
                        f"(min {min(per_example_ms):.4g}, max {max(per_example_ms):.4g} ms)")
        if self.params.figure:
            self._figure(ctx, eff, median, model.n_samples)

    def _figure(self, ctx, eff: dict, latency_ms: float, n_samples: int) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        stages = list(eff["train_seconds"])
        cached = eff["from_cache"]
        bars = axes[0].bar(stages, [eff["train_seconds"][s] for s in stages], color="#4c72b0")
        for bar, stage in zip(bars, stages):
            if cached.get(stage):
                bar.set_hatch("//")
        axes[0].bar_label(bars, fmt="%.3g", fontsize=7)
        axes[0].set_title("training seconds per stage" + (" (hatched: cached)" if any(cached.values()) else ""),
                          fontsize=9)
        names = ["trainable", "distribution", "total"]
        values = [eff["trainable_params"], eff["distribution_params"], eff["total_params"]]
        axes[1].bar(names, values, color=["#55a868", "#c44e52", "#8172b2"])
        axes[1].set_yscale("log")  # trainable counts of STF-BNN are orders of magnitude below the total
        axes[1].set_ylim(bottom=1, top=max(values + [10]) * 3)
        for i, v in enumerate(values):
            axes[1].text(i, max(v, 1), f"{v:,}", ha="center", va="bottom", fontsize=7)
        axes[1].set_title("parameters (log scale)", fontsize=9)
        bars = axes[2].bar(["latency"], [latency_ms], color="#dd8452", width=0.5)
        axes[2].bar_label(bars, fmt="%.3g ms", fontsize=7)
        axes[2].set_title(f"latency per example at S={n_samples} "
                          f"({eff['forward_passes_per_prediction']} forward passes)", fontsize=9)
        for ax in axes:
            ax.tick_params(labelsize=8)
        fig.tight_layout()
        ctx.save_figure(fig, "efficiency",
                        f"{ctx.model_name}: training seconds per stage, parameter counts, and inference latency "
                        "per example at the evaluation S (compare models in the records table).")
