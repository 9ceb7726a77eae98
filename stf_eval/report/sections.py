"""One report section per suite entry: its tables (chosen by the metrics it recorded), figures, notes.

Layouts follow the metric families of docs/ (calibration, OOD, adversarial, membership, efficiency),
so a renamed suite, or a suite that records metrics of several families, still gets the right tables; unknown metrics get a generic table.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from .figures import (
    Figure,
    exposed_overlap_table,
    grouped_bars,
    membership_roc_overlay,
    model_bars,
    robust_accuracy_figure,
    saved_figure,
    shift_figure,
)
from .headline import ood_per_set
from .stats import seed_stats
from .tables import Cell, Table, pivot, varying

log = logging.getLogger("stf_eval")

CALIBRATION = ("accuracy", "nll", "brier", "ece", "ece_adaptive", "ece_classwise", "mce")
OOD = ("auroc", "fpr95", "aupr_in", "aupr_out")
ADVERSARIAL = ("clean_accuracy", "robust_accuracy")
MEMBERSHIP = ("tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "mia_auc", "mia_balanced_accuracy")
MEMBERSHIP_POOLED = ("tpr_at_0.1pct_fpr_pooled", "tpr_at_1pct_fpr_pooled", "mia_auc_pooled")
MEMBERSHIP_MODEL = ("generalization_gap", "dp_epsilon", "dp_audit_epsilon_lb")
EFFICIENCY = ("trainable_params", "distribution_params", "total_params", "forward_passes_per_prediction",
              "latency_ms_per_example")
STAGED = ("train_seconds", "peak_memory_mb")
KNOWN = set(CALIBRATION + OOD + ADVERSARIAL + MEMBERSHIP + MEMBERSHIP_POOLED + MEMBERSHIP_MODEL + EFFICIENCY + STAGED
            + ("adv_detection_auroc", "sanity_check", "robust_accuracy_std"))
LONG_TABLE = 30  # rows; longer tables start collapsed


@dataclass
class Block:
    table: Table
    open: bool = True


@dataclass
class Section:
    id: str
    title: str
    plugin: str
    blocks: list[Block] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)  # drawn by the report from the records
    saved: list[tuple[str, list[Figure]]] = field(default_factory=list)  # (figure name, figures)
    saved_left_out: int = 0  # saved figures of further seeds not embedded
    notes: list[tuple[str, str]] = field(default_factory=list)  # (text, who)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    protocol: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def draw(self, fn, *args, **kwargs) -> None:
        """Add a figure drawn by ``fn``; a plotting failure costs that figure only."""
        try:
            fig = fn(*args, **kwargs)
        except Exception as exc:
            log.warning("report: figure %s of %s failed: %s: %s", fn.__name__, self.title, type(exc).__name__, exc)
            self.notes.append((f"figure {fn.__name__} could not be drawn ({type(exc).__name__}: {exc})", "report"))
            return
        if fig is not None:
            self.figures.append(fig)

    def add(self, table: Table | None, open_: bool | None = None) -> None:
        if table is not None:
            self.blocks.append(Block(table, table.n_rows <= LONG_TABLE if open_ is None else open_))


def slug(text: str) -> str:
    return "s-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x")


def _orders(models: list[str]) -> dict:
    return {"model": models, "metric": list(CALIBRATION + OOD + MEMBERSHIP + MEMBERSHIP_MODEL + EFFICIENCY)}


def calibration_blocks(sec: Section, df, models, bins) -> None:
    cal = df[df["metric"].isin(CALIBRATION)]
    if cal.empty:
        return
    base = cal[(cal["shift"] == "") & (cal["severity"] == "")]
    ci = " [95% bootstrap CI]" if base["ci_low"].notna().any() else ""
    sec.add(pivot(base, ["model"], ["metric"], "Calibration on the test split", orders=_orders(models),
                  caption=f"Predictive mean (softmax averaged over S samples); ECE with {bins} equal-width "
                          f"bins, adaptive ECE with equal-mass bins; cells: mean \u00b1 std over seeds{ci}."))
    shifted = cal[(cal["shift"] != "") | (cal["severity"] != "")]
    if shifted.empty:
        return
    import pandas as pd

    if (shifted["shift"] == "mean").any():  # the suite averaged the shift types itself
        both = shifted
        mean_note = "rows 'mean' are the suite's average over shift types (empty severity: over all)"
    else:
        means = (shifted.groupby(["metric", "model", "seed", "severity"], sort=False)["value"].mean()
                 .reset_index().assign(shift="mean", ci_low=float("nan"), ci_high=float("nan")))
        both = pd.concat([shifted, means], ignore_index=True)
        mean_note = "rows 'mean' average the shift types (computed here)"
    for metric in [m for m in CALIBRATION if (shifted["metric"] == m).any()]:
        sec.add(pivot(both[both["metric"] == metric], ["shift", "severity"], ["model"], f"{metric} under shift",
                      metric=metric, best="row", orders=_orders(models),
                      caption=f"One row per shift type and severity; {mean_note}; the best model of each row "
                              "is marked."),
                open_=False)
    sec.draw(shift_figure, df, models, _colors(models))


def ood_blocks(sec: Section, df, run, models) -> None:
    per_set, sets = ood_per_set(df, run)
    if per_set.empty:
        return
    groups = run.ood_groups()
    for s in sets:  # the records' group column when the config does not say
        if not groups.get(s):
            g = per_set[per_set["ood_set"] == s]["group"]
            groups[s] = str(next((x for x in g if x != ""), ""))
    import pandas as pd

    extra, labels = [], {}
    for name, members in (("near mean", [s for s in sets if groups.get(s) == "near"]),
                          ("far mean", [s for s in sets if groups.get(s) == "far"]), ("mean", sets)):
        sel = per_set[per_set["ood_set"].isin(members)]
        if sel.empty or len(members) < 2:  # a one-set mean would repeat that set's column
            continue
        extra.append(sel.groupby(["metric", "score", "model", "seed"], sort=False)["value"].mean().reset_index()
                     .assign(ood_set=name, ci_low=float("nan"), ci_high=float("nan")))
        labels[("ood_set", name)] = (name, f"mean over {', '.join(map(str, members))}")
    for s in sets:
        labels[("ood_set", s)] = (f"{s} ({groups[s]})" if groups.get(s) else str(s), f"OOD set {s}")
    both = pd.concat([per_set, *extra], ignore_index=True)
    order = {**_orders(models), "ood_set": sets + [n for n in ("near mean", "far mean", "mean")]}
    for metric in [m for m in OOD if (per_set["metric"] == m).any()]:
        sec.add(pivot(both[both["metric"] == metric], ["score", "model"], ["ood_set"], f"OOD {metric}",
                      metric=metric, best_within="score", orders=order, col_labels=labels,
                      caption="In-distribution is the positive class (OpenOOD v1.5). Rows: OOD score x model; "
                              "the best model per score and set is marked."),
                open_=metric in ("auroc", "fpr95"))
    recorded = df[df["metric"].isin(OOD) & ~df["ood_set"].isin(sets)]
    if not recorded.empty:
        sec.notes.append((f"rows recorded for {', '.join(map(str, dict.fromkeys(recorded['ood_set'])))} are "
                          "left out of these tables: group means are recomputed here from the per-set rows "
                          "(they are in the records table)", "report"))
    auroc = per_set[per_set["metric"] == "auroc"]
    from .headline import ood_headline_score

    score = ood_headline_score(auroc)
    if score is not None:
        stats = seed_stats(auroc[auroc["score"] == score], ["ood_set", "model"])
        sec.draw(grouped_bars, stats, sets, models, _colors(models), f"AUROC ({score})",
                                        f"OOD AUROC per set with score '{score}'; mean \u00b1 std over seeds.",
                                        ylim=(0.0, 1.0))


def adversarial_blocks(sec: Section, df, models) -> None:
    acc = df[df["metric"].isin(ADVERSARIAL)].copy()
    if not acc.empty:
        clean = acc["metric"] == "clean_accuracy"
        acc.loc[clean, "attack"] = "clean"
        acc.loc[clean, "eps"] = ""
        labels = {("attack", "clean"): ("clean", "clean accuracy of the attacked examples"),
                  ("eps", ""): ("", "no attack")}
        sec.add(pivot(acc, ["model"], ["attack", "eps"], "Robust accuracy", metric="robust_accuracy",
                      orders={**_orders(models), "attack": ["clean"]}, col_labels=labels,
                      caption="Accuracy on adversarial examples of the deployed predictive (log mean softmax "
                              "over S samples, sampling on) per attack and eps; the best model per column is "
                              "marked."))
        sec.draw(robust_accuracy_figure, df, models, _colors(models))
    spread = df[df["metric"] == "robust_accuracy_std"]
    if not spread.empty:
        sec.add(pivot(spread, ["model"], ["attack", "eps"], "Robust accuracy: std over re-evaluations",
                      metric="robust_accuracy_std", best="none", orders=_orders(models),
                      caption="Standard deviation of robust accuracy over the R re-evaluations of a stochastic "
                              "model with fresh samples (0 for a deterministic model)."), open_=False)
    det = df[df["metric"] == "adv_detection_auroc"]
    if not det.empty:
        sec.add(pivot(det, ["model"], varying(det, ["attack", "eps", "score"]),
                      "Detecting adversarial inputs (AUROC)", metric="adv_detection_auroc",
                      orders=_orders(models),
                      caption="AUROC of separating adversarial from clean inputs by each uncertainty score."))
    sanity = sanity_table(df, models)
    if sanity is not None:
        sec.add(sanity, open_=True)


def sanity_table(df, models) -> Table | None:
    """Check x model: pass/fail marks (over seeds) with the check's note as the detail."""
    checks = df[df["metric"] == "sanity_check"]
    if checks.empty:
        return None
    checks = checks.assign(check=checks["attack"].map(lambda a: a if a != "" else "check"))
    names = list(dict.fromkeys(checks["check"]))
    present = [m for m in models if (checks["model"] == m).any()]
    head = [[Cell("sanity check", header=True, cls="rowkey")] + [Cell(m, header=True) for m in present]]
    body = []
    for name in names:
        row = [Cell(str(name).replace("_", " "), header=True, cls="rowkey", title=str(name))]
        for m in present:
            sel = checks[(checks["model"] == m) & (checks["check"] == name)]
            if sel.empty:
                row.append(Cell("\u2013", cls="na", title="not run"))
                continue
            passed = int((sel["value"] >= 0.5).sum())
            n = len(sel)
            notes = "; ".join(f"seed {s}: {'pass' if v >= 0.5 else 'FAIL'}" + (f" ({t})" if t else "")
                              for s, v, t in zip(sel["seed"], sel["value"], sel["note"]))
            failing = [str(t) for v, t in zip(sel["value"], sel["note"]) if v < 0.5 and t]
            if passed == n:
                row.append(Cell("\u2713 pass", cls="pass", title=notes))
            else:
                text = "\u2717 fail" if passed == 0 else f"\u2717 fail in {n - passed}/{n} seeds"
                row.append(Cell(text, cls="fail wrap", title=notes, sub=failing[0][:120] if failing else ""))
        body.append(row)
    return Table("Adversarial sanity checks", head, body,
                 caption="Carlini et al. 2019: a failed check means the robustness numbers above may be "
                         "unreliable (e.g. gradient masking). Hover a mark for each seed's detail.")


