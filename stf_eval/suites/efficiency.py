"""Efficiency suite: parameter counts, training time and peak memory per stage, inference latency.

Training figures are read from the model (``ModelPlugin.efficiency()``): the core measures them while
a stage trains (``BuildContext.cached``). A stage loaded from the checkpoint cache keeps the figures
measured when it was originally trained; such rows say so in their ``note`` column.

Latency is the one thing this suite measures itself: ``predict_samples`` on a fixed batch of test
examples at the evaluation S (a deliberate extra forward pass, not shared with other suites), after a
warm-up, as the median of a few repetitions.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import spec_of_plugin
from ..params import parse_params, require
from ..profiling import median_interval
from ..registry import SUITES
from .base import SuitePlugin

CACHED_NOTE = "from cache: measured when originally trained"


@dataclass(frozen=True)
class EfficiencyParams:
    latency_examples: int = 256  # test examples in the fixed latency batch (fewer if test is smaller)
    latency_repeats: int = 5  # timed repetitions; the median is recorded
    latency_warmup: int = 1  # untimed repetitions first (allocator, kernels, lazy initialisation)
    figure: bool = True  # one bar chart per (model, seed) cell
    epoch_warmup: int = 1  # first epochs of a stage left out of epoch_seconds_median
    svi_comparison: bool = True  # stf_bnn cell: SVI epoch / full-BNN epoch, interleaved in this process
    comparison_batches: int = 10  # training batches per timed epoch of the comparison
    comparison_repeats: int = 5  # interleaved repetitions (A B B A ...); the median ratio is recorded

    def check(self) -> None:
        require(self.epoch_warmup >= 0, "epoch_warmup", "an integer >= 0", self.epoch_warmup)
        require(self.comparison_batches >= 1, "comparison_batches", "an integer >= 1", self.comparison_batches)
        require(self.comparison_repeats >= 1, "comparison_repeats", "an integer >= 1", self.comparison_repeats)
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


def svi_vs_full_bnn_epochs(model, data, n_batches: int, repeats: int, warmup: int = 1, full_params=None):
    """(ratios, svi_seconds, full_seconds) of one SVI epoch of ``model`` (an stf_bnn) and one epoch of a
    ``full_bnn`` with ``full_params`` (its Params; None = the plugin's defaults; ``epochs`` is set to
    1), each trained by its own plugin on the same first ``n_batches`` x batch_size training examples,
    in the order A B, B A, ... after ``warmup`` rounds.

    The SVI side starts from ``model``'s own pretrained base (served by a cache that holds only it), so
    only stage 2 trains; nothing is stored, and ``model`` itself is not touched.
    """
    from ..bayes import variational_layers
    from ..cache import CheckpointCache
    from ..config import PluginSpec
    from ..models.base import BuildContext
    from ..registry import MODELS
    from ..seeding import seeded

    base_state = {k: v.detach().clone() for k, v in model.deterministic_base().state_dict().items()}

    class BaseOnly(CheckpointCache):
        def __init__(self):
            super().__init__(None)

        def load(self, key, module):
            if variational_layers(module):
                return None
            module.load_state_dict(base_state)
            return {"seconds": 0.0}

    train_batch = model.ctx.train.batch_size
    n = min(len(data.train), n_batches * train_batch)
    subset = data.with_train(data.train.subset(np.arange(n)))
    stf_params = model.params
    if hasattr(stf_params, "svi_epochs"):
        stf_params = dataclasses.replace(stf_params, svi_epochs=1)
    full_cls = MODELS.get("full_bnn")
    if full_params is None:
        full_params = parse_params(full_cls.Params, {"epochs": 1}, "models.full_bnn")
    else:
        full_params = dataclasses.replace(full_params, epochs=1)

    def epoch(plugin: str, params, cache, stage: str) -> float:
        spec = PluginSpec(name=plugin, plugin=plugin, params=params)
        bctx = BuildContext(spec=spec, net=model.ctx.net, train=model.ctx.train, device=model.device,
                            seed=model.ctx.seed, cache=cache, measure_step_memory=False)
        with seeded(model.ctx.seed, "efficiency", "compare", plugin):
            fitted = MODELS.get(plugin)(params, bctx).fit(subset)
        return fitted.epoch_seconds[stage][0]

    sides = [lambda: epoch("stf_bnn", stf_params, BaseOnly(), "svi"),
             lambda: epoch("full_bnn", full_params, CheckpointCache(None), "train")]
    for _ in range(warmup):
        for side in sides:
            side()
    svi, full = [], []
    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            (svi if k == 0 else full).append(sides[k]())
    return [a / b for a, b in zip(svi, full)], svi, full


def compared_full_bnn(run_models):
    """The full BNN the run evaluates (its estimator, batch size, optimiser), timed against STF-BNN's
    SVI epoch; None (the plugin's defaults) when the run has no full_bnn."""
    return spec_of_plugin(run_models, "full_bnn")


@SUITES.register("efficiency")
class Efficiency(SuitePlugin):
    """Trainable and distribution parameters, seconds and peak memory per training stage, latency."""

    Params = EfficiencyParams
    metrics = ("trainable_params", "distribution_params", "total_params", "train_seconds", "peak_memory_mb",
               "latency_ms_per_example", "forward_passes_per_prediction", "epoch_seconds_median",
               "train_step_peak_memory_mb", "svi_vs_full_bnn_epoch_seconds_ratio")
    tiny = {"latency_examples": 16, "latency_repeats": 2, "comparison_batches": 2, "comparison_repeats": 2}

    def run(self, model, data, ctx) -> None:
        eff = model.efficiency()
        ctx.record("trainable_params", eff["trainable_params"])
        ctx.record("distribution_params", eff["distribution_params"])
        ctx.record("total_params", eff["total_params"])
        ctx.record("forward_passes_per_prediction", eff["forward_passes_per_prediction"])

        seconds, memory, cached = eff["train_seconds"], eff["peak_memory_mb"], eff["from_cache"]
        methods = eff.get("memory_method") or {}
        if isinstance(methods, str):  # a plugin that still keeps one method for all stages
            methods = {stage: methods for stage in memory}
        for stage, value in seconds.items():
            ctx.record("train_seconds", value, stage=stage, note=CACHED_NOTE if cached.get(stage) else None)
        if seconds:
            any_cached = any(cached.get(s) for s in seconds)
            ctx.record("train_seconds", sum(seconds.values()), stage="total",
                       note=f"sum of {len(seconds)} stage(s)" + ("; some " + CACHED_NOTE if any_cached else ""))
        for stage, value in memory.items():
            note = methods.get(stage, "") + ("; " + CACHED_NOTE if cached.get(stage) else "")
            ctx.record("peak_memory_mb", value, stage=stage, note=note)
        used = sorted({methods.get(stage, "") for stage in memory})
        if memory and len(used) == 1:  # never a max over figures of different methods (units)
            ctx.record("peak_memory_mb", max(memory.values()), stage="total", note=f"{used[0]}; max over stages")
        elif memory:
            ctx.note("peak_memory_mb: no total, the stages were measured by different methods "
                     f"({', '.join(used)})")
        self._epochs(model, eff, ctx)
        self._step_memory(eff, ctx)
        cached_stages = [s for s in seconds if cached.get(s)]
        if cached_stages:
            ctx.note(f"training stage(s) {', '.join(cached_stages)} loaded from the checkpoint cache: their "
                     "seconds and peak memory are those measured when they were originally trained")
        for method in used:
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
        ctx.save_examples({"latency/seconds": np.asarray(times, dtype=np.float64)})
        ctx.record("latency_ms_per_example", median, n=n,
                   note=f"S={model.n_samples}, batch of {n} test examples, device {model.device.type}, "
                        f"median of {len(times)} after {self.params.latency_warmup} warm-up "
                        f"(min {min(per_example_ms):.4g}, max {max(per_example_ms):.4g} ms)")
        if self.params.svi_comparison and model.ctx.spec.plugin == "stf_bnn":
            self._svi_vs_full_bnn(model, data, ctx)
        if self.params.figure:
            self._figure(ctx, eff, median, model.n_samples)

    def _epochs(self, model, eff: dict, ctx) -> None:
        """``epoch_seconds_median`` per stage: the median over the epochs after the warm-up ones."""
        warm = self.params.epoch_warmup
        info = eff.get("stage_info", {})
        for stage, times in (eff.get("epoch_seconds") or {}).items():
            ctx.save_examples({f"train/{stage}/epoch_seconds": np.asarray(times, dtype=np.float64)})
            used = times[warm:] if len(times) > warm else times[-1:]
            low, high, cover = median_interval(used)
            where = info.get(stage, {})
            note = (f"median of {len(used)} epoch(s) after {len(times) - len(used)} warm-up, "
                    f"{where.get('threads', '?')} thread(s), device {where.get('device', '?')}; "
                    f"ci: order-statistic interval of the median, coverage {cover:.2f}")
            if eff["from_cache"].get(stage):
                note += "; " + CACHED_NOTE
            ctx.record("epoch_seconds_median", statistics.median(used), stage=stage, n=len(used),
                       ci_low=low, ci_high=high, note=note)

    def _step_memory(self, eff: dict, ctx) -> None:
        """``train_step_peak_memory_mb`` per stage: one training step measured in isolation."""
        info = eff.get("stage_info", {})
        methods = eff.get("train_step_memory_method", {})
        for stage, value in (eff.get("train_step_peak_memory_mb") or {}).items():
            batch = info.get(stage, {}).get("train_step_batch")
            note = methods.get(stage, "") + (f", batch {batch}" if batch else "")
            if eff["from_cache"].get(stage):
                note += "; " + CACHED_NOTE
            ctx.record("train_step_peak_memory_mb", value, stage=stage, n=batch, note=note)
        for stage, method in methods.items():
            if method.startswith("unavailable"):
                ctx.note(f"train_step_peak_memory_mb of stage {stage}: {method}")

    def compared_specs(self, model_spec, run_models) -> dict:
        spec = compared_full_bnn(run_models)
        if self.params.svi_comparison and model_spec.plugin == "stf_bnn" and spec is not None:
            return {"full_bnn": spec.as_dict()}  # the recipe the SVI epoch is timed against
        return {}

    def _svi_vs_full_bnn(self, model, data, ctx) -> None:
        """STF-BNN SVI epoch / full-BNN epoch, both trained by their own plugins for one epoch of the
        same ``comparison_batches`` training batches, interleaved A B B A ... in this process."""
        spec = compared_full_bnn(ctx.run_models)
        ratios, svi_s, full_s = svi_vs_full_bnn_epochs(model, data, self.params.comparison_batches,
                                                       self.params.comparison_repeats,
                                                       full_params=None if spec is None else spec.params)
        recipe = (f"full_bnn at the run's recipe [models.{spec.name}]" if spec is not None
                  else "full_bnn at its default parameters (the run has none)")
        low, high, cover = median_interval(ratios)
        threads = torch.get_num_threads()
        batch = model.ctx.train.batch_size
        ctx.record("svi_vs_full_bnn_epoch_seconds_ratio", statistics.median(ratios), stage="svi", n=len(ratios),
                   ci_low=low, ci_high=high,
                   note=f"controlled: interleaved, median of {len(ratios)}, {threads} threads; "
                        f"{self.params.comparison_batches} batches of {batch}, device {model.device.type}, "
                        f"{recipe}; SVI {statistics.median(svi_s):.4g} s, "
                        f"full BNN {statistics.median(full_s):.4g} s per epoch (medians); "
                        f"ci: order-statistic interval of the median, coverage {cover:.2f}")
        ctx.save_examples({"compare/svi_epoch_seconds": np.asarray(svi_s, dtype=np.float64),
                           "compare/full_bnn_epoch_seconds": np.asarray(full_s, dtype=np.float64)})

    def _figure(self, ctx, eff: dict, latency_ms: float, n_samples: int) -> None:
        if not ctx.wants_figures:
            return
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
