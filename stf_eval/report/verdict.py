"""Does THIS run support each claim of the STF-BNN paper?  Explicit rules (docs/report.md).

Models are found by plugin name, so renamed entries still count. Each claim is a set of comparisons
"STF-BNN vs a baseline on one metric in one setting"; each comparison is

* **better / worse** when the difference, in the metric's better direction, is beyond the noise:
  with >= 2 seeds on both sides, larger than sqrt(std_stf^2 + std_base^2) (sample stds over seeds);
  with one seed and 95% CIs on both sides, when the CIs do not overlap; otherwise (no error bar at
  all), larger than 2% of the larger magnitude;
* **tie** otherwise.

A claim is *supported* when at least one comparison is better and none is worse, *not supported*
when none is better, *mixed* when some are better and some worse, and *not measured in this run*
when STF-BNN, the baselines or the metrics are absent. A failed adversarial sanity check of STF-BNN
turns a *supported* robustness verdict into *mixed* (the numbers may reflect gradient masking).
Robustness and privacy use the strongest attack run, per model and seed (lowest robust accuracy at
each eps; highest MIA AUC / TPR): the tables above the verdict keep every attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..metrics.names import better
from .headline import Headline, calibration_rows, plain
from .stats import Stat, fmt, fmt_setting, seed_stats

REL_TOL = 0.02
STF = "stf_bnn"
NOT_IN_PREDICTION_CLAIM = {STF, "dp_sgd"}  # DP-SGD trades accuracy for privacy by design

SUPPORTED, NOT_SUPPORTED, MIXED, NOT_MEASURED = "supported", "not supported", "mixed", "not measured in this run"


@dataclass
class Comparison:
    baseline: str
    metric: str
    setting: str
    stf: Stat
    base: Stat
    outcome: str  # better / tie / worse (for STF-BNN)
    basis: str

    @property
    def diff_text(self) -> str:
        return fmt(self.stf.mean - self.base.mean, self.metric)


@dataclass
class Claim:
    number: int
    title: str
    statement: str
    stf_model: str
    verdict: str = NOT_MEASURED
    reason: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(c.outcome == k for c in self.comparisons) for k in ("better", "tie", "worse")}


def compare(stf: Stat, base: Stat, metric: str) -> tuple[str, str]:
    """(outcome for STF-BNN, basis of the decision)."""
    sign = 1.0 if better(metric) != "lower" else -1.0
    d = sign * (stf.mean - base.mean)
    if stf.has_std and base.has_std:
        margin = math.hypot(stf.std, base.std)
        basis = f"seed std: |diff| vs {fmt(margin, metric)}"
        decisive = abs(d) > margin
    elif stf.n == 1 and base.n == 1 and stf.has_ci and base.has_ci:
        basis = "95% CIs " + ("do not overlap" if (stf.ci_low > base.ci_high or stf.ci_high < base.ci_low)
                              else "overlap")
        decisive = stf.ci_low > base.ci_high or stf.ci_high < base.ci_low
    else:
        margin = REL_TOL * max(abs(stf.mean), abs(base.mean))
        basis = f"no error bar: |diff| vs 2% = {fmt(margin, metric)}"
        decisive = abs(d) > margin
    if not decisive or d == 0:
        return "tie", basis
    return ("better" if d > 0 else "worse"), basis


def worst_case(sel, by: list[str], how: str):
    """Per group, the row with the lowest (``min``) or highest (``max``) value, its CI kept: the
    strongest attack decides, whichever it is for each model and seed."""
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return sel
    g = sel.groupby(by, sort=False)["value"]
    return sel.loc[(g.idxmin() if how == "min" else g.idxmax()).values]


def decide(claim: Claim) -> None:
    c = claim.counts
    n = sum(c.values())
    if n == 0:
        claim.verdict = NOT_MEASURED
        return
    if c["better"] and not c["worse"]:
        claim.verdict = SUPPORTED
    elif not c["better"]:
        claim.verdict = NOT_SUPPORTED
    else:
        claim.verdict = MIXED
    claim.reason = (f"STF-BNN better in {c['better']}, tied in {c['tie']}, worse in {c['worse']} "
                    f"of {n} comparison(s)")


def _by_plugin(run, models: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(run.plugin_of(m), []).append(m)
    return out


def _add(claim: Claim, stats: dict, stf: str, baselines: list[str], metric: str, setting: str = "",
         key_of=lambda model: (model,)) -> None:
    s = stats.get(key_of(stf))
    if s is None:
        return
    for b in baselines:
        bs = stats.get(key_of(b))
        if bs is None or math.isnan(bs.mean) or math.isnan(s.mean):
            continue
        outcome, basis = compare(s, bs, metric)
        claim.comparisons.append(Comparison(b, metric, setting, s, bs, outcome, basis))


def claims_for(run, df, heads: list[Headline], models: list[str]) -> list[Claim]:
    """The four claims for each STF-BNN entry of the run (one set per entry; usually one)."""
    plugins = _by_plugin(run, models)
    stf_models = plugins.get(STF, [])
    if not stf_models:
        return [Claim(i, title, statement, "", NOT_MEASURED, "no model with plugin 'stf_bnn' in this run")
                for i, (title, statement) in enumerate(CLAIMS, start=1)]
    out = []
    for stf in stf_models:
        out += _claims_of(run, df, heads, models, plugins, stf)
    return out


CLAIMS = (
    ("Prediction and uncertainty",
     "STF-BNN matches or beats the baselines' accuracy, NLL, ECE and OOD AUROC."),
    ("Adversarial robustness",
     "STF-BNN keeps more accuracy under attack than the deterministic net and the other baselines."),
    ("Privacy", "STF-BNN leaks less membership than the deterministic net (MIA AUC, TPR at low FPR)."),
    ("Training cost", "STF-BNN trains faster and with far fewer trainable parameters than a full BNN."),
)

NOT_MEASURED_WHY = {
    1: "needs STF-BNN, a baseline other than dp_sgd, and calibration or OOD records",
    2: "needs STF-BNN, a baseline other than dp_sgd, and robust_accuracy records at eps > 0",
    3: "needs STF-BNN, a model with plugin 'deterministic', and membership records",
    4: "needs STF-BNN, a model with plugin 'full_bnn', and efficiency records",
}


def _claims_of(run, df, heads, models, plugins, stf) -> list[Claim]:
    claims = [Claim(i, t, s, stf) for i, (t, s) in enumerate(CLAIMS, start=1)]
    others = [m for m in models if run.plugin_of(m) not in NOT_IN_PREDICTION_CLAIM]
    dets = plugins.get("deterministic", [])
    det = dets[:1]
    heads_by_key = {h.key: h for h in heads}

    # (1) prediction and uncertainty
    c1 = claims[0]
    for metric in ("accuracy", "nll", "ece"):
        _add(c1, seed_stats(calibration_rows(df, run, metric), ["model"]), stf, others, metric, "test split")
    h = heads_by_key.get("ood_auroc")
    if h is not None:
        _add(c1, seed_stats(h.frame, ["model"]), stf, others, "auroc", h.label.replace("OOD AUROC ", "OOD, ")
             + " mean over sets")

    # (2) adversarial robustness
    c2 = claims[1]
    rob = df[(df["metric"] == "robust_accuracy") & (df["attack"] != "") & (df["eps"] != "")]
    # .loc with a bool mask: on an empty frame a plain [] would read an object Series as column names
    rob = rob.loc[rob["eps"].map(lambda e: float(e) > 0).astype(bool)]
    stats = seed_stats(worst_case(rob, ["model", "seed", "eps"], "min"), ["eps", "model"])
    for eps in sorted({k[0] for k in stats}, key=float):
        attacks = ", ".join(map(str, dict.fromkeys(rob[rob["eps"] == eps]["attack"])))
        _add(c2, stats, stf, others, "robust_accuracy", f"eps {fmt_setting(eps)}, worst of {attacks}",
             key_of=lambda m, e=eps: (e, m))
    checks = df[(df["metric"] == "sanity_check") & (df["model"] == stf)]
    failed = sorted({str(a) for a, v in zip(checks["attack"], checks["value"]) if v < 0.5})
    if failed:
        c2.caveats.append(f"{stf} failed adversarial sanity check(s): {', '.join(failed)}; its robust "
                          "accuracy may reflect gradient masking rather than robustness")
    elif not checks.empty:
        c2.caveats.append(f"{stf} passed all {checks['attack'].nunique()} adversarial sanity checks")

    # (3) privacy vs the deterministic net
    c3 = claims[2]
    mia = df[df["metric"].isin(["mia_auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"])]
    stats = seed_stats(worst_case(mia, ["model", "seed", "metric"], "max"), ["metric", "model"])
    for metric in dict.fromkeys(k[0] for k in stats):
        attacks = ", ".join(str(a) for a in dict.fromkeys(mia[mia["metric"] == metric]["attack"]) if a != "")
        _add(c3, stats, stf, det, metric, f"strongest of {attacks or 'the attack'}",
             key_of=lambda m, x=metric: (x, m))
    if len(dets) > 1:
        c3.caveats.append(f"several deterministic entries; compared with the first: {dets[0]}")

    # (4) training cost vs a full BNN
    c4 = claims[3]
    full = plugins.get("full_bnn", [])[:1]
    h = heads_by_key.get("train_seconds")
    if h is not None:
        _add(c4, seed_stats(h.frame, ["model"]), stf, full, "train_seconds", "all stages")
    _add(c4, seed_stats(plain(df, "trainable_params"), ["model"]), stf, full, "trainable_params")
    if h is not None and stf in set(h.frame["model"]):
        stages = df[(df["metric"] == "train_seconds") & (df["model"] == stf) & (df["stage"] != "total")]
        parts = seed_stats(stages, ["stage"])
        if parts:
            c4.caveats.append(f"{stf} stages: " + ", ".join(f"{k[0]} {fmt(s.mean, 'train_seconds')} s"
                                                           for k, s in parts.items())
                              + "; the comparison uses the total over all stages")

    for claim in claims:
        decide(claim)
        if claim.verdict == NOT_MEASURED:
            claim.reason = NOT_MEASURED_WHY[claim.number]
    if failed and c2.verdict == SUPPORTED:
        c2.verdict = MIXED
        c2.reason += "; downgraded from supported because a sanity check failed"
    return claims