def membership_blocks(sec: Section, df, run, models) -> None:
    mia = df[df["metric"].isin(MEMBERSHIP)]
    if not mia.empty:
        sec.add(pivot(mia, ["attack", "model"], ["metric"], "Membership inference",
                      orders=_orders(models), best_within="attack",
                      caption="Members = the examples a target trained on, non-members = the rest of the pool "
                              "(train + test splits); shared design: mean over the targets with an interval "
                              "over targets. The attacker queries the deployed predictive. TPR at low FPR "
                              "first (Carlini et al. 2022), empty where too few non-members resolve it; gap "
                              "is the label-only floor; lower is more private; the best model per attack is "
                              "marked."),
                open_=True)
    per_model = df[df["metric"].isin(MEMBERSHIP_MODEL)].copy()
    if not per_model.empty:
        per_model["attack"] = ""  # the same figure is recorded once per attack by some suites
        sec.add(pivot(per_model, ["model"], ["metric"], "Generalisation gap and privacy budget",
                      orders=_orders(models),
                      caption="Train minus test accuracy of the cell's model; epsilon spent by DP-SGD models; "
                              "the empirical epsilon lower bound of the DP audit (docs/membership.md)."))
    pooled = df[df["metric"].isin(MEMBERSHIP_POOLED)]
    if not pooled.empty:
        sec.add(pivot(pooled, ["attack", "model"], ["metric"], "Membership inference, targets pooled",
                      orders=_orders(models), best_within="attack",
                      caption="Every target's scores in one ROC (shared design): more non-members behind "
                              "each low-FPR point than one target has."), open_=False)
    if not mia.empty and run is not None:
        suite = str(df["suite"].iloc[0])
        sec.draw(membership_roc_overlay, run.path, suite, models, _colors(models))
        sec.add(exposed_overlap_table(run.path, suite, models))
    tpr = mia[mia["metric"] == "tpr_at_1pct_fpr"]
    if not tpr.empty:
        attacks = list(dict.fromkeys(tpr["attack"]))
        sec.draw(grouped_bars, seed_stats(tpr, ["attack", "model"]), attacks, models, _colors(models),
                                        "TPR at 1% FPR", "Membership-inference TPR at 1% FPR per attack; "
                                        "mean \u00b1 std over seeds (lower is more private).")


