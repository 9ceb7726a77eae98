"""Intervals and paired comparisons: one module used by suites, the verdict and the compare page.

Formatting stays in the report; this module imports nothing from ``stf_eval.report``. The rules and
their reasons are in docs/report.md. What each piece is for:

* ``proportion_interval``: Wilson / Clopper-Pearson interval of k / n (scipy; equal to statsmodels').
* ``auc_delong``: AUC with DeLong's variance and a normal interval (logit-free, clipped to [0, 1]).
* ``ece_binned`` / ``ece_interval``: equal-width top-label ECE and an interval that contains it
  (BCa bootstrap via scipy; see the function).
* ``mcnemar_exact``: exact McNemar test of two paired 0/1 outcomes (statsmodels).
* ``paired_bootstrap``: bootstrap of a metric *difference* over the same examples, hierarchical
  (seeds, then examples) with two or more seeds; ``Bootstrap.interval(level)`` and ``.pvalue``.
* ``holm_levels``: Holm's step-down correction (statsmodels ``multipletests``) expressed as the
  confidence level at which each comparison's interval must exclude zero.
* ``tpr_fpr_measurable``: whether a TPR at a given FPR can be read off with that many negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: false positives a threshold must admit before "TPR at FPR f" is a measurement (see docs/report.md)
MIN_FALSE_POSITIVES = 10


def proportion_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Confidence interval of a proportion k / n: ``wilson`` (default) or ``exact`` (Clopper-Pearson).

    (nan, nan) when n == 0.
    """
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import (
        binomtest,  # the same numbers as statsmodels' proportion_confint (tested), lighter import
    )

    ci = binomtest(int(k), int(n)).proportion_ci(confidence, method={"wilson": "wilson", "exact": "exact"}[method])
    return float(ci.low), float(ci.high)


# -- AUC ---------------------------------------------------------------------------------------------

def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank (scipy's rankdata(method="average"), without its
    per-call overhead: the paired bootstraps of the report rank thousands of resamples)."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(xs))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _auc_of_ranks(tz: np.ndarray, m: int, n: int) -> float:
    """AUC from the midranks of the pooled scores, positives first (Mann-Whitney U / (m n))."""
    return (tz[:m].sum() - m * (m + 1) / 2) / (m * n)


def auc_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 [m], V01 [n]): the AUC of positives ``pos`` over negatives ``neg`` (ties count half)
    and DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988; midrank form of
    Sun & Xu 2014)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, np.full(m, np.nan), np.full(n, np.nan)
    tz = _midranks(np.concatenate([pos, neg]))
    tx, ty = _midranks(pos), _midranks(neg)
    auc = _auc_of_ranks(tz, m, n)
    v10 = (tz[:m] - tx) / n  # per positive: fraction of negatives below it
    v01 = 1.0 - (tz[m:] - ty) / m  # per negative: fraction of positives above it
    return float(auc), v10, v01


