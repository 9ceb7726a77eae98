"""stf_eval.stats cross-checked against independent computations (sklearn, scipy, direct numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stf_eval import stats


def test_proportion_intervals_bracket_the_estimate():
    lo, hi = stats.proportion_interval(1, 128)
    assert lo < 1 / 128 < hi and hi - lo < 0.05
    lo_e, hi_e = stats.proportion_interval(0, 128, method="exact")
    assert lo_e == 0.0 and hi_e == pytest.approx(1 - 0.025 ** (1 / 128), rel=1e-6)  # Clopper-Pearson at k = 0
    assert all(math.isnan(v) for v in stats.proportion_interval(0, 0))
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((1, 128), (0, 50), (50, 50), (37, 91)):
        assert stats.proportion_interval(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"))
        assert stats.proportion_interval(k, n, method="exact") == pytest.approx(
            proportion_confint(k, n, method="beta"), abs=1e-9)


def test_auc_and_delong_interval_match_sklearn_and_the_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 400), np.round(rng.normal(0, 1, 300), 1)  # ties in the negatives
    y = np.r_[np.ones(400), np.zeros(300)]
    auc, lo, hi = stats.auc_delong(pos, neg)
    assert auc == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    boot = [stats.auc_fast(rng.choice(pos, 400), rng.choice(neg, 300)) for _ in range(1500)]
    se_delong = (hi - lo) / (2 * 1.959964)
    assert se_delong == pytest.approx(np.std(boot), rel=0.15)


def test_ece_binned_matches_netcal():
    from stf_eval.metrics import calibration as cal

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(800, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 10, 800)
    labels[:500] = probs[:500].argmax(1)
    conf, correct = cal.top_label(probs, labels)
    assert stats.ece_binned(conf, correct, 15) == pytest.approx(cal.ece(probs, labels, 15), abs=1e-9)


def test_ece_interval_contains_its_estimate_where_the_percentile_interval_did_not():
    # a nearly calibrated, accurate predictor (like the published deep ensemble, ECE 0.0064 with a
    # percentile interval [0.0070, 0.0171]): the percentile interval of the upward-biased binned ECE often
    # lies above the estimate; the interval here must contain it every time
    misses = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        conf = rng.beta(5, 1, 1500)
        correct = (rng.random(1500) < conf).astype(float)
        est = stats.ece_binned(conf, correct)
        lo, hi, method = stats.ece_interval(conf, correct, resamples=300, seed=seed)
        assert lo <= est <= hi, (seed, est, lo, hi, method)
        boot = [stats.ece_binned(conf[i], correct[i]) for i in rng.integers(0, 1500, (300, 1500))]
        misses += np.percentile(boot, 2.5) > est
    assert misses >= 1  # the failure this interval fixes does occur on such data


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    from scipy.stats import binomtest

    rng = np.random.default_rng(2)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.7
    p, n01, n10 = stats.mcnemar_exact(a, b)
    assert p == pytest.approx(binomtest(n01, n01 + n10, 0.5).pvalue, rel=1e-9)
    assert stats.mcnemar_exact(a, a)[0] == 1.0


def test_paired_bootstrap_uses_the_pairing_and_both_levels():
    rng = np.random.default_rng(3)
    n = 500
    base = rng.random(n) < 0.7
    better = base | (rng.random(n) < 0.1)  # b right wherever a is, and on ~3% more: a paired effect
    boot = stats.paired_bootstrap(lambda s, idx: better[idx[0]].mean() - base[idx[0]].mean(), [(n,)],
                                  resamples=1000, seed=0)
    lo, hi = boot.interval()
    assert 0 < lo < boot.estimate < hi and boot.pvalue < 0.01 and not boot.hierarchical
    # unpaired, the same effect is not resolved: the pairing is what removes the common variance
    lo_u, _ = stats.proportion_interval(int(better.sum()), n)
    _, hi_u = stats.proportion_interval(int(base.sum()), n)
    assert lo_u < hi_u
    # two seeds with different effects: the hierarchical interval is wider than either seed's alone
    effects = [0.0, 0.1]
    xs = [rng.normal(size=400) for _ in effects]
    data = [(x, x + e + 0.1 * rng.normal(size=400)) for x, e in zip(xs, effects)]
    h = stats.paired_bootstrap(lambda s, idx: data[s][1][idx[0]].mean() - data[s][0][idx[0]].mean(),
                               [(400,), (400,)], resamples=1000, seed=1)
    assert h.hierarchical and h.estimate == pytest.approx(np.mean([d[1].mean() - d[0].mean() for d in data]))
    one = stats.paired_bootstrap(lambda s, idx: data[1][1][idx[0]].mean() - data[1][0][idx[0]].mean(),
                                 [(400,)], resamples=1000, seed=1)
    assert np.ptp(h.interval()) > np.ptp(one.interval())


def test_vectorised_mean_bootstrap_agrees_with_the_general_one():
    rng = np.random.default_rng(6)
    d = [rng.normal(0.05, 1, 300), rng.normal(0.15, 1, 300)]
    for units in ([d[0]], d):
        fast = stats.paired_bootstrap_mean(units, resamples=2000, seed=1)
        slow = stats.paired_bootstrap(lambda s, idx, units=units: units[s][idx[0]].mean(), [(300,)] * len(units),
                                      resamples=2000, seed=2)
        assert fast.estimate == pytest.approx(slow.estimate) and fast.hierarchical == slow.hierarchical
        assert fast.interval() == pytest.approx(slow.interval(), abs=0.02)


def test_vectorised_ece_bootstrap_agrees_with_the_general_one():
    rng = np.random.default_rng(7)
    units = []
    for _ in range(2):
        ca, cb = rng.beta(5, 1, 400), rng.beta(5, 1, 400)
        units.append((ca, (rng.random(400) < ca).astype(float), cb, (rng.random(400) < cb * 0.95).astype(float)))
    for us in (units[:1], units):
        fast = stats.paired_bootstrap_ece(us, 15, resamples=1500, seed=1)
        slow = stats.paired_bootstrap(lambda s, idx, us=us: stats.ece_binned(us[s][0][idx[0]], us[s][1][idx[0]])
                                      - stats.ece_binned(us[s][2][idx[0]], us[s][3][idx[0]]),
                                      [(400,)] * len(us), resamples=1500, seed=2)
        assert fast.estimate == pytest.approx(slow.estimate) and fast.hierarchical == slow.hierarchical
        assert fast.interval() == pytest.approx(slow.interval(), abs=0.01)


def test_holm_levels_match_the_step_down_rule():
    adjusted, rejected, levels = stats.holm_levels([0.01, 0.04, 0.03, float("nan")], alpha=0.05)
    # sorted finite p: 0.01, 0.03, 0.04 tested at 0.05/3, 0.05/2, 0.05/1
    assert levels[:3] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2])
    assert rejected == [True, False, False, False]  # 0.03 > 0.025 stops the procedure
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[3])
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(5).uniform(0, 0.1, 12)
    rej, adj, _, _ = multipletests(p, alpha=0.05, method="holm")
    mine = stats.holm_levels(p, 0.05)
    assert mine[1] == rej.tolist() and mine[0] == pytest.approx(adj.tolist())


def test_tpr_at_low_fpr_needs_enough_negatives():
    assert stats.tpr_fpr_measurable(1500, 0.001) == (False, 10000)
    assert stats.tpr_fpr_measurable(1500, 0.01) == (True, 1000)
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(1, 1, 1000), rng.normal(0, 1, 1000)
    t = np.sort(neg)[-11]  # 10 negatives above it: FPR 1%
    assert stats.tpr_at_fpr(pos, neg, 0.01) == pytest.approx((pos > t).mean())


def test_midranks_and_auc_fast_match_scipy_and_sklearn_with_ties():
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    for x in (rng.normal(size=300), rng.integers(0, 5, size=300).astype(float), np.array([2.0]), np.zeros(7)):
        assert np.array_equal(stats._midranks(x), rankdata(x, method="average"))
    pos, neg = rng.integers(0, 20, 250).astype(float), rng.integers(0, 15, 400).astype(float)
    expected = roc_auc_score(np.r_[np.ones(250), np.zeros(400)], np.r_[pos, neg])
    assert stats.auc_fast(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert stats.auc_fast(pos, neg) == pytest.approx(stats.auc_components(pos, neg)[0], abs=1e-12)
    assert np.isnan(stats.auc_fast(pos, np.array([])))


def test_resampled_auc_and_tpr_equal_the_metrics_on_the_expanded_resample():
    """The report's bootstraps score a resample from its counts: the same numbers, to the last bit, as
    ranking the resampled arrays (ties, infinities and NaN included)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    for trial in range(60):
        m, n = int(rng.integers(1, 80)), int(rng.integers(1, 80))
        if trial % 2:
            pos, neg = rng.integers(0, 6, m).astype(float), rng.integers(0, 6, n).astype(float)  # many ties
        else:
            pos, neg = rng.normal(0.5, 1, m), rng.normal(0, 1, n)
        if trial % 5 == 0:
            pos[0], neg[-1] = np.inf, -np.inf
        if trial % 11 == 0:
            neg[0] = np.nan  # order-dependent ranks: the expanded resample is scored instead
        auc = stats.ResampledAuc(pos, neg)
        tprs = {f: stats.ResampledTpr(pos, neg, f) for f in (0.0, 0.01, 0.1, 0.5)}
        for _ in range(4):
            i, j = rng.integers(0, m, m), rng.integers(0, n, n)
            cp, cq = stats.resample_counts(i, m), stats.resample_counts(j, n)
            expected = stats.auc_fast(pos[i], neg[j])
            assert auc(cp, cq) == expected or (np.isnan(expected) and np.isnan(auc(cp, cq)))
            if np.isfinite(np.r_[pos, neg]).all():
                labels = np.r_[np.ones(m), np.zeros(n)]
                assert auc(cp, cq) == pytest.approx(roc_auc_score(labels, np.r_[pos[i], neg[j]]), abs=1e-12)
            for f, tpr in tprs.items():
                assert tpr(cp, cq) == stats.tpr_at_fpr(pos[i], neg[j], f)
    assert np.isnan(stats.ResampledAuc(np.ones(3), np.zeros(2))(np.zeros(3, int), np.ones(2, int)))