def efficiency_blocks(sec: Section, df, models) -> None:
    eff = df[df["metric"].isin(EFFICIENCY) & (df["stage"] == "")]
    if not eff.empty:
        sec.add(pivot(eff, ["model"], ["metric"], "Parameters and inference cost", orders=_orders(models),
                      caption="Trainable parameters of the last training stage; distribution parameters are "
                              "variational mu and rho; latency per example at the evaluation S."))
    for metric, title in (("train_seconds", "Training seconds per stage"),
                          ("peak_memory_mb", "Peak training memory per stage (MiB)")):
        sel = df[(df["metric"] == metric) & (df["stage"] != "")]
        if not sel.empty:
            sec.add(pivot(sel, ["model"], ["stage"], title, metric=metric, orders=_orders(models), best="none",
                          caption="Stages loaded from the checkpoint cache keep the figures measured when "
                                  "they were trained ('total' = sum of seconds / max of memory)."))
    secs = df[(df["metric"] == "train_seconds") & (df["stage"] == "total")]
    params = df[(df["metric"] == "trainable_params") & (df["stage"] == "")]
    panels = [(title, seed_stats(sel, ["model"]), log) for title, sel, log in
              (("training seconds, all stages", secs, False), ("trainable parameters (log)", params, True))
              if not sel.empty]
    sec.draw(model_bars, panels, models, _colors(models),
                                  "Training seconds (all stages) and trainable parameters per model; "
                                  "mean \u00b1 std over seeds.")


