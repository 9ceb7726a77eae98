"""Does THIS run support each claim of the STF-BNN paper?  Explicit rules (docs/report.md).

Models are found by plugin name, so renamed entries still count. Each claim is a set of comparisons
"STF-BNN vs a baseline on one metric in one setting". Each comparison is a *difference* with an
interval, computed PAIRED on the same examples from the per-example arrays the suites saved
(``examples/*.npz``): a paired bootstrap over examples (hierarchical, seeds then examples, with two or
more seeds), the exact McNemar test for accuracy and robust accuracy, the paired DeLong test for AUCs.
Without arrays, the recorded intervals are combined as if the two estimates were independent (wider
than a paired interval: conservative), and metrics that need arrays are "not enough evidence".

Within a claim, Holm's correction sets the level at which each interval must exclude zero. Outcome:

* **better / worse** when the Holm-corrected interval of the difference excludes zero (and, where an
  exact test exists, its Holm-adjusted p-value is below alpha);
* **equivalent** when that interval lies inside the metric's equivalence margin (``MARGINS``);
* **inconclusive** otherwise.

A claim is *supported* when STF-BNN is better somewhere and worse nowhere (claim 1, "matches or
beats": equivalent also counts), *not supported* when it is worse somewhere and better nowhere, or
when every decided comparison is an equivalence for a claim of an advantage; *mixed* when both better
and worse; **not enough evidence** when every comparison is inconclusive (with what would settle it);
*not measured in this run* when STF-BNN, the baselines or the records are absent. Validity guards
(models near chance, a small test set, a single seed) are stated above the verdict.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from .. import stats
from ..metrics.names import better
from .headline import OOD_SCORE_PREFERENCE, calibration_rows, plain
from .stats import Stat, fmt, fmt_setting, seed_stats

ALPHA = 0.05  # family-wise error rate within one claim (Holm)
RESAMPLES = 2000  # bootstrap draws for a paired difference
STF = "stf_bnn"
NOT_IN_PREDICTION_CLAIM = {STF, "dp_sgd"}  # DP-SGD trades accuracy for privacy by design

#: equivalence margins: |difference| (absolute, in the metric's unit) below which two models are
#: called equivalent when the whole corrected interval lies inside (docs/report.md gives the reasons)
MARGINS: dict[str, float] = {
    "accuracy": 0.01,
    "nll": 0.02,
    "ece": 0.01,
    "auroc": 0.01,
    "robust_accuracy": 0.02,
    "mia_auc": 0.01,
    "tpr_at_1pct_fpr": 0.005,
    "tpr_at_0.1pct_fpr": 0.001,
    "svi_vs_full_bnn_epoch_seconds_ratio": 0.10,  # ratio within 1 +- 0.10
    "trainable_params": 0.0,
}
NEAR_CHANCE_FRACTION = 0.5  # accuracy below chance + this fraction of (1 - chance): "near chance"
SMALL_TEST_SET = 1000  # fewer test examples than this: a validity guard

SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
NOT_ENOUGH, NOT_MEASURED = "not enough evidence", "not measured in this run"
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"


@dataclass
class Estimate:
    """One model's figure: value and its recorded interval (if any) and n."""

    value: float
    low: float = math.nan
    high: float = math.nan
    n_seeds: int = 1

    @classmethod
    def of(cls, stat: Stat | None) -> Estimate:
        if stat is None:
            return cls(math.nan)
        return cls(stat.mean, stat.ci_low, stat.ci_high, stat.n)


@dataclass
class Comparison:
    baseline: str
    metric: str
    setting: str
    stf: Estimate
    base: Estimate
    diff: float  # STF-BNN minus baseline, in the metric's own sign
    test: object = None  # stats.Bootstrap / stats.NormalDiff (interval(level), pvalue), or None
    method: str = ""
    exact_p: float | None = None  # an exact test's p-value (McNemar) that decides alongside the interval
    fixed: str | None = None  # an outcome decided outside the interval machinery (counts, ratios)
    low: float = math.nan
    high: float = math.nan
    level: float = 1 - ALPHA
    outcome: str = INCONCLUSIVE
    settle: str = ""  # what would settle an inconclusive comparison
    size: int = 0  # examples per unit behind the interval (for the "what would settle it" estimate)

    @property
    def margin(self) -> float:
        return MARGINS.get(self.metric, math.nan)

    @property
    def pvalue(self) -> float:
        if self.exact_p is not None:
            return self.exact_p
        return self.test.pvalue if self.test is not None else math.nan

    @property
    def diff_text(self) -> str:
        if math.isnan(self.diff):
            return ""
        sign = "+" if self.diff > 0 else ""
        return sign + fmt(self.diff, self.metric)

    @property
    def interval_text(self) -> str:
        if math.isnan(self.low) or math.isnan(self.high):
            return ""
        return f"[{fmt(self.low, self.metric)}, {fmt(self.high, self.metric)}] at {self.level:.1%}"

    @property
    def basis(self) -> str:
        return self.method


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
    settle: list[str] = field(default_factory=list)
    required: str = ""  # a reason that forces "not enough evidence" (claim 4 without controlled timing)

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(c.outcome == k for c in self.comparisons) for k in (BETTER, EQUIVALENT, INCONCLUSIVE, WORSE)}


