"""The "Layer placement" section: headline metrics against the layer made Bayesian.

Shown when a run has two or more ``stf_bnn`` models whose parameters differ only in ``layers``
(suites/placement.toml). One panel per headline metric (accuracy, NLL, ECE, OOD AUROC on the near and
on the far sets, robust accuracy at the middle eps, MIA AUC of the strongest attack); x is the layer
placed, in the network's order (single layers by name, then multi-layer placements such as "all");
the deterministic reference, when present, is a dashed line. Points are means over seeds; intervals
are the records' 95% CIs (averaged over seeds) where the records carry ci_low/ci_high, else the
range over seeds, else none.
"""

from __future__ import annotations

import math
import re

from .figures import Figure, _new_figure, _to_uri
from .headline import calibration_rows, headline_attack, ood_headline_score, ood_per_set
from .stats import fmt
from .tables import Cell, Table

PLUGIN = "stf_bnn"


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def placement_models(run) -> list[tuple[str, str]]:
    """[(model, placement label)] of the largest group of stf_bnn models differing only in ``layers``."""
    groups: dict[str, list[str]] = {}
    for model, spec in run.config.get("models", {}).items():
        if not isinstance(spec, dict) or spec.get("plugin", model) != PLUGIN:
            continue
        rest = {k: v for k, v in spec.items() if k not in ("layers", "plugin")}
        groups.setdefault(repr(sorted(rest.items())), []).append(model)
    best = max(groups.values(), key=len, default=[])
    resolved = {}
    for model in best:
        layers = None
        for cell in run.cells:
            if cell.get("model") == model:
                layers = (cell.get("capabilities") or {}).get("notes", {}).get("variational_layers")
                break
        if not layers:
            layers = run.config["models"][model].get("layers", "first")
        resolved[model] = [layers] if isinstance(layers, str) else [str(x) for x in layers]
    if len({tuple(v) for v in resolved.values()}) < 2:
        return []
    spec_layers = {m: run.config["models"][m].get("layers", "first") for m in best}

    def label(m):
        named = spec_layers[m]
        if isinstance(named, str) and named in ("all", "first", "last") and len(resolved[m]) > 1:
            return named
        return "+".join(resolved[m])

    order = sorted(best, key=lambda m: (len(resolved[m]) > 1, len(resolved[m]), _natural("+".join(resolved[m]))))
    return [(m, label(m)) for m in order]


def _per_model(sel, how: str = "value"):
    """model -> (mean over seeds, interval low, interval high) from rows with value, ci_low, ci_high, seed."""
    out = {}
    for model, g in sel.groupby("model", sort=False):
        vals = g["value"].astype(float)
        lo, hi = g["ci_low"].astype(float), g["ci_high"].astype(float)
        mean = float(vals.mean())
        if lo.notna().all() and hi.notna().all() and len(g):
            out[model] = (mean, float(lo.mean()), float(hi.mean()))
        elif len(g) > 1:
            out[model] = (mean, float(vals.min()), float(vals.max()))
        else:
            out[model] = (mean, math.nan, math.nan)
    return out


def placement_metrics(df, run) -> list[tuple[str, str, dict]]:
    """[(panel title, metric for direction/format, model -> (mean, low, high))]."""
    panels = []
    for metric, title in (("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE")):
        sel = calibration_rows(df, run, metric)
        if not sel.empty:
            panels.append((title, metric, _per_model(sel)))
    ood, sets = ood_per_set(df, run)
    auroc = ood[ood["metric"] == "auroc"]
    score = ood_headline_score(auroc)
    if score is not None:
        groups = run.ood_groups()
        for group in ("near", "far"):
            members = [s for s in sets if groups.get(s) == group]
            sel = auroc[(auroc["score"] == score) & auroc["ood_set"].isin(members)]
            if sel.empty:
                continue
            if len(members) > 1:  # mean over the group's sets per seed: no CI survives the mean
                sel = (sel.groupby(["model", "seed"], sort=False)["value"].mean().reset_index()
                       .assign(ci_low=math.nan, ci_high=math.nan))
            panels.append((f"OOD AUROC {group} ({score})", "auroc", _per_model(sel)))
    attack, eps = headline_attack(df)
    if attack is not None and eps is not None:
        sel = df[(df["metric"] == "robust_accuracy") & (df["attack"] == attack)]
        sel = sel[sel["eps"].map(lambda e: e != "" and abs(float(e) - eps) < 1e-12)]
        panels.append((f"robust acc. ({attack}, eps {eps:.3g})", "robust_accuracy", _per_model(sel)))
    mia = df[df["metric"] == "mia_auc"]
    if not mia.empty:  # the strongest attack of each (model, seed), with that attack's interval
        idx = mia.groupby(["model", "seed"], sort=False)["value"].idxmax()
        panels.append(("MIA AUC (strongest attack)", "mia_auc", _per_model(mia.loc[idx])))
    return panels