def auc_delong(pos: np.ndarray, neg: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): DeLong's standard error and a normal interval, clipped to [0, 1]."""
    from scipy.stats import norm

    auc, v10, v01 = auc_components(pos, neg)
    if math.isnan(auc) or len(v10) < 2 or len(v01) < 2:
        return auc, math.nan, math.nan
    se = math.sqrt(np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01))
    z = norm.ppf(0.5 + confidence / 2)
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def auc_mean_delong(pos: np.ndarray, negs: Sequence[np.ndarray], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean AUC, low, high) of the mean over several negative sets of the AUC of the SAME positives
    against each: DeLong's variance with the covariance the shared positives induce (the mean's
    per-positive component is the mean of the per-set components)."""
    from scipy.stats import norm

    parts = [auc_components(pos, neg) for neg in negs]
    k = len(parts)
    if k == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean([a for a, _, _ in parts]))
    v10 = np.mean([c for _, c, _ in parts], axis=0)
    if len(v10) < 2 or any(len(c) < 2 for _, _, c in parts):
        return mean, math.nan, math.nan
    var = np.var(v10, ddof=1) / len(v10) + sum(np.var(c, ddof=1) / len(c) for _, _, c in parts) / k ** 2
    z = norm.ppf(0.5 + confidence / 2)
    se = math.sqrt(var)
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)


def auc_fast(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC by ranks (ties count half); equal to sklearn's roc_auc_score. One ranking of the pooled
    scores (the DeLong components need three)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan
    tz = _midranks(np.concatenate([pos, neg]))
    return float(_auc_of_ranks(tz, m, n))


class ResampledAuc:
    """The AUC of fixed scores ``pos`` over ``neg`` (ties count half) on bootstrap resamples given as
    counts: ``auc(pos_counts, neg_counts)`` equals ``auc_fast(pos[i], neg[j])`` for index arrays i, j
    with those counts, to the last bit (both are exact integer or half-integer counts divided by m n).

    Why by hand: the report's paired bootstraps score thousands of resamples of the same arrays, and
    ranking each resample was most of a report's rendering time. Here each positive's place among
    the sorted negatives is found once; a resample then costs a cumulative sum, not a sort.
    Scores with NaN (whose ranks depend on order) fall back to ``auc_fast`` of the expanded resample.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray):
        self.pos, self.neg = np.asarray(pos, float), np.asarray(neg, float)
        self.has_nan = bool(np.isnan(self.pos).any() or np.isnan(self.neg).any())
        self.order = np.argsort(self.neg, kind="mergesort")
        neg_sorted = self.neg[self.order]
        self.below = np.searchsorted(neg_sorted, self.pos, side="left")  # negatives strictly below
        self.upto = np.searchsorted(neg_sorted, self.pos, side="right")  # ... below or tied

    def __call__(self, pos_counts: np.ndarray, neg_counts: np.ndarray) -> float:
        m, n = int(pos_counts.sum()), int(neg_counts.sum())
        if m == 0 or n == 0:
            return math.nan
        if self.has_nan:
            return auc_fast(np.repeat(self.pos, pos_counts), np.repeat(self.neg, neg_counts))
        cum = np.zeros(len(self.neg) + 1, dtype=np.int64)
        np.cumsum(neg_counts[self.order], out=cum[1:])
        twice_wins = cum[self.below] + cum[self.upto]  # 2 x (negatives below + half the tied ones)
        return float(int(pos_counts @ twice_wins)) / (2 * m * n)


class ResampledTpr:
    """``tpr_at_fpr(pos, neg, fpr)`` on bootstrap resamples given as counts, like ``ResampledAuc``:
    the threshold is found in the cumulative counts of the sorted negatives, the TPR in those of the
    sorted positives (the same numbers as ``tpr_at_fpr`` on the expanded resample)."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray, fpr: float):
        pos, neg = np.asarray(pos, float), np.asarray(neg, float)
        self.fpr = fpr
        self.pos_order, self.neg_order = np.argsort(pos, kind="mergesort"), np.argsort(neg, kind="mergesort")
        self.pos_sorted, self.neg_sorted = pos[self.pos_order], neg[self.neg_order]
        self.has_nan = bool(np.isnan(pos).any() or np.isnan(neg).any())

    def __call__(self, pos_counts: np.ndarray, neg_counts: np.ndarray) -> float:
        if self.has_nan:
            return tpr_at_fpr(np.repeat(self.pos_sorted, pos_counts[self.pos_order]),
                              np.repeat(self.neg_sorted, neg_counts[self.neg_order]), self.fpr)
        m, n = int(pos_counts.sum()), int(neg_counts.sum())
        k = int(math.floor(self.fpr * n + 1e-9))  # as tpr_at_fpr: accept score > the (k+1)-th largest negative
        if k >= n:
            t = -np.inf
        else:
            t = self.neg_sorted[np.searchsorted(np.cumsum(neg_counts[self.neg_order]), n - k - 1, side="right")]
        above = pos_counts[self.pos_order][np.searchsorted(self.pos_sorted, t, side="right"):].sum()
        return float(int(above)) / m if m else math.nan


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` examples appears in the resample ``idx``."""
    return np.bincount(idx, minlength=n)


# -- ECE -----------------------------------------------------------------------------------------------

