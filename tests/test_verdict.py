"""The verdict machinery on synthetic runs with per-example arrays: no findings from noise, real effects
found, "not enough evidence" when that is the truth, and the guards and fallbacks of docs/report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stf_eval import stats
from stf_eval.examples import write_examples
from stf_eval.report import verdict as V
from stf_eval.report.load import load_run, records_frame


def _model_arrays(rng, y, quality: float, ood_shift: float, robust: float, leak: float, n_classes=10):
    """Arrays of one synthetic model: predictions whose accuracy / OOD separation / robustness /
    membership leak are set by the arguments; the noise is the model's own."""
    n = len(y)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += quality
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ent_in = rng.normal(ood_shift, 1.0, n).astype(np.float32)
    member = np.r_[np.ones(600, bool), np.zeros(400, bool)]
    return {
        "calibration": {"test/index": np.arange(n, dtype=np.int32), "test/label": y.astype(np.int16),
                        "test/log_probs": lp.astype(np.float32)},
        "ood": {"test/score/entropy": ent_in, "ood/near_set/score/entropy": rng.normal(0, 1, 300).astype(np.float32),
                "ood/far_set/score/entropy": rng.normal(-0.5, 1, 300).astype(np.float32)},
        "adversarial": {"index": np.arange(256, dtype=np.int32), "union/0.1/correct": rng.random(256) < robust},
        "membership": {"pool/index": np.arange(1000, dtype=np.int32), "is_member": member,
                       "score/loss": (rng.normal(0, 1, 1000) + leak * member).astype(np.float32)},
    }


def _records(model: str, arrays: dict) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    cal = arrays["calibration"]
    lp, y = cal["test/log_probs"].astype(float), cal["test/label"].astype(int)
    correct = lp.argmax(1) == y
    def rec(metric, value, **kw):
        return {"model": model, "suite": kw.pop("suite", "calibration"), "dataset": "synthetic",
                "metric": metric, "value": float(value), "seed": 0, **kw}
    lo, hi = stats.proportion_interval(int(correct.sum()), len(y))
    rows = [rec("accuracy", correct.mean(), n=len(y), ci_low=lo, ci_high=hi), rec("nll", -lp[np.arange(len(y)), y].mean(), n=len(y)),
            rec("ece", stats.ece_binned(np.exp(lp.max(1)), correct), n=len(y))]
    ood = arrays["ood"]
    for s in ("near_set", "far_set"):
        a = roc_auc_score(np.r_[np.ones(len(ood["test/score/entropy"])), np.zeros(300)],
                          np.r_[ood["test/score/entropy"], ood[f"ood/{s}/score/entropy"]])
        rows.append(rec("auroc", a, suite="ood", ood_set=s, score="entropy", n=300))
    rows.append(rec("robust_accuracy", arrays["adversarial"]["union/0.1/correct"].mean(), suite="adversarial",
                    attack="pgd", eps=0.1, n=256))
    m = arrays["membership"]
    sc, mem = m["score/loss"], m["is_member"]
    rows.append(rec("mia_auc", stats.auc_fast(sc[mem], sc[~mem]), suite="membership", attack="loss", n=1000))
    rows.append(rec("tpr_at_1pct_fpr", stats.tpr_at_fpr(sc[mem], sc[~mem], 0.01), suite="membership",
                    attack="loss", n=1000))
    return rows


def write_run(path: Path, draw: int, effects: dict | None = None, n_test: int = 600, arrays: bool = True,
              seeds=(0,), base: dict | None = None) -> Path:
    """Two models, stf_bnn and deterministic, identical up to noise unless ``effects`` give STF-BNN an
    advantage (keys: quality, ood_shift, robust, leak)."""
    base = {"quality": 2.5, "ood_shift": 1.0, "robust": 0.5, "leak": 0.3, **(base or {})}
    stf = {**base, **(effects or {})}
    records = []
    for seed in seeds:
        rng = np.random.default_rng([draw, seed])
        y = rng.integers(0, 10, n_test)
        for model, p in (("stf_bnn", stf), ("deterministic", base)):
            a = _model_arrays(rng, y, **p)
            rows = _records(model, a)
            for r in rows:
                r["seed"] = seed
            records += rows
            if arrays:
                for suite, arr in a.items():
                    write_examples(path, suite, model, seed, arr)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"name": "synthetic-verdict", "records": records, "cells": []}))
    (path / "config.json").write_text(json.dumps({
        "seeds": list(seeds), "models": {"stf_bnn": {"plugin": "stf_bnn"}, "deterministic": {"plugin": "deterministic"}},
        "suites": {s: {} for s in ("calibration", "ood", "adversarial", "membership")},
        "ood": {"near_set": {"group": "near"}, "far_set": {"group": "far"}}}))
    return path


