"""OOD-detection suite (OpenOOD v1.5 conventions): separate the test split from each OOD set by an
uncertainty score; AUROC, AUPR-in, AUPR-out and FPR@95TPR per set and score, near/far group means."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import stats
from ..errors import ConfigError
from ..metrics.ood import SCORES, ood_metrics, ood_scores
from ..metrics.predictive import log_mean_probs
from ..params import require
from ..registry import SUITES
from .base import SuitePlugin

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
GROUPS = ("near", "far")


@dataclass(frozen=True)
class OodParams:
    scores: tuple[str, ...] = tuple(SCORES)  # msp, entropy, mutual_information, energy
    sets: tuple[str, ...] = ()  # names of [data.ood.NAME] sets to use; empty = all of them
    histogram_bins: int = 40  # bins of the score histograms in the figure

    def check(self) -> None:
        require(len(self.scores) > 0, "scores", "a non-empty list", list(self.scores))
        for s in self.scores:
            require(s in SCORES, "scores", f"names among {', '.join(SCORES)}", s)
        require(len(set(self.scores)) == len(self.scores), "scores", "distinct names", list(self.scores))
        require(self.histogram_bins >= 5, "histogram_bins", "an integer >= 5", self.histogram_bins)


@SUITES.register("ood")
class OodDetection(SuitePlugin):
    """AUROC, AUPR-in/out, FPR@95TPR of test (in-dist., positive) vs each OOD set; near/far means.

    Scores: max softmax probability, entropy, mutual information, energy (higher = in-distribution)."""

    Params = OodParams
    metrics = METRICS

    def _sets(self, data) -> list[str]:
        if not self.params.sets:
            return list(data.ood)
        missing = [s for s in self.params.sets if s not in data.ood]
        if missing:
            known = ", ".join(data.ood) or "none"
            raise ConfigError(f"suites.{self.name}.sets: no OOD set {missing[0]!r} in [data.ood] (configured: {known})")
        return list(self.params.sets)

    def skip_reason(self, model, data) -> str | None:
        if not self._sets(data):
            return "no OOD sets configured (add [data.ood.NAME] tables with a dataset and a group)"
        return None

    def run(self, model, data, ctx) -> None:
        id_logits = ctx.samples("test")
        scores = list(self.params.scores)
        if id_logits.shape[0] == 1 and "mutual_information" in scores:
            scores.remove("mutual_information")
            ctx.note("mutual_information not recorded: it is identically 0 for a single-sample (S = 1) "
                     "predictive and carries no information.")
        if not scores:
            ctx.note("no score left to evaluate")
            return
        score_in = ood_scores(id_logits, scores)
        per_set: dict[str, dict[str, dict[str, float]]] = {}
        score_out: dict[str, dict[str, np.ndarray]] = {}
        for name in self._sets(data):
            ood = data.ood[name]
            score_out[name] = ood_scores(ctx.samples(f"ood:{name}"), scores)
            per_set[name] = {}
            for score in scores:
                values = ood_metrics(score_in[score], score_out[name][score])
                per_set[name][score] = values
                _, lo, hi = stats.auc_delong(score_in[score], score_out[name][score])
                for metric, value in values.items():
                    ci = {"ci_low": lo, "ci_high": hi} if metric == "auroc" else {}
                    ctx.record(metric, value, ood_set=name, score=score, group=ood.group, n=len(ood.x), **ci)
            ctx.save_examples({f"ood/{name}/score/{s}": v.astype(np.float32) for s, v in score_out[name].items()})
            ctx.save_examples({f"ood/{name}/log_probs": log_mean_probs(ctx.samples(f"ood:{name}"))
                               .astype(np.float16)})
        ctx.save_examples({f"test/score/{s}": v.astype(np.float32) for s, v in score_in.items()})
        for group in GROUPS:
            members = [n for n in per_set if data.ood[n].group == group]
            if not members:
                continue
            for score in scores:
                _, lo, hi = stats.auc_mean_delong(score_in[score], [score_out[n][score] for n in members])
                for metric in METRICS:
                    ci = {"ci_low": lo, "ci_high": hi} if metric == "auroc" else {}
                    ctx.record(metric, np.mean([per_set[n][score][metric] for n in members]),
                               ood_set=f"{group}_mean", score=score, group=group, n=len(members),
                               note=f"mean over {group} sets: {', '.join(members)}", **ci)
        ctx.note(
            f"in-distribution = the test split ({id_logits.shape[1]} examples), the positive class. Every "
            "score is oriented so that higher = more in-distribution (entropy and mutual_information are "
            "negated). fpr95 = fraction of an OOD set accepted (score >= threshold) at the highest "
            "threshold accepting >= 95% of the test split. aupr_* integrate the precision-recall curve "
            "with the trapezoid rule (OpenOOD v1.5). ood_set = near_mean / far_mean rows average the sets "
            "of that group (n = number of sets). auroc ci_low/ci_high: 95% DeLong interval (for a group mean, "
            "with the covariance of the shared test-split scores); n of a set's rows = its OOD examples."
        )
        self._figure(ctx, scores, score_in, score_out, per_set, data)

    def _figure(self, ctx, scores, score_in, score_out, per_set, data) -> None:
        if not ctx.wants_figures:
            return
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

        # legible where the report shows it (about 640 px wide): two panels per row, 10 pt text, one
        # legend for the figure; OOD sets differ in colour and line style
        ncol = min(2, len(scores))
        nrow = -(-len(scores) // ncol)
        legend_rows = -(-(len(score_out) + 1) // 3)
        height = 2.9 * nrow + 0.4 + 0.3 * legend_rows
        fig = Figure(figsize=(4.0 * ncol, height))
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).flatten()
        styles = ["-", "--", ":", "-."]
        for ax, score in zip(axes, scores):
            everything = np.concatenate([score_in[score], *[s[score] for s in score_out.values()]])
            lo, hi = np.percentile(everything, [0.5, 100])  # clip the far low tail (energy of noise)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, self.params.histogram_bins + 1)
            ax.hist(np.clip(score_in[score], lo, hi), bins=edges, density=True, color="grey", alpha=0.5,
                    label=f"test (in-dist., {len(score_in[score])})")
            for i, (name, values) in enumerate(score_out.items()):
                ax.hist(np.clip(values[score], lo, hi), bins=edges, density=True, histtype="step", lw=1.6,
                        color=f"C{i % 10}", linestyle=styles[i % len(styles)],
                        label=f"{name} ({data.ood[name].group})")
            aurocs = ", ".join(f"{per_set[n][score]['auroc']:.2f}" for n in score_out)
            ax.set_title(f"{score}: AUROC {aurocs}", fontsize=10)
            ax.set_xlabel(f"{score} (higher = in-dist.)", fontsize=10)
            ax.set_ylabel("density", fontsize=10)
            ax.tick_params(labelsize=9)
        for ax in axes[len(scores):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=10, frameon=False)
        fig.suptitle(f"{ctx.model_name}: OOD score histograms (AUROC per set in legend order)", fontsize=11)
        fig.tight_layout(rect=(0, (0.15 + 0.3 * legend_rows) / height, 1, 1))
        ctx.save_figure(fig, "scores", f"Histograms of each OOD score of {ctx.model_name}: the test split "
                        "against every OOD set (values below the 0.5th percentile drawn at the edge).")
