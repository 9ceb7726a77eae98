"""Figures for the report: the run's saved SVGs, and cross-model plots drawn from the records.

Every figure is embedded as an ``<img>`` with a ``data:image/svg+xml;base64`` URI: the page stays one
self-contained file, each SVG keeps its own ids (no clashes between figures inlined side by side),
and an SVG cannot run script inside an ``<img>``.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .stats import seed_stats


@dataclass
class Figure:
    caption: str
    uri: str = ""  # data URI; empty when the file is missing
    title: str = ""
    missing: str = ""  # why there is no image
    who: str = ""  # model and seed of a figure a suite saved


def svg_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def saved_figure(run_dir: Path, entry: dict, raster: bool = False) -> Figure:
    """A figure a suite saved under the run directory (read as bytes; never outside the run dir).

    ``raster``: embed the PNG copy the suite saved next to the SVG, when there is one (a fraction of the
    size; the report's default), else the SVG.
    """
    caption = str(entry.get("caption") or entry.get("name") or entry.get("path", ""))
    who = f"{entry.get('model', '')}, seed {entry.get('seed', '')}"
    title = f"{entry.get('suite', '')} / {entry.get('name', '')}: {who}"
    root = run_dir.resolve()
    candidates = ([str(entry["png"])] if raster and entry.get("png") else []) + [str(entry.get("path", ""))]
    for rel in candidates:
        path = (run_dir / rel).resolve()
        if not rel or root not in path.parents or not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix.lower() == ".png":
            return Figure(caption, "data:image/png;base64," + base64.b64encode(data).decode("ascii"), title, who=who)
        return Figure(caption=caption, uri=svg_uri(data), title=title, who=who)
    return Figure(caption=caption, title=title, missing=f"figure file missing: {entry.get('path', '')}", who=who)


# -- cross-model figures drawn from records ---------------------------------------------------------

LEGEND_INCHES = 1.7  # right margin kept for the model legend
# the page shows the report's figures at most 900 px wide (report.css, figure.wide): a wider figure
# would be scaled down and its 10 pt text would shrink below legibility, so panels get narrower instead
MAX_WIDTH_INCHES = 900 / 96


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no global state, no GUI backend

    # fixed margins: constrained layout would draw every figure twice (seconds per report)
    width = min(width, MAX_WIDTH_INCHES)
    fig = MplFigure(figsize=(width, height))
    fig.subplots_adjust(left=0.6 / width, right=1 - LEGEND_INCHES / width, bottom=0.5 / height,
                        top=1 - 0.3 / height, wspace=0.12)
    return fig


def _legend(fig, handles=None, labels=None) -> None:
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=10, frameon=False)


def _to_uri(fig) -> str:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "stf-eval"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return svg_uri(buf.getvalue())


def model_colors(models: list[str]) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: matplotlib.colors.to_hex(cmap(i % 10)) for i, m in enumerate(models)}


# one marker per model (with its colour): lines stay distinguishable in grey print and for colour-blind readers
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h")


def model_marker(models: list[str], model: str) -> str:
    return MARKERS[models.index(model) % len(MARKERS)] if model in models else "o"


def _errorbar(ax, xs, stats, label, color, marker="o"):
    ys = [s.mean for s in stats]
    err = [s.std if s.has_std else 0.0 for s in stats]
    ax.errorbar(xs, ys, yerr=err if any(e > 0 for e in err) else None, label=label, color=color,
                marker=marker, markersize=5.5, linewidth=1.4, capsize=2)


def robust_accuracy_figure(df, models: list[str], colors: dict) -> Figure | None:
    """Robust accuracy against eps, one panel per attack, one line per model (mean ± std over seeds)."""
    rob = df[(df["metric"] == "robust_accuracy") & (df["attack"] != "") & (df["eps"] != "")]
    if rob.empty:
        return None
    clean = seed_stats(df[df["metric"] == "clean_accuracy"], ["model"])
    stats = seed_stats(rob, ["attack", "model", "eps"])
    attacks = list(dict.fromkeys(rob["attack"]))
    fig = _new_figure(3.2 * len(attacks) + LEGEND_INCHES + 0.6, 3.0)
    axes = fig.subplots(1, len(attacks), sharey=True, squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        for m in models:
            pts = sorted((float(k[2]), s) for k, s in stats.items() if k[0] == attack and k[1] == m)
            if (m,) in clean and all(x > 0 for x, _ in pts):
                pts = [(0.0, clean[(m,)])] + pts
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], m, colors.get(m), model_marker(models, m))
        ax.set_title(str(attack), fontsize=11)
        ax.set_xlabel("eps", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    _legend(fig)
    return Figure("Robust accuracy against eps per attack (eps 0 = clean accuracy); mean \u00b1 std over seeds.",
                  _to_uri(fig), "robust accuracy")


def grouped_bars(stats: dict, groups: list, models: list[str], colors: dict, ylabel: str, caption: str,
                 log: bool = False, ylim=None) -> Figure | None:
    """Bars of ``stats[(group, model)]``: one cluster per group, one bar per model."""
    present = [m for m in models if any((g, m) in stats for g in groups)]
    if not present or not groups:
        return None
    fig = _new_figure(max(3.0, 0.14 * len(groups) * len(present) + 0.3 * len(groups)) + LEGEND_INCHES + 0.6, 3.0)
    ax = fig.subplots()
    width = 0.8 / len(present)
    for i, m in enumerate(present):
        xs, ys, es = [], [], []
        for j, g in enumerate(groups):
            s = stats.get((g, m))
            if s is None or math.isnan(s.mean):
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(s.mean)
            es.append(s.std if s.has_std else 0.0)
        ax.bar(xs, ys, width=width, color=colors.get(m), label=m,
               yerr=es if any(e > 0 for e in es) else None, capsize=1.5, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    _legend(fig)
    return Figure(caption, _to_uri(fig), ylabel)


def model_bars(panels: list[tuple[str, dict, bool]], models: list[str], colors: dict, caption: str) -> Figure | None:
    """One panel per (title, stats by (model,), log scale): one bar per model."""
    if not panels:
        return None
    present = [m for m in models if any((m,) in p[1] for p in panels)]
    fig = _new_figure(max(2.6, 0.32 * len(present) + 0.8) * len(panels) + 1.0, 3.0)
    fig.subplots_adjust(right=0.97, bottom=0.9 / 3.0, wspace=0.35)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, stats, log) in zip(axes, panels):
        ms = [m for m in present if (m,) in stats]
        ys = [stats[(m,)].mean for m in ms]
        es = [stats[(m,)].std if stats[(m,)].has_std else 0.0 for m in ms]
        ax.bar(range(len(ms)), ys, color=[colors.get(m) for m in ms], yerr=es if any(es) else None, capsize=2)
        ax.set_xticks(range(len(ms)), ms, rotation=35, ha="right", fontsize=9)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    return Figure(caption, _to_uri(fig), "efficiency")


def shift_figure(df, models: list[str], colors: dict) -> Figure | None:
    """Accuracy and ECE against shift severity (mean over shift types), one line per model."""
    shifted = df[(df["severity"] != "") & df["metric"].isin(["accuracy", "ece"])]
    if (shifted["shift"] != "mean").any():  # average the types here, not the suite's own mean rows
        shifted = shifted[shifted["shift"] != "mean"]
    if shifted.empty:
        return None
    per_seed = (shifted.groupby(["metric", "model", "seed", "severity"], sort=False)["value"].mean()
                .reset_index().assign(ci_low=float("nan"), ci_high=float("nan")))
    base = df[(df["shift"] == "") & (df["severity"] == "") & df["metric"].isin(["accuracy", "ece"])]
    base_stats = seed_stats(base, ["metric", "model"])
    stats = seed_stats(per_seed, ["metric", "model", "severity"])
    metrics = [m for m in ("accuracy", "ece") if (per_seed["metric"] == m).any()]
    fig = _new_figure(3.2 * len(metrics) + LEGEND_INCHES + 0.6, 3.0)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3)
    for ax, metric in zip(axes, metrics):
        for m in models:
            pts = sorted((float(k[2]), s) for k, s in stats.items() if k[0] == metric and k[1] == m)
            if (metric, m) in base_stats:
                pts = [(0.0, base_stats[(metric, m)])] + pts
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], m, colors.get(m), model_marker(models, m))
        ax.set_title(metric)
        ax.set_xlabel("severity (0 = clean test)")
        ax.grid(alpha=0.3)
    _legend(fig)
    return Figure("Accuracy and ECE against shift severity, averaged over shift types; mean \u00b1 std over seeds.",
                  _to_uri(fig), "calibration under shift")


def membership_roc_overlay(run_dir: Path, suite: str, models: list[str], colors: dict) -> Figure | None:
    """Log-log ROC of the strongest attack, one line per model, from the saved per-example arrays.

    Each model's first seed; in the shared design every target's scores pooled into one ROC. The
    strongest attack is the one with the highest TPR at 1% FPR averaged over the models."""
    import numpy as np

    from ..examples import load_examples
    from ..metrics import membership as mia

    files = load_examples(run_dir, suite=suite)
    first = {}
    for (_, model, seed), arrays in sorted(files.items(), key=lambda kv: kv[0][2]):
        if model in models and model not in first and mia.targets_in_examples(arrays):
            first[model] = (seed, arrays)
    if not first:
        return None
    common = [a for a in mia.attacks_in_examples(next(iter(first.values()))[1])
              if all(a in mia.attacks_in_examples(arr) for _, arr in first.values())]
    if not common:
        return None
    curves = {m: {a: mia.roc(*mia.pooled_from_examples(arr, a)) for a in common} for m, (_, arr) in first.items()}
    strength = {a: np.mean([mia.tpr_at_fpr(*curves[m][a], 0.01) for m in curves]) for a in common}
    attack = max(common, key=lambda a: strength[a])
    width = 5.0 + LEGEND_INCHES
    fig = _new_figure(width, 4.2)
    fig.subplots_adjust(left=0.85 / width)  # room for the log-scale tick labels and the y label
    ax = fig.subplots()
    lowest = 1.0
    for m in models:
        if m not in curves:
            continue
        fpr, tpr = curves[m][attack]
        n_out = int(round(1.0 / fpr[fpr > 0].min())) if (fpr > 0).any() else 1
        lo = 1.0 / n_out
        lowest = min(lowest, lo)
        grid = np.geomspace(lo / 2, 1.0, 300)  # a log grid keeps the SVG small
        at = np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(tpr) - 1)
        ax.plot(grid, np.maximum(tpr[at], 1e-5), lw=1.4, color=colors.get(m), label=m, drawstyle="steps-post")
    ax.plot([lowest, 1], [lowest, 1], ":", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lowest / 2, 1)
    ax.set_ylim(lowest / 2, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"{attack}: every model")
    ax.grid(alpha=0.3, which="both")
    _legend(fig)
    return Figure(f"Membership inference, log-log ROC of the strongest attack ({attack}: highest TPR at 1% FPR "
                  f"averaged over the models) for every model, each model's first seed, every target's scores "
                  f"pooled; below the grey chance line an attack does no better than guessing.",
                  _to_uri(fig), "membership ROC, every model")


def exposed_overlap_table(run_dir: Path, suite: str, models: list[str]):
    """Overlap of the top-exposed training examples between models (first seed each), or None."""
    from ..examples import load_examples
    from ..metrics import membership as mia
    from .tables import Cell, Table

    files = load_examples(run_dir, suite=suite)
    tops = {}
    for (_, model, _seed), arrays in sorted(files.items(), key=lambda kv: kv[0][2]):
        ids = mia.exposed_identities(arrays)
        if model in models and model not in tops and ids:
            tops[model] = ids
    names = [m for m in models if m in tops]
    if len(names) < 2:
        return None
    head = [[Cell("model", header=True)] + [Cell(m, header=True) for m in names]]
    body = [[Cell(a, header=True)] + [Cell(f"{mia.top_overlap(tops[a], tops[b]):.2f}") for b in names]
            for a in names]
    k = min(len(t) for t in tops.values())
    return Table("Overlap of the most exposed training examples", head, body,
                 caption=f"Fraction of the {k} training examples each model exposes most (highest mean LiRA "
                         f"score while a member) that the other model also has in its top {k}; each model's "
                         f"first seed. A high overlap says the same examples are vulnerable whatever the model.")