def claims_of(path: Path) -> dict[int, V.Claim]:
    run = load_run(path)
    df = records_frame(run)
    return {c.number: c for c in V.claims_for(run, df, [], run.models())}


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(V, "RESAMPLES", 400)


def test_identical_models_are_called_neither_better_nor_worse_fast(fast):
    """60 seeded draws straight through the comparison functions (no run directory): two models equal up
    to noise on accuracy / NLL / ECE (three baselines' worth), near and far AUROC and robust accuracy;
    at most 5% of the draws may hold a better or worse comparison."""
    draws, found = 60, 0
    for draw in range(draws):
        rng = np.random.default_rng([99, draw])
        y = rng.integers(0, 10, 500)
        arr = [_model_arrays(rng, y, 2.5, 1.0, 0.5, 0.3) for _ in range(4)]
        claim = V.Claim(1, "t", "s", "stf")
        for b in (1, 2, 3):  # STF-BNN vs three equally good baselines: 9 comparisons in one family
            for metric in ("accuracy", "nll", "ece"):
                c = V.Comparison(f"b{b}", metric, "", V.Estimate(0), V.Estimate(0), 0.0)
                V._paired_calibration(c, [(arr[0]["calibration"], arr[b]["calibration"])], metric, 15, f"{draw}{b}{metric}")
                claim.comparisons.append(c)
            for s in ("near_set", "far_set"):
                c = V.Comparison(f"b{b}", "auroc", s, V.Estimate(0), V.Estimate(0), 0.0)
                V._paired_auroc(c, [(arr[0]["ood"], arr[b]["ood"])], [s], "entropy", f"{draw}{b}{s}")
                claim.comparisons.append(c)
        V.judge(claim)
        found += any(c.outcome in (V.BETTER, V.WORSE) for c in claim.comparisons)
    print("draws with a finding:", found, "of", draws)
    assert found <= 0.05 * draws


@pytest.mark.slow
def test_identical_models_are_called_neither_better_nor_worse(tmp_path, fast):
    """40 seeded draws of two models equal up to noise: in >= 95% of draws, no claim has a better or
    worse comparison (Holm keeps the family-wise error of each claim at 5%)."""
    draws = 40
    called = {1: 0, 2: 0, 3: 0}
    for draw in range(draws):
        claims = claims_of(write_run(tmp_path / f"d{draw}", draw))
        for k in called:
            called[k] += any(c.outcome in (V.BETTER, V.WORSE) for c in claims[k].comparisons)
            assert claims[k].comparisons and all(c.test is not None for c in claims[k].comparisons
                                                   if c.metric != "tpr_at_1pct_fpr")
    print("draws with a finding, per claim:", called)
    assert all(v <= 0.05 * draws for v in called.values()), called


def test_a_clear_effect_is_found(tmp_path, fast):
    claims = claims_of(write_run(tmp_path / "better", 7, {"quality": 3.5, "ood_shift": 2.0, "robust": 0.8,
                                                         "leak": 0.0}, base={"leak": 0.8}))
    out = {(c.metric, c.setting.split(":")[0]): c for k in (1, 2, 3) for c in claims[k].comparisons}
    assert out["accuracy", "test split"].outcome == V.BETTER
    assert "McNemar" in out["accuracy", "test split"].method
    assert out["nll", "test split"].outcome == V.BETTER
    assert out["auroc", "near OOD"].outcome == V.BETTER and out["auroc", "far OOD"].outcome == V.BETTER
    rob = next(c for c in claims[2].comparisons)
    assert rob.outcome == V.BETTER and rob.low > 0
    mia = next(c for c in claims[3].comparisons if c.metric == "mia_auc")
    assert mia.outcome == V.BETTER and "DeLong" in mia.method  # less leak is better
    assert claims[1].verdict == claims[2].verdict == V.SUPPORTED
    # near and far OOD are compared apart, and the headline mean over all sets as well
    settings = [c.setting for c in claims[1].comparisons if c.metric == "auroc"]
    assert any(s.startswith("near OOD") for s in settings) and any(s.startswith("far OOD") for s in settings)
    assert any(s.startswith("all OOD sets") for s in settings)