def generic_blocks(sec: Section, df, models) -> None:
    other = df[~df["metric"].isin(KNOWN)]
    if other.empty:
        return
    cols = ["metric"] + varying(other, ["attack", "eps", "ood_set", "score", "shift", "severity", "stage"])
    sec.add(pivot(other, ["model"], cols, "Other metrics", orders=_orders(models), best="column",
                  caption="Metrics without a dedicated layout (see stf_eval/metrics/names.py for their meaning)."))


_COLOR_CACHE: dict[tuple, dict] = {}


def _colors(models: list[str]) -> dict:
    key = tuple(models)
    if key not in _COLOR_CACHE:
        from .figures import model_colors

        _COLOR_CACHE[key] = model_colors(models)
    return _COLOR_CACHE[key]


def protocol_lines(params: dict, families: set[str], bins) -> list[str]:
    lines = []
    if "calibration" in families:
        lines.append(f"ECE: top-label, {bins} equal-width confidence bins (Guo et al. 2017); adaptive ECE: "
                     "equal-mass bins; classwise ECE: Kull et al. 2019; MCE: largest bin gap.")
    if "ood" in families:
        lines.append("OOD: in-distribution is the positive class; FPR@95TPR = fraction of OOD inputs accepted "
                     "when 95% of in-distribution inputs are accepted. Near/far means average the per-set "
                     "figures of each group.")
    if "adversarial" in families:
        lines.append("Attacks target the deployed predictive: log of the mean softmax over S samples with "
                     "sampling on (expectation over transformation, Athalye et al. 2018).")
    if "membership" in families:
        refs = {k: v for k, v in params.items() if re.search(r"reference|shadow", k)}
        lines.append("Membership: members = the examples a target trained on, non-members = the rest of the "
                     "pool (train + test); the attacker queries the deployed predictive" + (f"; reference models: {', '.join(f'{k} = {v}' for k, v in refs.items())}" if refs else "") + ".")
    return lines


