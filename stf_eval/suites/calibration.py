"""Calibration suite: proper scoring rules and calibration errors of the predictive mean on the test
split, with bootstrap intervals, a reliability diagram, and the same metrics under corruptions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import calibration as cal
from ..metrics.predictive import log_mean_probs, mean_probs
from ..params import require
from ..registry import SUITES
from ..seeding import derive_seed
from ..shifts import SEVERITIES, SHIFTS, apply_shift, shift_key
from .base import SuitePlugin

METRICS = ("accuracy", "nll", "brier", "ece", "ece_adaptive", "ece_classwise", "mce")


@dataclass(frozen=True)
class CalibrationParams:
    bins: int = 15  # equal-width confidence bins (ece, mce, ece_classwise)
    adaptive_bins: int = 15  # equal-mass bins (ece_adaptive)
    bootstrap: int = 200  # bootstrap resamples of the test examples for ci_low/ci_high; 0 = none
    ci_level: float = 0.95
    shifts: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast", "rotation")  # [] = none
    severities: tuple[int, ...] = SEVERITIES
    shift_bootstrap: bool = False  # also bootstrap intervals for every (shift, severity)
    shift_max_examples: int = 0  # random subset of the test split to corrupt; 0 = all of it
    shift_seed: int = 0  # seeds the corruptions' randomness (noise, rotation direction) and the subset

    def check(self) -> None:
        require(self.bins >= 2, "bins", "an integer >= 2", self.bins)
        require(self.adaptive_bins >= 2, "adaptive_bins", "an integer >= 2", self.adaptive_bins)
        require(self.bootstrap >= 0, "bootstrap", "0 (no intervals) or a positive integer", self.bootstrap)
        require(0.0 < self.ci_level < 1.0, "ci_level", "a number in (0, 1)", self.ci_level)
        for s in self.shifts:
            require(s in SHIFTS, "shifts", f"names among {', '.join(SHIFTS)}", s)
        require(len(set(self.shifts)) == len(self.shifts), "shifts", "distinct names", list(self.shifts))
        for s in self.severities:
            require(s in SEVERITIES, "severities", "integers in 1..5", s)
        require(len(set(self.severities)) == len(self.severities), "severities", "distinct integers",
                list(self.severities))
        require(self.shift_max_examples >= 0, "shift_max_examples", "0 (all) or a positive integer",
                self.shift_max_examples)


@SUITES.register("calibration")
class Calibration(SuitePlugin):
    """Accuracy, NLL, Brier, ECE (equal-width/adaptive/classwise), MCE on test; bootstrap CIs; under shift.

    Of the predictive mean (softmax averaged over S samples); the same metrics under Gaussian noise,
    blur, contrast and rotation at severities 1..5, and their mean."""

    Params = CalibrationParams
    metrics = METRICS
    tiny = {"bootstrap": 10, "severities": [3]}

    def run(self, model, data, ctx) -> None:
        p = self.params
        labels = data.test.y.numpy()
        logits = ctx.samples("test")
        clean = self._evaluate(ctx, logits, labels, p.bootstrap)
        probs = mean_probs(logits)
        conf, correct = cal.top_label(probs, labels)
        n_adaptive = len(cal.equal_mass_edges(conf, p.adaptive_bins)) - 1
        ctx.note(
            f"test split, n = {len(labels)}. ece, mce: {p.bins} equal-width confidence bins, examples per "
            f"bin (low to high): {cal.bin_counts(conf, p.bins).tolist()}; ece_adaptive: {p.adaptive_bins} "
            f"equal-mass bins ({n_adaptive} after merging tied confidences); ece_classwise: {p.bins} "
            f"equal-width bins per class, mean over {probs.shape[1]} classes. "
            + f"accuracy: {p.ci_level:.0%} Wilson interval over the n test examples. "
            + (f"ece: {p.ci_level:.0%} BCa bootstrap interval ({p.bootstrap} resamples), which corrects the "
               "upward bias of the binned ECE and contains the estimate (if even BCa excludes it, the bootstrap "
               "spread re-centred on the estimate). nll, brier, ece_adaptive, ece_classwise, mce: percentile "
               f"bootstrap over test examples, {p.bootstrap} resamples; the binned ones (ece_adaptive, "
               "ece_classwise, mce) are biased upward in resamples, so their interval can lie above the estimate."
               if p.bootstrap else "No bootstrap intervals (bootstrap = 0).")
        )
        ctx.save_examples({"test/index": np.arange(len(labels), dtype=np.int32),
                           "test/label": labels.astype(np.int16),
                           "test/log_probs": log_mean_probs(logits).astype(np.float32)})
        self._reliability_figure(ctx, conf, correct, clean)
        if p.shifts and p.severities:
            self._under_shift(ctx, data, labels, clean)

    # -- pieces -------------------------------------------------------------------------------
    def _evaluate(self, ctx, logits, labels: np.ndarray, resamples: int, **settings) -> dict[str, float]:
        """Every metric of ``logits`` [S, N, C] recorded with ``settings`` (and intervals if asked).

        accuracy: Wilson interval (always; it needs no resampling); ece: BCa bootstrap interval that
        contains the estimate (stf_eval.stats.ece_interval); the others: percentile bootstrap."""
        from .. import stats

        p = self.params
        probs, logp = mean_probs(logits), log_mean_probs(logits)
        values = cal.calibration_metrics(probs, labels, logp, p.bins, p.adaptive_bins)
        n = len(labels)
        intervals = {"accuracy": stats.proportion_interval(round(values["accuracy"] * n), n, p.ci_level)}
        if resamples:
            intervals = {**cal.bootstrap_intervals(
                lambda idx: cal.calibration_metrics(probs[idx], labels[idx], logp[idx], p.bins, p.adaptive_bins),
                n, resamples, seed=derive_seed(ctx.seed, "calibration-bootstrap", *settings.values()),
                level=p.ci_level), **intervals}
            conf, correct = cal.top_label(probs, labels)
            lo, hi, _ = stats.ece_interval(conf, correct, p.bins, p.ci_level, resamples,
                                           seed=derive_seed(ctx.seed, "ece-interval", *settings.values()))
            intervals["ece"] = (lo, hi)
        for metric in METRICS:
            lo, hi = intervals.get(metric, (None, None))
            ctx.record(metric, values[metric], n=n, ci_low=lo, ci_high=hi, **settings)
        return values

    def _under_shift(self, ctx, data, labels: np.ndarray, clean: dict[str, float]) -> None:
        p = self.params
        x = data.test.x
        subset = 0
        index = np.arange(len(labels), dtype=np.int32)
        if p.shift_max_examples and len(labels) > p.shift_max_examples:
            subset = p.shift_max_examples
            pick = np.sort(np.random.default_rng(p.shift_seed).choice(len(labels), subset, replace=False))
            x, labels, index = x[pick], labels[pick], pick.astype(np.int32)
            # the figure's severity-0 point: the clean metrics of the same subset (not recorded)
            test_logits = ctx.samples("test")[:, pick]
            clean = cal.calibration_metrics(mean_probs(test_logits), labels, log_mean_probs(test_logits),
                                            p.bins, p.adaptive_bins)
        table: dict[tuple[str, int], dict[str, float]] = {}
        resamples = p.bootstrap if p.shift_bootstrap else 0
        for name in p.shifts:
            for severity in p.severities:
                key = shift_key(name, severity, p.shift_seed, subset)
                logits = ctx.samples_of(key, apply_shift(x, name, severity, p.shift_seed))
                table[name, severity] = self._evaluate(ctx, logits, labels, resamples, shift=name,
                                                       severity=severity)
                ctx.save_examples({f"shift/{name}/{severity}/index": index,
                                   f"shift/{name}/{severity}/log_probs": log_mean_probs(logits).astype(np.float16)})
        for severity in p.severities:  # mean over corruption types at each severity
            for metric in METRICS:
                ctx.record(metric, np.mean([table[s, severity][metric] for s in p.shifts]), shift="mean",
                           severity=severity, n=len(labels))
        for metric in METRICS:  # mean over every (corruption, severity) pair, severity left empty
            ctx.record(metric, np.mean([v[metric] for v in table.values()]), shift="mean", n=len(labels),
                       note=f"mean over {len(p.shifts)} corruptions x {len(p.severities)} severities")
        ctx.note(f"under shift: corruptions {', '.join(p.shifts)} at severities "
                 f"{', '.join(map(str, p.severities))} of {len(labels)} test examples (shift_seed "
                 f"{p.shift_seed}); shift = 'mean' rows average the corruptions at each severity, and "
                 "over all corruptions and severities where severity is empty.")
        self._shift_figure(ctx, table, clean)

    def _reliability_figure(self, ctx, conf, correct, values) -> None:
        if not ctx.wants_figures:
            return
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

        edges, counts, mean_conf, acc = cal.reliability_bins(conf, correct, self.params.bins)
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        filled = counts > 0
        fig = Figure(figsize=(5, 6))
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
        top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        top.bar(centers[filled], acc[filled], width=width, color="#4C72B0", edgecolor="black", lw=0.5,
                label="accuracy in bin")
        top.bar(centers[filled], mean_conf[filled] - acc[filled], bottom=acc[filled], width=width,
                color="#C44E52", alpha=0.25, hatch="//", edgecolor="#C44E52", lw=0.8,
                label="gap: mean confidence - accuracy")
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{ctx.model_name}: ECE {values['ece']:.4f}, MCE {values['mce']:.3f} "
                      f"({self.params.bins} bins)", fontsize=10)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers, counts, width=width, color="grey", edgecolor="black", lw=0.5)
        bottom.set_yscale("symlog", linthresh=1)
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence (max of the predictive mean)")
        bottom.set_ylabel("examples")
        fig.tight_layout()
        ctx.save_figure(fig, "reliability", f"Reliability diagram and confidence histogram of {ctx.model_name} "
                        f"on the test split ({len(conf)} examples, {self.params.bins} equal-width bins; "
                        "empty bins not drawn).")

    def _shift_figure(self, ctx, table, clean) -> None:
        if not ctx.wants_figures:
            return
        from matplotlib.figure import Figure

        p = self.params
        levels = [0, *p.severities]
        fig = Figure(figsize=(9, 3.6))
        axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ("accuracy", "ece")):
            for name in p.shifts:
                ax.plot(levels, [clean[metric]] + [table[name, s][metric] for s in p.severities],
                        marker="o", ms=3, lw=1, label=name)
            mean = [clean[metric]] + [np.mean([table[n, s][metric] for n in p.shifts]) for s in p.severities]
            ax.plot(levels, mean, color="black", lw=2.2, marker="s", ms=4, label="mean")
            ax.set_xticks(levels)
            ax.set_xlabel("severity (0 = clean test)")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{ctx.model_name}: accuracy and ECE under corruption", fontsize=10)
        fig.tight_layout()
        ctx.save_figure(fig, "shift", f"Accuracy and ECE of {ctx.model_name} against corruption severity "
                        "(severity 0 = the same test examples, clean; black = mean over corruptions).")