def test_paired_difference_matches_an_independent_computation(tmp_path, fast):
    path = write_run(tmp_path / "r", 3, {"quality": 2.8})
    claims = claims_of(path)
    acc = next(c for c in claims[1].comparisons if c.metric == "accuracy")
    from stf_eval.examples import load_examples

    a = load_examples(path, suite="calibration", model="stf_bnn")["calibration", "stf_bnn", 0]
    b = load_examples(path, suite="calibration", model="deterministic")["calibration", "deterministic", 0]
    ca = a["test/log_probs"].argmax(1) == a["test/label"]
    cb = b["test/log_probs"].argmax(1) == b["test/label"]
    assert acc.diff == pytest.approx(ca.mean() - cb.mean())
    from scipy.stats import binomtest

    n01, n10 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    assert acc.exact_p == pytest.approx(binomtest(n01, n01 + n10).pvalue)
    assert acc.low <= acc.diff <= acc.high and acc.level >= 0.95


def test_all_inconclusive_reads_not_enough_evidence_and_says_what_would_settle_it():
    claim = V.Claim(1, "t", "s", "stf")
    for _ in range(3):
        c = V.Comparison("b", "accuracy", "", V.Estimate(0.9), V.Estimate(0.89), 0.01, size=200)
        c.test = stats.NormalDiff(0.01, 0.02)
        claim.comparisons.append(c)
    V.judge(claim)
    assert claim.verdict == V.NOT_ENOUGH and claim.verdict != V.SUPPORTED
    assert all(c.outcome == V.INCONCLUSIVE for c in claim.comparisons)
    assert claim.settle and "200 examples" in claim.settle[0]
    # an equivalence inside the margin is not an advantage (claim 2), but it matches (claim 1)
    for number, expected in ((1, V.SUPPORTED), (2, V.NOT_SUPPORTED)):
        claim = V.Claim(number, "t", "s", "stf")
        c = V.Comparison("b", "accuracy", "", V.Estimate(0.9), V.Estimate(0.9), 0.0)
        c.test = stats.NormalDiff(0.0005, 0.001)
        claim.comparisons.append(c)
        V.judge(claim)
        assert c.outcome == V.EQUIVALENT and claim.verdict == expected


def test_holm_correction_is_applied_within_a_claim():
    # p = 0.03 alone is a finding; among three comparisons with p = 0.03 it is not (0.03 > 0.05 / 3)
    def claim_with(k):
        claim = V.Claim(2, "t", "s", "stf")
        for _ in range(k):
            c = V.Comparison("b", "robust_accuracy", "", V.Estimate(0.6), V.Estimate(0.5), 0.1)
            c.test = stats.NormalDiff(0.1, 0.1 / 2.17)  # two-sided p ~ 0.03
            claim.comparisons.append(c)
        V.judge(claim)
        return claim

    assert claim_with(1).comparisons[0].outcome == V.BETTER
    assert {c.outcome for c in claim_with(3).comparisons} == {V.INCONCLUSIVE}


def test_tpr_at_fpr_below_resolution_is_not_measurable(tmp_path, fast):
    claims = claims_of(write_run(tmp_path / "r", 1))
    # 400 non-members: a 1% FPR threshold admits 4 of them; 10 are needed -> 1,000 non-members
    tpr = next(c for c in claims[3].comparisons if c.metric == "tpr_at_1pct_fpr")
    assert tpr.outcome == V.INCONCLUSIVE and "not measurable with 400 non-members (needs >= 1,000" in tpr.method


def test_without_arrays_records_are_combined_unpaired_and_membership_is_guarded(tmp_path):
    claims = claims_of(write_run(tmp_path / "r", 2, arrays=False))
    acc = next(c for c in claims[1].comparisons if c.metric == "accuracy")
    assert "unpaired" in acc.method
    tpr = next(c for c in claims[3].comparisons if c.metric == "tpr_at_1pct_fpr")
    assert tpr.outcome == V.INCONCLUSIVE and "per-example membership arrays" in tpr.method
    assert any("no paired per-example membership arrays" in c for c in claims[3].caveats)
    assert not any(c.outcome in (V.BETTER, V.WORSE) for k in (1, 2, 3) for c in claims[k].comparisons)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_two_seeds_use_the_hierarchical_bootstrap(tmp_path, fast):
    claims = claims_of(write_run(tmp_path / "r", 5, seeds=(0, 1)))
    acc = next(c for c in claims[1].comparisons if c.metric == "accuracy")
    assert "hierarchical" in acc.method and "2 seed(s)" in acc.method and acc.exact_p is None