def ece_binned(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with ``bins`` equal-width bins ([a, b), last closed), from confidences and 0/1."""
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    if len(conf) == 0:
        return math.nan
    which = np.clip(np.searchsorted(np.linspace(0.0, 1.0, bins + 1), conf, side="right") - 1, 0, bins - 1)
    gap = np.bincount(which, weights=correct - conf, minlength=bins)
    return float(np.abs(gap).sum() / len(conf))


def ece_interval(conf: np.ndarray, correct: np.ndarray, bins: int = 15, confidence: float = 0.95,
                 resamples: int = 1000, seed: int = 0) -> tuple[float, float, str]:
    """(low, high, method) of the equal-width ECE: a BCa bootstrap interval (scipy.stats.bootstrap).

    The binned ECE is biased upward, more so in bootstrap resamples (fewer distinct examples), so the
    percentile interval can lie wholly above the estimate; BCa corrects for that bias. When even BCa's
    bounds exclude the estimate (the whole bootstrap distribution on one side), the interval is the
    bootstrap spread re-centred on the estimate (``percentile spread around the estimate``): a
    statement of sampling spread, not of bias. Either way the interval contains the estimate.
    """
    from scipy.stats import bootstrap

    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    est = ece_binned(conf, correct, bins)
    if len(conf) < 2 or resamples <= 0:
        return math.nan, math.nan, "none"
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        res = bootstrap((conf, correct), lambda c, k: ece_binned(c, k, bins), paired=True, vectorized=False,
                        n_resamples=resamples, confidence_level=confidence, method="BCa", random_state=rng)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isnan(lo) or math.isnan(hi)) and lo <= est <= hi:
        return lo, hi, "BCa bootstrap"
    dist = res.bootstrap_distribution
    tail = 100.0 * (1.0 - confidence) / 2.0
    q_lo, med, q_hi = np.percentile(dist, [tail, 50.0, 100.0 - tail])
    return max(0.0, est - (med - q_lo)), est + (q_hi - med), "percentile spread around the estimate"


# -- paired tests ---------------------------------------------------------------------------------

def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, int, int]:
    """(p-value, b, c) of the exact McNemar test: b = a right and b wrong, c = the reverse."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: paired outcomes of different shapes {a.shape} and {b.shape}")
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    if n01 + n10 == 0:
        return 1.0, n01, n10
    table = [[int((a & b).sum()), n01], [n10, int((~a & ~b).sum())]]
    return float(mcnemar(table, exact=True).pvalue), n01, n10


@dataclass
class Bootstrap:
    """A bootstrap of a paired difference: the point estimate and the resampled differences."""

    estimate: float
    draws: np.ndarray
    n_seeds: int
    n_examples: tuple[int, ...]  # per stratum, of the first seed
    hierarchical: bool

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        d = self.draws[np.isfinite(self.draws)]
        if len(d) == 0:
            return math.nan, math.nan
        tail = 100.0 * (1.0 - confidence) / 2.0
        lo, hi = np.percentile(d, [tail, 100.0 - tail])
        return float(lo), float(hi)

    @property
    def pvalue(self) -> float:
        """Two-sided bootstrap p-value of 'difference = 0' (the smallest alpha at which the percentile
        interval excludes zero), with the +1 correction so it is never 0."""
        d = self.draws[np.isfinite(self.draws)]
        if len(d) == 0:
            return math.nan
        below, above = (d <= 0).sum(), (d >= 0).sum()
        return float(min(1.0, 2.0 * (min(below, above) + 1) / (len(d) + 1)))


@dataclass
class NormalDiff:
    """A difference with a normal (or Student-t, when ``df`` is given) sampling distribution."""

    estimate: float
    se: float
    df: float | None = None

    def _dist(self):
        from scipy.stats import norm, t

        return norm() if self.df is None else t(self.df)

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        if not (math.isfinite(self.se) and math.isfinite(self.estimate)):
            return math.nan, math.nan
        z = self._dist().ppf(0.5 + confidence / 2)
        return self.estimate - z * self.se, self.estimate + z * self.se

    @property
    def pvalue(self) -> float:
        if not (math.isfinite(self.se) and math.isfinite(self.estimate)):
            return math.nan
        if self.se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * self._dist().sf(abs(self.estimate) / self.se))