def families_of(df) -> set[str]:
    m = set(df["metric"])
    fam = set()
    for name, metrics in (("calibration", CALIBRATION), ("ood", OOD), ("adversarial", ADVERSARIAL + (
            "adv_detection_auroc", "sanity_check")), ("membership", MEMBERSHIP + MEMBERSHIP_MODEL),
                          ("efficiency", EFFICIENCY + STAGED)):
        if m & set(metrics):
            fam.add(name)
    return fam


FIGURE_CHOICES = ("first-seed", "all", "none")


def build_sections(run, df, models: list[str], figures: str = "first-seed") -> list[Section]:
    """``figures``: which figures saved by the suites to embed (the report's own are always drawn)."""
    suites = list(run.config.get("suites", {}))
    for s in list(dict.fromkeys(df["suite"])) + [n.get("suite") for n in run.results.get("notes", [])]:
        if s and s not in suites:
            suites.append(s)
    out = []
    for suite in suites:
        params = run.suite_params(suite)
        plugin = str(params.pop("plugin", suite))
        sub = df[df["suite"] == suite]
        bins = params.get("bins", 15)
        shown = {k: (", ".join(map(str, v)) if isinstance(v, (list, tuple)) else
                     json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in params.items()}
        sec = Section(id=slug(suite), title=suite if plugin == suite else f"{suite} ({plugin})", plugin=plugin,
                      params=shown)
        if sec.id in {o.id for o in out}:
            sec.id += f"-{len(out)}"
        fam = families_of(sub)
        for build, args in ((calibration_blocks, (bins,)), (ood_blocks, None), (adversarial_blocks, ()),
                            (membership_blocks, None), (efficiency_blocks, ()), (generic_blocks, ())):
            try:
                if args is None:
                    build(sec, sub, run, models)
                else:
                    build(sec, sub, models, *args)
            except Exception as exc:  # unexpected records must not cost the rest of the report
                log.warning("report: %s of suite %s failed: %s: %s", build.__name__, suite, type(exc).__name__, exc)
                sec.notes.append((f"part of this section could not be rendered ({build.__name__}: "
                                  f"{type(exc).__name__}: {exc})", "report"))
        sec.figures = [f for f in sec.figures if f is not None]
        sec.protocol = protocol_lines(params, fam, bins)
        _notes(sec, run, suite)
        _saved_figures(sec, run, suite, models, figures)
        out.append(sec)
    try:  # models that differ only in the layer made Bayesian (suites/placement.toml)
        from .placement import placement_section

        placement = placement_section(run, df, models)
    except Exception as exc:
        log.warning("report: layer placement section failed: %s: %s", type(exc).__name__, exc)
        placement = None
    if placement is not None:
        out.append(placement)
    return out


def _notes(sec: Section, run, suite: str) -> None:
    grouped: dict[str, list[str]] = {}
    for n in run.results.get("notes", []):
        if n.get("suite") != suite:
            continue
        grouped.setdefault(str(n.get("text", "")), []).append(f"{n.get('model', '')} s{n.get('seed', '')}")
    n_cells = len(run.cells) or 1
    for text, who in grouped.items():
        where = "all cells" if len(who) == n_cells else ", ".join(who)
        if text.startswith("skipped:"):
            sec.skipped.append((text[len("skipped:"):].strip(), where))
        else:
            sec.notes.append((text, where))


def _saved_figures(sec: Section, run, suite: str, models: list[str], which: str) -> None:
    rank = {m: i for i, m in enumerate(models)}
    entries = [f for f in run.results.get("figures", []) if f.get("suite") == suite]
    entries.sort(key=lambda f: (rank.get(f.get("model"), 1e9), f.get("seed", 0)))
    if which != "all":
        first = {}
        for f in entries:
            first.setdefault(f.get("model"), f.get("seed"))
        kept = [f for f in entries if which == "first-seed" and f.get("seed") == first[f.get("model")]]
        sec.saved_left_out = len(entries) - len(kept)
        entries = kept
    by_name: dict[str, list[Figure]] = {}
    for entry in entries:
        # default: the PNG copies (light); --figures all: every seed's figures as vector SVG
        by_name.setdefault(str(entry.get("name", "figure")), []).append(
            saved_figure(run.path, entry, raster=which != "all"))
    sec.saved = list(by_name.items())
