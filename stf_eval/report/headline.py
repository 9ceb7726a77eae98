"""The headline figures of a run: one number per (model, seed) per column of the summary table.

Each selection is fixed in advance and stated in the column's tooltip, never chosen per model:
- accuracy, NLL, ECE: the calibration records on the clean test split (no shift);
- OOD AUROC: one score for every model (``entropy`` if recorded, else ``msp``, else the first), mean
  over the per-set AUROCs; with near and far sets, also the near and the far mean apart;
- robust accuracy: PGD (else the first attack) at the middle eps of the sweep (lower median of eps > 0);
- MIA AUC and TPR@1%FPR: the maximum over the attacks run (the strongest attack bounds the leak);
- train seconds: the ``total`` stage (else the sum of the stages); trainable parameters; latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import SETTING_COLUMNS

OOD_SCORE_PREFERENCE = ("entropy", "predictive_entropy", "msp", "max_softmax")
ATTACK_PREFERENCE = "pgd"


@dataclass
class Headline:
    key: str
    metric: str  # the metric whose direction and format apply
    label: str
    title: str
    frame: object  # DataFrame: model, seed, value, ci_low, ci_high


def plain(df, metric: str):
    """Rows of ``metric`` with no setting at all (clean test split, no attack, no stage)."""
    sel = df[df["metric"] == metric]
    for col in SETTING_COLUMNS:
        sel = sel[sel[col] == ""]
    return sel


def calibration_rows(df, run, metric: str):
    """``metric`` on the clean test split, from the calibration suite(s) when the run has one."""
    sel = plain(df, metric)
    suites = [name for name, spec in run.config.get("suites", {}).items()
              if isinstance(spec, dict) and spec.get("plugin", name) == "calibration"]
    own = sel[sel["suite"].isin(suites)]
    return own if not own.empty else sel


def ood_per_set(df, run) -> tuple[object, list[str]]:
    """OOD rows of single sets (recorded group means are left out: the report averages itself)."""
    ood = df[df["metric"].isin(["auroc", "aupr_in", "aupr_out", "fpr95"]) & (df["ood_set"] != "")]
    known = [s for s in run.ood_groups() if s in set(ood["ood_set"])]
    sets = known or list(dict.fromkeys(ood["ood_set"]))
    return ood[ood["ood_set"].isin(sets)], sets


def ood_headline_score(ood) -> str | None:
    scores = list(dict.fromkeys(ood["score"]))
    for s in OOD_SCORE_PREFERENCE:
        if s in scores:
            return s
    return scores[0] if scores else None


def headline_attack(df) -> tuple[str | None, float | None]:
    rob = df[(df["metric"] == "robust_accuracy") & (df["attack"] != "") & (df["eps"] != "")]
    attacks = list(dict.fromkeys(rob["attack"]))
    if not attacks:
        return None, None
    attack = next((a for a in attacks if ATTACK_PREFERENCE in str(a).lower()), attacks[0])
    eps = sorted({float(e) for e in rob[rob["attack"] == attack]["eps"] if float(e) > 0})
    return attack, (eps[(len(eps) - 1) // 2] if eps else None)


def _frame(sel):
    return sel[["model", "seed", "value", "ci_low", "ci_high"]]


def _reduce(sel, how: str):
    """One value per (model, seed): mean or max over the selected rows (no CI survives)."""
    g = sel.groupby(["model", "seed"], sort=False)["value"]
    out = (g.mean() if how == "mean" else g.max()).reset_index()
    return out.assign(ci_low=float("nan"), ci_high=float("nan"))


def headlines(df, run) -> list[Headline]:
    out = []
    for metric, label in (("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE")):
        sel = calibration_rows(df, run, metric)
        if not sel.empty:
            out.append(Headline(metric, metric, label, f"{metric} on the test split (no shift)", _frame(sel)))
    ood, sets = ood_per_set(df, run)
    auroc = ood[ood["metric"] == "auroc"]
    score = ood_headline_score(auroc)
    if score is not None:
        sel = auroc[auroc["score"] == score]
        out.append(Headline("ood_auroc", "auroc", f"OOD AUROC ({score})",
                            f"AUROC with score '{score}', mean over the OOD sets {', '.join(map(str, sets))}",
                            _reduce(sel, "mean")))
        groups = run.ood_groups()
        by_group = {g: [s for s in sets if groups.get(s) == g] for g in ("near", "far")}
        if all(by_group.values()):  # near and far apart (OpenOOD reports them apart): a far-heavy mean hides near
            for g, members in by_group.items():
                out.append(Headline(f"ood_auroc_{g}", "auroc", f"{g} OOD AUROC ({score})",
                                    f"AUROC with score '{score}', mean over the {g} OOD sets {', '.join(map(str, members))}",
                                    _reduce(sel[sel["ood_set"].isin(members)], "mean")))
    attack, eps = headline_attack(df)
    if attack is not None and eps is not None:
        sel = df[(df["metric"] == "robust_accuracy") & (df["attack"] == attack)]
        sel = sel[sel["eps"].map(lambda e: e != "" and abs(float(e) - eps) < 1e-12)]
        out.append(Headline("robust_accuracy", "robust_accuracy", f"robust acc. ({attack}, eps {eps:.4g})",
                            f"robust accuracy under {attack} at eps = {eps:.4g} (middle of the eps sweep)",
                            _frame(sel)))
    for metric, label in (("mia_auc", "MIA AUC"), ("tpr_at_1pct_fpr", "MIA TPR@1%FPR")):
        sel = df[df["metric"] == metric]
        if not sel.empty:
            attacks = ", ".join(str(a) for a in dict.fromkeys(sel["attack"]) if a != "") or "the one attack"
            out.append(Headline(metric, metric, label, f"{metric}, maximum over attacks ({attacks})",
                                _reduce(sel, "max")))
    secs = df[df["metric"] == "train_seconds"]
    if not secs.empty:
        total = secs[secs["stage"] == "total"]
        # models without a 'total' row: the sum of their stages
        rest = secs[~secs["model"].isin(set(total["model"])) & (secs["stage"] != "total")]
        parts = [_frame(total)]
        if not rest.empty:
            parts.append(rest.groupby(["model", "seed"], sort=False)["value"].sum().reset_index()
                         .assign(ci_low=float("nan"), ci_high=float("nan")))
        import pandas as pd

        out.append(Headline("train_seconds", "train_seconds", "train s",
                            "training wall-clock seconds, all stages (cached stages: as first measured)",
                            pd.concat(parts, ignore_index=True)))
    for metric, label in (("trainable_params", "trainable params"),
                          ("latency_ms_per_example", "latency ms/example")):
        sel = plain(df, metric)
        if not sel.empty:
            out.append(Headline(metric, metric, label, metric.replace("_", " "), _frame(sel)))
    return out