CLAIMS = (
    ("Prediction and uncertainty",
     "STF-BNN matches or beats the baselines' accuracy, NLL, ECE and OOD AUROC (near and far OOD apart)."),
    ("Adversarial robustness",
     "STF-BNN keeps more accuracy under attack than the deterministic net and the other baselines."),
    ("Privacy", "STF-BNN leaks less membership than the deterministic net (MIA AUC, TPR at low FPR)."),
    ("Training cost", "STF-BNN trains faster and with far fewer trainable parameters than a full BNN."),
)
EQUIVALENCE_SUPPORTS = {1}  # claims of "matches or beats": an equivalence supports them

NOT_MEASURED_WHY = {
    1: "needs STF-BNN, a baseline other than dp_sgd, and calibration or OOD records",
    2: "needs STF-BNN, a baseline other than dp_sgd, and robust_accuracy records at eps > 0",
    3: "needs STF-BNN, a model with plugin 'deterministic', and membership records",
    4: "needs STF-BNN with efficiency records and a model with plugin 'full_bnn' (or the controlled SVI / full-BNN epoch ratio)",
}


# -- outcomes ----------------------------------------------------------------------------------------

def oriented(metric: str) -> float:
    """+1 if higher is better for ``metric``, -1 if lower is."""
    return -1.0 if better(metric) == "lower" else 1.0


def judge(claim: Claim, alpha: float = ALPHA) -> None:
    """Holm-correct the claim's comparisons, then set each outcome and the claim's verdict."""
    tested = [c for c in claim.comparisons if c.fixed is None and c.test is not None]
    _, rejected, levels = stats.holm_levels([c.pvalue for c in tested], alpha)
    for c, rej, level in zip(tested, rejected, levels):
        c.level = level
        c.low, c.high = c.test.interval(level)
        excludes = c.low > 0 or c.high < 0
        if rej and excludes:
            c.outcome = BETTER if oriented(c.metric) * c.diff > 0 else WORSE
        elif math.isfinite(c.margin) and -c.margin <= c.low and c.high <= c.margin:
            c.outcome = EQUIVALENT
        else:
            c.outcome = INCONCLUSIVE
            c.settle = c.settle or _what_would_settle(c)
    for c in claim.comparisons:
        if c.fixed is not None:
            c.outcome = c.fixed
        elif c.test is None:
            c.outcome = INCONCLUSIVE
            if c.method == NO_INTERVAL and not c.settle:
                c.settle = NO_INTERVAL_SETTLE
    decide(claim)


def _what_would_settle(c: Comparison) -> str:
    """Examples (or seeds) needed to resolve a difference of the observed size, if it is real:
    interval half-widths shrink about as 1/sqrt(n)."""
    half = (c.high - c.low) / 2
    if not (math.isfinite(half) and half > 0):
        return ""
    d = abs(c.diff)
    if d == 0:
        return "no difference observed; only an equivalence could be shown, with a narrower interval"
    factor = (half / d) ** 2
    if factor > 100:
        return "the observed difference is far inside the noise; more data would likely show equivalence, not a difference"
    if factor <= 1.0:
        return "about 1x more data (the corrected interval only just includes zero)"
    unit = f"{c.size:,} examples" if c.size else "the data"
    return f"about {math.ceil(factor * 10) / 10:g}x {unit} (or as many more seeds) to resolve a difference this size"


def decide(claim: Claim) -> None:
    c = claim.counts
    n = len(claim.comparisons)
    if n == 0:
        claim.verdict = NOT_MEASURED
        claim.reason = NOT_MEASURED_WHY.get(claim.number, "")
        return
    summary = (f"STF-BNN better in {c[BETTER]}, equivalent in {c[EQUIVALENT]}, worse in {c[WORSE]}, "
               f"inconclusive in {c[INCONCLUSIVE]} of {n} comparison(s) (Holm-corrected, alpha {ALPHA:g})")
    if claim.required:
        claim.verdict, claim.reason = NOT_ENOUGH, f"{claim.required}; {summary}"
    elif c[BETTER] and c[WORSE]:
        claim.verdict, claim.reason = MIXED, summary
    elif c[WORSE]:
        claim.verdict, claim.reason = NOT_SUPPORTED, summary
    elif c[BETTER] or (c[EQUIVALENT] and claim.number in EQUIVALENCE_SUPPORTS):
        claim.verdict, claim.reason = SUPPORTED, summary
    elif c[EQUIVALENT]:
        claim.verdict, claim.reason = NOT_SUPPORTED, summary + "; equivalent is no advantage"
    else:
        claim.verdict, claim.reason = NOT_ENOUGH, summary
    if claim.verdict == NOT_ENOUGH and not claim.settle:
        tips = list(dict.fromkeys(x.settle for x in claim.comparisons if x.settle))
        sized = sorted((t for t in tips if t.startswith("about ")), key=lambda t: float(t.split()[1].rstrip("x")))
        rest = [t for t in tips if not t.startswith("about ")]
        claim.settle = ([f"closest to resolution: {sized[0]}"] if sized else []) + rest[:3] \
            or ["more seeds and more test examples"]