def placement_figure(placed, panels, reference: str | None) -> Figure | None:
    models = [m for m, _ in placed]
    panels = [p for p in panels if any(m in p[2] for m in models)]
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    width, height = 3.0 * ncol + 0.4, 2.5 * nrow + 0.8
    fig = _new_figure(width, height)
    width = float(fig.get_size_inches()[0])  # capped to what the page shows unscaled
    fig.subplots_adjust(left=0.55 / width, right=0.98, bottom=0.7 / height, top=1 - 0.75 / height,
                        wspace=0.38, hspace=0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False).flatten()
    labels = [lab for _, lab in placed]
    handles = []
    for ax, (title, _metric, stats) in zip(axes, panels):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(models):
            if m in stats:
                mean, low, high = stats[m]
                xs.append(i)
                ys.append(mean)
                lo.append(0.0 if math.isnan(low) else max(0.0, mean - low))
                hi.append(0.0 if math.isnan(high) else max(0.0, high - mean))
        line = ax.errorbar(xs, ys, yerr=[lo, hi] if any(lo) or any(hi) else None, color="#1f77b4", marker="o",
                           markersize=5, linewidth=1.5, capsize=3, label="stf_bnn, layer placed")
        if reference and reference in stats:
            ref = ax.axhline(stats[reference][0], color="#444444", linestyle="--", linewidth=1.2,
                             label=f"{reference} (reference)")
            if len(handles) < 2:
                handles = [line, ref]
        elif not handles:
            handles = [line]
        ax.set_title(title, fontsize=11)
        ax.set_xticks(range(len(labels)), labels, fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel("layer made Bayesian (module name; network order)", fontsize=10, y=0.02)
    fig.legend(handles, [h.get_label() for h in handles], loc="upper center", ncol=len(handles), fontsize=10,
               frameon=False)
    return Figure("Headline metrics against the layer made Bayesian (same SVI budget everywhere). Points: mean "
                  "over seeds; bars: the records' 95% CI where recorded, else the range over seeds; dashed: the "
                  "deterministic reference.", _to_uri(fig), "layer placement")


def placement_table(placed, panels, reference: str | None) -> Table:
    rows = placed + ([(reference, f"{reference} (reference)")] if reference else [])
    head = [[Cell("placement", header=True)] + [Cell(title, header=True) for title, _, _ in panels]]
    body = []
    for model, label in rows:
        row = [Cell(label, cls="l", title=model)]
        for _title, metric, stats in panels:
            if model not in stats:
                row.append(Cell("\u2013", cls="na", title="not recorded"))
                continue
            mean, low, high = stats[model]
            sub = "" if math.isnan(low) else f"[{fmt(low, metric)}, {fmt(high, metric)}]"
            row.append(Cell(fmt(mean, metric), sub=sub, title=f"{metric} of {model}"))
        body.append(row)
    return Table("Headline metrics by layer placed", head, body,
                 caption="Mean over seeds; [interval] as in the figure.")


def placement_section(run, df, models: list[str]):
    """The Section, or None when the run has no placement experiment."""
    from .sections import Section

    placed = placement_models(run)
    if not placed:
        return None
    reference = next((m for m in models if run.plugin_of(m) == "deterministic"), None)
    panels = placement_metrics(df, run)
    sec = Section(id="s-layer-placement", title="Layer placement", plugin=PLUGIN)
    sec.protocol = [
        f"{len(placed)} {PLUGIN} models that differ only in the layers made Bayesian: "
        + ", ".join(f"{lab} ({m})" for m, lab in placed) + "."
        + (f" Reference: {reference}." if reference else ""),
        "OOD AUROC near/far: mean over the near (far) sets with the headline score; robust accuracy: the "
        "summary's attack at the middle eps; MIA AUC: the strongest attack of each cell."]
    if panels:
        sec.add(placement_table(placed, panels, reference))
        sec.draw(placement_figure, placed, panels, reference)
    return sec