def test_guards_and_cost_from_controlled_measurements_only(tmp_path):
    run_dir = write_run(tmp_path / "r", 4, {"quality": 0.3}, n_test=300)
    run = load_run(run_dir)
    df = records_frame(run)
    guards = " ".join(V.guards_for(run, df, run.models()))
    assert "single training seed" in guards and "small test set (300 examples)" in guards
    assert "near chance" in guards and "stf_bnn" in guards and "chance 0.1000" in guards
    assert "256 attacked examples" in guards
    # claim 4: single wall-clock timings are not evidence; a controlled ratio with its interval is
    import pandas as pd

    rows = [{"model": "stf_bnn", "suite": "efficiency", "metric": "train_seconds", "value": 5.0, "seed": 0,
             "stage": "total"},
            {"model": "full_bnn", "suite": "efficiency", "metric": "train_seconds", "value": 20.0, "seed": 0,
             "stage": "total"}]
    df2 = pd.concat([df, pd.DataFrame(rows)], ignore_index=True).fillna({"stage": "", "note": ""})
    claim = V.Claim(4, "t", "s", "stf_bnn")
    V._cost(claim, run, df2, "stf_bnn", ["full_bnn"])
    V.judge(claim)
    assert claim.verdict == V.NOT_ENOUGH and "single wall-clock timings" in claim.reason
    ratio = {"model": "stf_bnn", "suite": "efficiency", "metric": "svi_vs_full_bnn_epoch_seconds_ratio", "value": 0.56,
             "seed": 0, "stage": "svi", "ci_low": 0.5, "ci_high": 0.62, "note": "controlled: interleaved, median of 9"}
    df3 = pd.concat([df2, pd.DataFrame([ratio])], ignore_index=True).fillna({"attack": "", "eps": "", "ood_set": "",
                                                                             "score": "", "shift": "", "severity": ""})
    claim = V.Claim(4, "t", "s", "stf_bnn")
    V._cost(claim, run, df3, "stf_bnn", ["full_bnn"])
    V.judge(claim)
    assert claim.verdict == V.SUPPORTED and claim.comparisons[0].outcome == V.BETTER
    assert math.isclose(claim.comparisons[0].diff, -0.44)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_merge_runs_of_one_configuration(tmp_path, fast):
    import pandas as pd

    from stf_eval.cli import main
    from stf_eval.errors import ConfigError
    from stf_eval.report.merge import merge_runs

    a = write_run(tmp_path / "a", 11, seeds=(0,))
    b = write_run(tmp_path / "b", 11, seeds=(1,))
    for r, s in ((a, 1), (b, 0)):  # each run's config names its own seed
        cfg = json.loads((r / "config.json").read_text())
        (r / "config.json").write_text(json.dumps({**cfg, "seeds": [1 - s]}))
    merged = merge_runs([a, b], tmp_path / "m")
    run = load_run(merged)
    assert run.seeds == [0, 1] and len(list((merged / "examples").glob("*.npz"))) == 16
    over = pd.read_csv(merged / "over_seeds.csv")
    acc = over[(over["metric"] == "accuracy") & (over["model"] == "stf_bnn")].iloc[0]
    per_seed = [r["value"] for r in run.records if r["metric"] == "accuracy" and r["model"] == "stf_bnn"]
    assert acc["n_seeds"] == 2 and acc["mean"] == pytest.approx(np.mean(per_seed))
    assert acc["ci_low"] < acc["mean"] < acc["ci_high"]
    claims = claims_of(merged)
    assert "hierarchical" in next(c for c in claims[1].comparisons if c.metric == "accuracy").method
    with pytest.raises(ConfigError, match="seed 0 is in both"):
        merge_runs([a, a], tmp_path / "m2")
    cfg = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**cfg, "suites": {"calibration": {"bins": 10}}}))
    with pytest.raises(ConfigError, match="differs in suites"):
        merge_runs([a, b], tmp_path / "m3")
    assert main(["merge", str(a), str(a), "-o", str(tmp_path / "m4")]) == 2


def test_compare_page_shows_signed_judged_differences(tmp_path):
    from stf_eval.report.compare import compare_context

    a = write_run(tmp_path / "a", 12)
    b = write_run(tmp_path / "b", 13, base={"quality": 1.0})  # a much weaker deterministic net in run b
    ctx = compare_context([a, b])
    subs = {}
    for table, _ in ctx["per_suite"]:
        for row in table.body:
            subs[row[0].text, row[1].text, row[2].text.split()[0], row[3].text] = row[5].sub
    acc = subs["calibration", "deterministic", "accuracy", "dataset=synthetic"]
    assert acc.startswith("\u0394 -") and acc.endswith("worse")  # signed, judged, in the metric's direction
    nll = subs["calibration", "deterministic", "nll", "dataset=synthetic"]  # no interval recorded: delta only
    assert nll.startswith("\u0394 +") and "[" not in nll