def auc_diff_delong(pos_a: np.ndarray, negs_a: Sequence[np.ndarray], pos_b: np.ndarray,
                    negs_b: Sequence[np.ndarray]) -> NormalDiff:
    """Paired DeLong test of mean-AUC(A) - mean-AUC(B), both models scoring the SAME positives and the
    SAME negative sets (DeLong et al. 1988): the per-example components of the two models are
    differenced, so the correlation between the models is accounted for."""
    pa = [auc_components(pos_a, n) for n in negs_a]
    pb = [auc_components(pos_b, n) for n in negs_b]
    k = len(pa)
    if k == 0 or k != len(pb):
        return NormalDiff(math.nan, math.nan)
    est = float(np.mean([a for a, _, _ in pa]) - np.mean([b for b, _, _ in pb]))
    d10 = np.mean([c for _, c, _ in pa], axis=0) - np.mean([c for _, c, _ in pb], axis=0)
    d01 = [ca - cb for (_, _, ca), (_, _, cb) in zip(pa, pb)]
    if len(d10) < 2 or any(len(d) < 2 for d in d01):
        return NormalDiff(est, math.nan)
    var = np.var(d10, ddof=1) / len(d10) + sum(np.var(d, ddof=1) / len(d) for d in d01) / k ** 2
    return NormalDiff(est, math.sqrt(max(var, 0.0)))


def paired_bootstrap(diff: Callable[[int, tuple[np.ndarray, ...]], float], sizes: Sequence[tuple[int, ...]],
                     resamples: int = 2000, seed: int = 0) -> Bootstrap:
    """Bootstrap of a paired difference between two models evaluated on the same examples.

    ``sizes[s]`` gives, for seed s, the number of examples in each stratum (e.g. (n_test,) or
    (n_in, n_ood) for an AUROC); ``diff(s, idx)`` returns metric(A) - metric(B) on seed s restricted to
    the index arrays ``idx`` (one per stratum), computed on the SAME indices for both models.
    With one seed, examples are resampled within each stratum. With two or more, each draw resamples
    seeds with replacement, then examples within each drawn seed, and averages the drawn seeds'
    differences (a two-level bootstrap, so training-seed variance is in the interval).
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(sizes)
    full = [tuple(np.arange(n) for n in sz) for sz in sizes]
    estimate = float(np.mean([diff(s, full[s]) for s in range(n_seeds)]))
    draws = np.empty(resamples)
    hierarchical = n_seeds >= 2
    for b in range(resamples):
        chosen = rng.integers(0, n_seeds, size=n_seeds) if hierarchical else np.zeros(1, dtype=int)
        vals = [diff(int(s), tuple(rng.integers(0, n, size=n) for n in sizes[s])) for s in chosen]
        draws[b] = np.mean(vals)
    return Bootstrap(estimate, draws, n_seeds, tuple(sizes[0]) if sizes else (), hierarchical)


def paired_bootstrap_mean(diffs: Sequence[np.ndarray], resamples: int = 2000, seed: int = 0) -> Bootstrap:
    """``paired_bootstrap`` for a metric that is a mean over examples (accuracy, NLL, robust accuracy),
    vectorised: ``diffs[s]`` holds the per-example differences metric_i(A) - metric_i(B) of seed s.
    The same two-level scheme: seeds resampled (two or more), then examples within each drawn seed."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(d, float) for d in diffs]
    n_seeds = len(diffs)
    estimate = float(np.mean([d.mean() for d in diffs]))
    if n_seeds == 1:
        d = diffs[0]
        draws = np.concatenate([d[rng.integers(0, len(d), size=(min(256, resamples - b), len(d)))].mean(1)
                                for b in range(0, resamples, 256)])
        return Bootstrap(estimate, draws, 1, (len(d),), False)
    # per seed, one independent resample mean for every (draw, slot): slots that draw the same seed differ
    means = np.stack([np.concatenate([d[rng.integers(0, len(d), size=(min(64, resamples - b) * n_seeds, len(d)))]
                                      .mean(1) for b in range(0, resamples, 64)]).reshape(resamples, n_seeds)
                      for d in diffs])  # [seeds, draws, slots]
    chosen = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    draws = means[chosen, np.arange(resamples)[:, None], np.arange(n_seeds)[None, :]].mean(1)
    return Bootstrap(estimate, draws, n_seeds, (len(diffs[0]),), True)