# -- arrays --------------------------------------------------------------------------------------------

def _suites_of(run, plugin: str) -> list[str]:
    names = [name for name, spec in run.config.get("suites", {}).items()
             if isinstance(spec, dict) and spec.get("plugin", name) == plugin]
    return names or [plugin]


class Arrays:
    """Per-example arrays of a run, loaded lazily per suite plugin: {(model, seed): {key: array}}."""

    def __init__(self, run):
        self.run = run
        self._cache: dict[str, dict] = {}

    def of(self, plugin: str) -> dict[tuple[str, int], dict[str, np.ndarray]]:
        if plugin not in self._cache:
            from ..examples import load_examples

            out = {}
            if self.run.path is not None and (self.run.path / "examples").is_dir():
                for suite in _suites_of(self.run, plugin):
                    for (_, model, seed), arrays in load_examples(self.run.path, suite=suite).items():
                        out.setdefault((model, seed), arrays)
            self._cache[plugin] = out
        return self._cache[plugin]

    def units(self, plugin: str, a: str, b: str, key: str) -> list[tuple[dict, dict]]:
        """(arrays of a, arrays of b) per seed both have, when ``key`` (the index) is identical."""
        data = self.of(plugin)
        out = []
        for (model, seed), arr in sorted(data.items(), key=lambda kv: kv[0][1]):
            if model != a or (b, seed) not in data:
                continue
            other = data[b, seed]
            if key in arr and key in other and np.array_equal(arr[key], other[key]):
                out.append((arr, other))
        return out


def _seed(text: str) -> int:
    """The bootstrap seed of one comparison: a function of what is compared only (models, metric,
    setting), so a report renders the same numbers every time. (Not stf_eval.seeding, which imports
    torch: the report stays torch-free.)"""
    digest = hashlib.sha256(f"verdict\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _bootstrap(diff, sizes, seed_text: str):
    return stats.paired_bootstrap(diff, sizes, resamples=RESAMPLES, seed=_seed(seed_text))


def _bootstrap_mean(diffs, seed_text: str):
    return stats.paired_bootstrap_mean(diffs, resamples=RESAMPLES, seed=_seed(seed_text))


def _unit_text(n_units: int, n: int, what: str) -> str:
    level = "hierarchical bootstrap (seeds, then examples)" if n_units >= 2 else "paired bootstrap over examples"
    return f"{level}, {n:,} {what}, {n_units} seed(s)"


# -- records fallback (no arrays): independent estimates combined --------------------------------------

def _from_records(stf: Stat | None, base: Stat | None, metric: str, n: int | None = None):
    """An unpaired difference from the recorded figures: over seeds (Welch, t) with two or more seeds
    on both sides; else from the recorded 95% intervals (normal, independent); else, for a proportion
    with its n, from Wilson intervals. (None, why) when there is no error bar at all."""
    if stf is None or base is None or math.isnan(stf.mean) or math.isnan(base.mean):
        return None, "a figure is missing"
    d = stf.mean - base.mean
    if stf.has_std and base.has_std:
        va, vb = stf.std ** 2 / stf.n, base.std ** 2 / base.n
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va ** 2 / (stf.n - 1) if stf.n > 1 else 0) + (vb ** 2 / (base.n - 1) if base.n > 1 else 0)
                               or 1.0)
        return stats.NormalDiff(d, se, df), f"unpaired over seeds (Welch t, {stf.n} and {base.n} seeds)"
    halves = []
    for s in (stf, base):
        if s.has_ci:
            halves.append((s.ci_high - s.ci_low) / (2 * 1.959964))
        elif n and metric in ("accuracy", "robust_accuracy") and 0 <= s.mean <= 1:
            lo, hi = stats.proportion_interval(round(s.mean * n), n)
            halves.append((hi - lo) / (2 * 1.959964))
        else:
            return None, NO_INTERVAL
    return stats.NormalDiff(d, math.hypot(*halves)), \
        "unpaired, from the recorded 95% intervals (no per-example arrays; wider than a paired test)"


NO_INTERVAL = "no interval recorded (needs per-example arrays or several seeds)"
NO_INTERVAL_SETTLE = "per-example arrays (rerun with this version) or two or more seeds"