def _resample_counts(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """[draws, n] multiplicities of each example in ``draws`` resamples of n with replacement."""
    idx = rng.integers(0, n, size=(draws, n)) + (np.arange(draws) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=draws * n).reshape(draws, n)


def _ece_weighted(weights: np.ndarray, conf: np.ndarray, correct: np.ndarray, bins: int) -> np.ndarray:
    """ECE of every weighted resample at once: weights [B, n] -> [B] (same bins as ece_binned)."""
    which = np.clip(np.searchsorted(np.linspace(0.0, 1.0, bins + 1), conf, side="right") - 1, 0, bins - 1)
    onehot = np.zeros((len(conf), bins))
    onehot[np.arange(len(conf)), which] = correct - conf
    return np.abs(weights @ onehot).sum(1) / weights.sum(1)


def paired_bootstrap_ece(units: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], bins: int = 15,
                         resamples: int = 2000, seed: int = 0) -> Bootstrap:
    """``paired_bootstrap`` of ECE(A) - ECE(B), vectorised: ``units[s]`` = (conf_a, correct_a, conf_b,
    correct_b) of seed s on the same examples; the same resample weights serve both models."""
    rng = np.random.default_rng(seed)
    n_seeds = len(units)
    estimate = float(np.mean([ece_binned(ca, ka, bins) - ece_binned(cb, kb, bins) for ca, ka, cb, kb in units]))
    slots = 1 if n_seeds == 1 else n_seeds

    def diffs(unit, count):
        ca, ka, cb, kb = (np.asarray(x, float) for x in unit)
        out = []
        for b in range(0, count, 256):
            w = _resample_counts(rng, len(ca), min(256, count - b)).astype(float)
            out.append(_ece_weighted(w, ca, ka, bins) - _ece_weighted(w, cb, kb, bins))
        return np.concatenate(out)

    means = np.stack([diffs(u, resamples * slots).reshape(resamples, slots) for u in units])
    if n_seeds == 1:
        return Bootstrap(estimate, means[0, :, 0], 1, (len(units[0][0]),), False)
    chosen = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    draws = means[chosen, np.arange(resamples)[:, None], np.arange(n_seeds)[None, :]].mean(1)
    return Bootstrap(estimate, draws, n_seeds, (len(units[0][0]),), True)


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool], list[float]]:
    """Holm's step-down correction of ``pvalues`` at family-wise level ``alpha``.

    Returns (adjusted p-values, rejected, confidence levels): the comparison with the k-th smallest
    p-value (k = 1..m) is tested at alpha / (m - k + 1), so its interval is shown at level
    1 - alpha / (m - k + 1); rejection stops at the first non-rejection. (The same numbers as
    statsmodels' ``multipletests(method="holm")``, checked in the tests; computed here because that
    function runs a garbage collection per call, 0.5 s.) NaN p-values are never rejected.
    """
    p = np.asarray(pvalues, float)
    m = len(p)
    adjusted = np.full(m, np.nan)
    rejected = np.zeros(m, bool)
    levels = np.full(m, 1.0 - alpha)
    idx = np.flatnonzero(np.isfinite(p))
    idx = idx[np.argsort(p[idx], kind="stable")]
    k_total = len(idx)
    running, going = 0.0, True
    for rank, i in enumerate(idx):
        factor = k_total - rank
        levels[i] = 1.0 - alpha / factor
        running = max(running, min(1.0, p[i] * factor))  # adjusted p: cumulative max of p_(k) (m - k + 1)
        adjusted[i] = running
        going = going and p[i] <= alpha / factor
        rejected[i] = going
    return adjusted.tolist(), rejected.tolist(), levels.tolist()


def tpr_fpr_measurable(n_negatives: int, fpr: float, min_false_positives: int = MIN_FALSE_POSITIVES) -> tuple[bool, int]:
    """(measurable, negatives needed): a TPR at FPR ``fpr`` is read at a threshold admitting
    fpr * n negatives; below ``min_false_positives`` of them the threshold (and the TPR) is set by a
    handful of examples, so it is not a measurement. Needed = ceil(min_false_positives / fpr)."""
    needed = int(math.ceil(min_false_positives / fpr - 1e-9))
    return n_negatives >= needed, needed


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """TPR at the lowest threshold whose false-positive rate is <= ``fpr`` (scores: higher = positive)."""
    pos, neg = np.sort(np.asarray(pos, float)), np.sort(np.asarray(neg, float))
    k = int(math.floor(fpr * len(neg) + 1e-9))  # negatives allowed above the threshold
    # threshold t: accept score > t; with k negatives allowed, t = the (k+1)-th largest negative
    t = neg[len(neg) - k - 1] if k < len(neg) else -np.inf
    return float((pos > t).mean())