# -- the claims ----------------------------------------------------------------------------------------

def _by_plugin(run, models: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(run.plugin_of(m), []).append(m)
    return out


def claims_for(run, df, heads, models: list[str]) -> list[Claim]:
    """The four claims for each STF-BNN entry of the run (one set per entry; usually one)."""
    plugins = _by_plugin(run, models)
    stf_models = plugins.get(STF, [])
    if not stf_models:
        return [Claim(i, title, statement, "", NOT_MEASURED, "no model with plugin 'stf_bnn' in this run")
                for i, (title, statement) in enumerate(CLAIMS, start=1)]
    arrays = Arrays(run)
    out = []
    for stf in stf_models:
        out += _claims_of(run, df, models, plugins, stf, arrays)
    return out


def _claims_of(run, df, models, plugins, stf, arrays: Arrays) -> list[Claim]:
    claims = [Claim(i, t, s, stf) for i, (t, s) in enumerate(CLAIMS, start=1)]
    others = [m for m in models if run.plugin_of(m) not in NOT_IN_PREDICTION_CLAIM]
    dets = plugins.get("deterministic", [])
    _prediction(claims[0], run, df, stf, others, arrays)
    _robustness(claims[1], run, df, stf, others, arrays)
    _privacy(claims[2], run, df, stf, dets, arrays)
    _cost(claims[3], run, df, stf, plugins.get("full_bnn", [])[:1])
    for claim in claims:
        judge(claim)
    c2 = claims[1]
    if c2.verdict == SUPPORTED and any("failed adversarial sanity" in c for c in c2.caveats):
        c2.verdict = MIXED
        c2.reason += "; downgraded from supported because a sanity check failed"
    return claims


# (1) prediction and uncertainty ------------------------------------------------------------------------

def _prediction(claim: Claim, run, df, stf: str, others: list[str], arrays: Arrays) -> None:
    bins = int(next((run.suite_params(s).get("bins", 15) for s in _suites_of(run, "calibration")), 15))
    for metric in ("accuracy", "nll", "ece"):
        st = seed_stats(calibration_rows(df, run, metric), ["model"])
        if (stf,) not in st:
            continue
        for b in others:
            if (b,) not in st:
                continue
            comp = Comparison(b, metric, "test split", Estimate.of(st.get((stf,))), Estimate.of(st.get((b,))),
                              st[stf,].mean - st[b,].mean)
            units = arrays.units("calibration", stf, b, "test/index")
            if units:
                _paired_calibration(comp, units, metric, bins, f"{stf}|{b}|{metric}")
            else:
                n = _record_n(df, stf, metric)
                comp.test, comp.method = _from_records(st.get((stf,)), st.get((b,)), metric, n)
                comp.size = n or 0
            claim.comparisons.append(comp)
    _ood(claim, run, df, stf, others, arrays)


def _record_n(df, model: str, metric: str) -> int | None:
    rows = plain(df, metric)
    rows = rows[rows["model"] == model]
    if rows.empty or "n" not in rows:
        return None
    vals = [v for v in rows["n"] if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return int(vals[0]) if vals else None


def _paired_calibration(comp: Comparison, units, metric: str, bins: int, key: str) -> None:
    pre = []
    for a, b in units:
        y = a["test/label"].astype(np.int64)
        out = []
        for arr in (a, b):
            lp = arr["test/log_probs"].astype(np.float64)
            pred = lp.argmax(1)
            out.append({"correct": (pred == y).astype(float), "nll": -lp[np.arange(len(y)), y],
                        "conf": np.exp(lp.max(1))})
        pre.append(out)
    sizes = [(len(p[0]["correct"]),) for p in pre]
    if metric in ("accuracy", "nll"):
        field_ = "correct" if metric == "accuracy" else "nll"
        comp.test = _bootstrap_mean([p[0][field_] - p[1][field_] for p in pre], key)
    else:
        comp.test = stats.paired_bootstrap_ece([(p[0]["conf"], p[0]["correct"], p[1]["conf"], p[1]["correct"])
                                                for p in pre], bins, RESAMPLES, _seed(key))
    comp.diff = comp.test.estimate
    comp.size = sizes[0][0]
    comp.method = _unit_text(len(units), sizes[0][0], "test examples")
    if metric == "accuracy" and len(units) == 1:
        p, n01, n10 = stats.mcnemar_exact(pre[0][0]["correct"].astype(bool), pre[0][1]["correct"].astype(bool))
        comp.exact_p = p
        comp.method += f"; exact McNemar p = {p:.3g} ({n01} vs {n10} discordant)"


def _ood_score(df) -> str | None:
    scores = list(dict.fromkeys(df[(df["metric"] == "auroc") & (df["score"] != "")]["score"]))
    return next((s for s in OOD_SCORE_PREFERENCE if s in scores), scores[0] if scores else None)


def _ood(claim: Claim, run, df, stf: str, others: list[str], arrays: Arrays) -> None:
    auroc = df[(df["metric"] == "auroc") & (df["ood_set"] != "")]
    score = _ood_score(auroc)
    if score is None:
        return
    auroc = auroc[auroc["score"] == score]
    groups = run.ood_groups()
    sets = [s for s in dict.fromkeys(auroc["ood_set"]) if not str(s).endswith("_mean")]
    selections = [(g, [s for s in sets if groups.get(s) == g]) for g in ("near", "far")]
    if all(members for _, members in selections) or not any(members for _, members in selections):
        selections.append(("all", sets))  # the headline mean over every set, near and far together
    for group, members in selections:
        if not members:
            continue
        sel = auroc[auroc["ood_set"].isin(members)]
        if len(members) == 1:
            st = seed_stats(sel, ["model"])
        else:
            rec = df[(df["metric"] == "auroc") & (df["score"] == score) & (df["ood_set"] == f"{group}_mean")]
            if group != "all" and not rec.empty:
                st = seed_stats(rec, ["model"])
            else:
                per_seed = sel.groupby(["model", "seed"], sort=False)["value"].mean().reset_index()
                st = seed_stats(per_seed.assign(ci_low=math.nan, ci_high=math.nan), ["model"])
        if (stf,) not in st:
            continue
        label = {"near": "near OOD", "far": "far OOD", "all": "all OOD sets (headline mean)"}[group]
        setting = f"{label}: {', '.join(map(str, members))}; score {score}"
        for b in others:
            if (b,) not in st:
                continue
            comp = Comparison(b, "auroc", setting, Estimate.of(st[stf,]), Estimate.of(st[b,]),
                              st[stf,].mean - st[b,].mean)
            keys = [f"test/score/{score}", *(f"ood/{m}/score/{score}" for m in members)]
            units = [u for u in arrays_by_seed(arrays, "ood", stf, b)
                     if all(k in u[0] and k in u[1] and len(u[0][k]) == len(u[1][k]) for k in keys)]
            if units:
                _paired_auroc(comp, units, members, score, f"{stf}|{b}|{group}|{score}")
            else:
                comp.test, comp.method = _from_records(st.get((stf,)), st.get((b,)), "auroc")
            claim.comparisons.append(comp)


def arrays_by_seed(arrays: Arrays, plugin: str, a: str, b: str) -> list[tuple[dict, dict]]:
    """(arrays of a, arrays of b) for every seed both have (examples aligned by position)."""
    data = arrays.of(plugin)
    return [(arr, data[b, seed]) for (model, seed), arr in sorted(data.items(), key=lambda kv: kv[0][1])
            if model == a and (b, seed) in data]


def _paired_auroc(comp: Comparison, units, members: list[str], score: str, key: str) -> None:
    ins = [(a[f"test/score/{score}"].astype(float), b[f"test/score/{score}"].astype(float)) for a, b in units]
    outs = [[(a[f"ood/{m}/score/{score}"].astype(float), b[f"ood/{m}/score/{score}"].astype(float))
             for m in members] for a, b in units]
    n_in, n_out = len(ins[0][0]), sum(len(o[0]) for o in outs[0])
    if len(units) == 1:
        comp.test = stats.auc_diff_delong(ins[0][0], [o[0] for o in outs[0]], ins[0][1], [o[1] for o in outs[0]])
        comp.method = (f"paired DeLong test, {n_in:,} test vs {n_out:,} OOD examples "
                       f"({len(members)} set(s), mean AUROC), 1 seed")
    else:
        # each draw's AUROCs from the draw's counts: the sets are ranked once, not per draw
        auc_a = [[stats.ResampledAuc(i[0], o[0]) for o in os_] for i, os_ in zip(ins, outs)]
        auc_b = [[stats.ResampledAuc(i[1], o[1]) for o in os_] for i, os_ in zip(ins, outs)]

        def diff(s, idx):
            counts = [stats.resample_counts(j, n) for j, n in zip(idx, sizes[s])]
            a = np.mean([auc(counts[0], c) for auc, c in zip(auc_a[s], counts[1:])])
            b = np.mean([auc(counts[0], c) for auc, c in zip(auc_b[s], counts[1:])])
            return a - b

        sizes = [(len(i[0]), *(len(o[0]) for o in os_)) for i, os_ in zip(ins, outs)]
        global RESAMPLES
        saved, RESAMPLES = RESAMPLES, min(RESAMPLES, 500)  # each draw scores every set twice
        try:
            comp.test = _bootstrap(diff, sizes, key)
        finally:
            RESAMPLES = saved
        comp.method = _unit_text(len(units), n_in + n_out, "test + OOD examples (strata kept)")
    comp.diff = comp.test.estimate
    comp.size = n_in + n_out


# (2) robustness --------------------------------------------------------------------------------------

def worst_case(sel, by: list[str], how: str):
    """Per group, the row with the lowest (``min``) or highest (``max``) value, its CI kept."""
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return sel
    g = sel.groupby(by, sort=False)["value"]
    return sel.loc[(g.idxmin() if how == "min" else g.idxmax()).values]


def _eps_key(eps) -> str:
    return f"{float(eps):g}"


def _robustness(claim: Claim, run, df, stf: str, others: list[str], arrays: Arrays) -> None:
    rob = df[(df["metric"] == "robust_accuracy") & (df["attack"] != "") & (df["eps"] != "")]
    rob = rob.loc[rob["eps"].map(lambda e: float(e) > 0).astype(bool)]
    rows = worst_case(rob, ["model", "seed", "eps"], "min")
    st = seed_stats(rows, ["eps", "model"])
    for eps in sorted({k[0] for k in st}, key=float):
        if (eps, stf) not in st:
            continue
        attacks = ", ".join(map(str, dict.fromkeys(rob[rob["eps"] == eps]["attack"])))
        for b in others:
            if (eps, b) not in st:
                continue
            key = f"union/{_eps_key(eps)}/correct"
            units = [u for u in arrays.units("adversarial", stf, b, "index") if key in u[0] and key in u[1]]
            if units:
                comp = Comparison(b, "robust_accuracy", f"eps {fmt_setting(eps)}, survived every attack ({attacks})",
                                  Estimate(float(np.mean([u[0][key].mean() for u in units]))),
                                  Estimate(float(np.mean([u[1][key].mean() for u in units]))), math.nan)
                for est, side in ((comp.stf, 0), (comp.base, 1)):
                    if len(units) == 1:
                        c = units[0][side][key]
                        est.low, est.high = stats.proportion_interval(int(c.sum()), len(c))
                    est.n_seeds = len(units)
                corr = [(u[0][key].astype(float), u[1][key].astype(float)) for u in units]
                comp.test = _bootstrap_mean([c[0] - c[1] for c in corr], f"{stf}|{b}|rob|{eps}")
                comp.diff, comp.size = comp.test.estimate, len(corr[0][0])
                comp.method = _unit_text(len(units), len(corr[0][0]), "attacked examples")
                if len(units) == 1:
                    p, n01, n10 = stats.mcnemar_exact(corr[0][0].astype(bool), corr[0][1].astype(bool))
                    comp.exact_p = p
                    comp.method += f"; exact McNemar p = {p:.3g} ({n01} vs {n10} discordant)"
            else:
                comp = Comparison(b, "robust_accuracy", f"eps {fmt_setting(eps)}, worst of {attacks}",
                                  Estimate.of(st[eps, stf]), Estimate.of(st[eps, b]),
                                  st[eps, stf].mean - st[eps, b].mean)
                n = _first_n(rows, stf)
                comp.test, comp.method = _from_records(st[eps, stf], st[eps, b], "robust_accuracy", n)
                comp.size = n or 0
            claim.comparisons.append(comp)
    checks = df[(df["metric"] == "sanity_check") & (df["model"] == stf)]
    failed = sorted({str(a) for a, v in zip(checks["attack"], checks["value"]) if v < 0.5})
    if failed:
        claim.caveats.append(f"{stf} failed adversarial sanity check(s): {', '.join(failed)}; its robust "
                             "accuracy may reflect gradient masking rather than robustness")
    elif not checks.empty:
        claim.caveats.append(f"{stf} passed all {checks['attack'].nunique()} adversarial sanity checks")


def _first_n(rows, model: str) -> int | None:
    vals = [v for v in rows[rows["model"] == model]["n"] if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return int(vals[0]) if vals else None


# (3) privacy -----------------------------------------------------------------------------------------

_TPR = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def _membership_units(arrays: Arrays, a: str, b: str) -> tuple[list[tuple[dict, dict]], str]:
    """Pairs of (scores, is_member) dicts per target model; pairing needs the same pool and members."""
    out, why = [], ""
    for x, y in arrays_by_seed(arrays, "membership", a, b):
        if not np.array_equal(x.get("pool/index"), y.get("pool/index")):
            why = "the two models' membership pools differ"
            continue
        prefixes = sorted({k.split("/")[0] for k in x if re.fullmatch(r"target\d+", k.split("/")[0])}) or [""]
        for pre in prefixes:
            p = f"{pre}/" if pre else ""
            if f"{p}is_member" not in x or f"{p}is_member" not in y:
                continue
            if not np.array_equal(x[f"{p}is_member"], y[f"{p}is_member"]):
                why = "the two models' members differ"
                continue
            sa = {k[len(p) + 6:]: v for k, v in x.items() if k.startswith(f"{p}score/")}
            sb = {k[len(p) + 6:]: v for k, v in y.items() if k.startswith(f"{p}score/")}
            out.append(({"scores": sa, "is_member": x[f"{p}is_member"]},
                        {"scores": sb, "is_member": y[f"{p}is_member"]}))
    return out, why


def _strongest(unit_side: list[dict]) -> str | None:
    """The attack with the highest mean AUC over units (the strongest bounds the leak)."""
    attacks = set.intersection(*[set(u["scores"]) for u in unit_side]) if unit_side else set()
    best, best_auc = None, -1.0
    for a in sorted(attacks):
        auc = np.mean([stats.auc_fast(u["scores"][a][u["is_member"]], u["scores"][a][~u["is_member"]])
                       for u in unit_side])
        if auc > best_auc:
            best, best_auc = a, auc
    return best


def _privacy(claim: Claim, run, df, stf: str, dets: list[str], arrays: Arrays) -> None:
    if not dets:
        return
    det = dets[0]
    if len(dets) > 1:
        claim.caveats.append(f"several deterministic entries; compared with the first: {det}")
    mia = df[df["metric"].isin(["mia_auc", *_TPR])]
    st = seed_stats(worst_case(mia, ["model", "seed", "metric"], "max"), ["metric", "model"])
    metrics = [m for m in ("mia_auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr") if (m, stf) in st and (m, det) in st]
    if not metrics:
        return
    units, why = _membership_units(arrays, stf, det)
    atk_a = _strongest([u[0] for u in units]) if units else None
    atk_b = _strongest([u[1] for u in units]) if units else None
    if not units:
        claim.caveats.append("no paired per-example membership arrays (examples/membership--*.npz)"
                             + (f": {why}" if why else "") + "; TPR at low FPR cannot be checked or compared")
    for metric in metrics:
        comp = Comparison(det, metric, "", Estimate.of(st[metric, stf]), Estimate.of(st[metric, det]),
                          st[metric, stf].mean - st[metric, det].mean)
        if units and atk_a and atk_b:
            comp.setting = f"strongest attack: {atk_a} ({stf}) vs {atk_b} ({det})"
            pos = [(u[0]["is_member"]) for u in units]
            n_neg = int((~pos[0]).sum())
            if metric in _TPR:
                ok, needed = stats.tpr_fpr_measurable(n_neg, _TPR[metric])
                if not ok:
                    comp.method = (f"not measurable with {n_neg:,} non-members (needs >= {needed:,}: at least "
                                   f"{stats.MIN_FALSE_POSITIVES} false positives at the threshold)")
                    comp.settle = f"needs >= {needed:,} non-members for {metric}"
                    comp.stf, comp.base = Estimate(math.nan), Estimate(math.nan)
                    comp.diff = math.nan
                    claim.comparisons.append(comp)
                    continue
            sa = [(u[0]["scores"][atk_a][m], u[0]["scores"][atk_a][~m]) for u, m in zip(units, pos)]
            sb = [(u[1]["scores"][atk_b][m], u[1]["scores"][atk_b][~m]) for u, m in zip(units, pos)]
            if metric == "mia_auc" and len(units) == 1:
                comp.test = stats.auc_diff_delong(sa[0][0], [sa[0][1]], sb[0][0], [sb[0][1]])
                comp.method = f"paired DeLong test, {len(sa[0][0]):,} members vs {n_neg:,} non-members, 1 target"
            else:
                # each draw's metric from the draw's counts (the same numbers as on the resampled arrays)
                if metric == "mia_auc":
                    on_a, on_b = [stats.ResampledAuc(*x) for x in sa], [stats.ResampledAuc(*x) for x in sb]
                else:
                    on_a = [stats.ResampledTpr(*x, _TPR[metric]) for x in sa]
                    on_b = [stats.ResampledTpr(*x, _TPR[metric]) for x in sb]
                sizes = [(len(x[0]), len(x[1])) for x in sa]

                def diff(s, idx, on_a=on_a, on_b=on_b, sizes=sizes):
                    members, others = (stats.resample_counts(j, n) for j, n in zip(idx, sizes[s]))
                    return on_a[s](members, others) - on_b[s](members, others)

                global RESAMPLES
                saved, RESAMPLES = RESAMPLES, min(RESAMPLES, 1000)
                try:
                    comp.test = _bootstrap(diff, sizes, f"{stf}|{det}|{metric}")
                finally:
                    RESAMPLES = saved
                comp.method = _unit_text(len(units), sizes[0][0] + sizes[0][1],
                                         "pool examples (members and non-members resampled apart)")
            comp.diff = comp.test.estimate
            comp.size = len(pos[0])
        elif metric in _TPR:
            comp.method = "needs the per-example membership arrays to check the number of non-members"
            comp.settle = "rerun with per-example membership arrays saved"
        else:
            comp.test, comp.method = _from_records(st[metric, stf], st[metric, det], metric)
        claim.comparisons.append(comp)


# (4) cost ----------------------------------------------------------------------------------------------

CONTROLLED = "controlled"


def _cost(claim: Claim, run, df, stf: str, full: list[str]) -> None:
    ratio = df[(df["metric"] == "svi_vs_full_bnn_epoch_seconds_ratio") & (df["model"] == stf)]
    ratio = ratio[ratio["note"].map(lambda n: CONTROLLED in str(n).lower())]
    if not ratio.empty:
        st = seed_stats(ratio, ["model"])[(stf,)]
        comp = Comparison("full BNN (same batches)", "svi_vs_full_bnn_epoch_seconds_ratio", "SVI epoch / full-BNN epoch",
                          Estimate(st.mean, st.ci_low, st.ci_high, st.n), Estimate(1.0), st.mean - 1.0)
        comp.low, comp.high = st.ci_low - 1.0, st.ci_high - 1.0
        comp.method = "controlled measurement: " + str(ratio["note"].iloc[0])
        m = MARGINS["svi_vs_full_bnn_epoch_seconds_ratio"]
        if st.has_ci and st.ci_high < 1.0:
            comp.fixed = BETTER
        elif st.has_ci and st.ci_low > 1.0:
            comp.fixed = WORSE
        elif st.has_ci and st.ci_low >= 1 - m and st.ci_high <= 1 + m:
            comp.fixed = EQUIVALENT
        else:
            comp.fixed = INCONCLUSIVE
            comp.settle = "more repeats of the controlled epoch measurement"
        claim.comparisons.append(comp)
    else:
        if full:
            claim.required = ("not enough evidence: single wall-clock timings (train_seconds); the claim "
                              "needs the efficiency suite's controlled SVI / full-BNN epoch measurement")
            claim.settle = ["run the efficiency suite's controlled comparison (svi_vs_full_bnn_epoch_seconds_ratio)"]
    params = seed_stats(plain(df, "trainable_params"), ["model"])
    for b in full:
        if (stf,) in params and (b,) in params:
            a, c = params[stf,].mean, params[b,].mean
            comp = Comparison(b, "trainable_params", "", Estimate(a), Estimate(c), a - c)
            comp.method = "exact counts (no sampling noise)"
            comp.fixed = BETTER if a < c else WORSE if a > c else EQUIVALENT
            claim.comparisons.append(comp)
    if claim.required and not claim.comparisons:
        claim.comparisons.append(Comparison(full[0] if full else "full BNN", "train_seconds", "all stages",
                                            Estimate(math.nan), Estimate(math.nan), math.nan,
                                            method="single wall-clock timings: not used"))


# -- validity guards -------------------------------------------------------------------------------

def guards_for(run, df, models: list[str]) -> list[str]:
    """Statements about the run's validity, shown above the verdict."""
    out = []
    seeds = run.seeds
    if len(seeds) < 2:
        out.append(f"A single training seed ({', '.join(map(str, seeds)) or 'none'}): training-seed variance is "
                   "not measured; every interval covers the sampling of test examples only.")
    acc = calibration_rows(df, run, "accuracy")
    if not acc.empty:
        n = _record_n(df, str(acc["model"].iloc[0]), "accuracy")
        if n is not None and n < SMALL_TEST_SET:
            lo, hi = stats.proportion_interval(round(0.9 * n), n)
            out.append(f"A small test set ({n:,} examples): an accuracy near 0.9 is known only to about "
                       f"\u00b1{(hi - lo) / 2:.3f}.")
        classes = _n_classes(run)
        chance = 1.0 / classes if classes else None
        st = seed_stats(acc, ["model"])
        weak = []
        for (m,), s in st.items():
            floor = (chance or 0.0) + NEAR_CHANCE_FRACTION * (1 - (chance or 0.0))
            if s.mean < floor:
                weak.append(f"{m} {fmt(s.mean, 'accuracy')}")
        if weak:
            out.append(f"Models near chance (accuracy below {fmt(floor, 'accuracy')}, halfway from chance"
                       + (f" {fmt(chance, 'accuracy')}" if chance else "") + " to perfect): " + ", ".join(weak)
                       + ". Their calibration, robustness and privacy figures say little about trained models.")
    rob = df[(df["metric"] == "robust_accuracy")]
    n_att = _first_n(rob, str(rob["model"].iloc[0])) if not rob.empty else None
    if n_att is not None and n_att < 500:
        out.append(f"Robust accuracy is measured on {n_att} attacked examples: its 95% interval is about "
                   f"\u00b1{0.98 / math.sqrt(n_att):.2f} at 0.5.")
    return out


def _n_classes(run) -> int | None:
    for (_, _), arr in Arrays(run).of("calibration").items():
        if "test/log_probs" in arr:
            return int(arr["test/log_probs"].shape[1])
    classes = run.splits.get("classes") or run.splits.get("num_classes")
    if isinstance(classes, int):
        return classes
    if isinstance(classes, list):
        return len(classes)
    return None
