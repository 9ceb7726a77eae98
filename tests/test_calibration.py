"""Calibration metrics cross-checked against direct computations; corruptions; the suite end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stf_eval.metrics import calibration as cal


def _random_probs(n: int, c: int, seed: int, scale: float = 3.0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, c)) * scale
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _labels_from(probs: np.ndarray, seed: int) -> np.ndarray:
    """Labels drawn from the predicted distribution: a perfectly calibrated predictor."""
    u = np.random.default_rng(seed).uniform(size=(len(probs), 1))
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


@pytest.fixture(scope="module")
def fixed():
    probs = _random_probs(1500, 10, seed=1)
    labels = np.random.default_rng(2).integers(0, 10, size=1500)
    labels[:900] = probs[:900].argmax(axis=1)  # a mix of right and wrong predictions
    return probs, labels


def test_hand_computed_case():
    # bin [0.8667, 0.9333): two examples at 0.9, one right -> gap 0.4; bin [0.6, 0.6667): two at 0.6, both
    # right -> gap 0.4; bin [0.4667, 0.5333): one at 0.5, wrong -> gap 0.5
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.5 - 1e-9, 0.5 + 1e-9]])
    probs = np.hstack([probs, np.zeros((5, 1))])
    labels = np.array([0, 1, 0, 0, 0])
    assert cal.ece(probs, labels) == pytest.approx((2 * 0.4 + 2 * 0.4 + 0.5) / 5, abs=1e-6)
    assert cal.mce(probs, labels) == pytest.approx(0.5, abs=1e-6)
    assert cal.bin_counts(probs.max(axis=1)).sum() == 5


def test_equal_width_ece_and_mce_match_direct_computation(fixed):
    probs, labels = fixed
    for bins in (15, 10):
        direct_ece, direct_mce, direct_counts = cal.ece_equal_width(probs, labels, bins)
        assert cal.ece(probs, labels, bins) == pytest.approx(direct_ece, abs=1e-9)
        assert cal.mce(probs, labels, bins) == pytest.approx(direct_mce, abs=1e-9)
        assert cal.bin_counts(probs.max(axis=1), bins).tolist() == direct_counts.tolist()


def test_adaptive_ece_matches_direct_computation_and_netcal(fixed):
    from netcal.metrics import ECE

    probs, labels = fixed
    conf, correct = cal.top_label(probs, labels)
    for bins in (15, 10):  # 1500 is a multiple of both: equal-mass runs are exact
        assert cal.ece_adaptive(probs, labels, bins) == pytest.approx(
            cal.ece_equal_mass_direct(probs, labels, bins), abs=1e-9)
        assert cal.ece_adaptive(probs, labels, bins) == pytest.approx(
            ECE(bins, equal_intervals=False).measure(conf, correct), abs=1e-9)
    assert cal.ece_adaptive(probs, labels) != pytest.approx(cal.ece(probs, labels), abs=1e-6)


def test_adaptive_ece_survives_tied_confidences():
    from netcal.metrics import ECE

    # saturated softmax: 75 of 100 confidences are exactly 1; 4 equal-mass bins collapse to 2
    conf = np.r_[np.linspace(0.55, 0.9, 25), np.ones(75)]
    probs = np.stack([conf, 1.0 - conf], axis=1)
    labels = np.zeros(100, dtype=int)
    labels[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 31, 32]] = 1  # 15 of 25 unsure right, 72 of 75 sure right
    expected = 0.25 * abs(15 / 25 - conf[:25].mean()) + 0.75 * abs(72 / 75 - 1.0)
    assert cal.ece_adaptive(probs, labels, 4) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):  # why the adaptive ECE is not netcal's
        ECE(4, equal_intervals=False).measure(conf, (labels == 0).astype(int))


def test_classwise_ece_matches_direct_computation(fixed):
    probs, labels = fixed
    for bins in (15, 7):
        assert cal.ece_classwise(probs, labels, bins) == pytest.approx(
            cal.ece_classwise_direct(probs, labels, bins), abs=1e-9)


def test_classwise_ece_of_a_two_class_resample_does_not_switch_to_binary_mode(fixed):
    probs, labels = fixed
    two = np.flatnonzero(labels < 2)[:50]
    assert math.isfinite(cal.calibration_metrics(probs[two], labels[two])["ece_classwise"])


def test_perfectly_calibrated_predictor_has_ece_near_zero():
    probs = _random_probs(20000, 10, seed=3, scale=2.0)
    labels = _labels_from(probs, seed=4)
    assert cal.ece(probs, labels) < 0.012
    assert cal.ece_adaptive(probs, labels) < 0.012
    assert cal.ece_classwise(probs, labels) < 0.006
    # the same labels under an overconfident predictor (temperature 0.5) are clearly miscalibrated
    sharp = probs ** 2 / (probs ** 2).sum(axis=1, keepdims=True)
    assert cal.ece(sharp, labels) > 0.05 and cal.ece_adaptive(sharp, labels) > 0.05
    assert cal.ece_classwise(sharp, labels) > 0.005


def test_scoring_rules_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    labels = np.array([0, 2])
    assert cal.accuracy(probs, labels) == 0.5
    assert cal.nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert cal.brier(probs, labels) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.36 + 0.49)) / 2)


def test_bootstrap_intervals_bracket_the_estimate_and_are_reproducible(fixed):
    probs, labels = fixed

    def stat(idx):
        return {"accuracy": cal.accuracy(probs[idx], labels[idx]), "ece": cal.ece(probs[idx], labels[idx])}

    a = cal.bootstrap_intervals(stat, len(labels), 100, seed=5)
    assert a == cal.bootstrap_intervals(stat, len(labels), 100, seed=5)
    acc = cal.accuracy(probs, labels)
    lo, hi = a["accuracy"]
    assert lo < acc < hi and hi - lo < 0.1
    assert a["ece"][0] < a["ece"][1]


# -- corruptions ---------------------------------------------------------------------------------

def test_shifts_are_deterministic_bounded_and_grow_with_severity():
    from stf_eval.shifts import SHIFTS, apply_shift

    x = torch.zeros(16, 1, 28, 28)  # a digit-like glyph: an upright bar and a foot
    x[:, :, 4:24, 12:16] = 1.0
    x[:, :, 18:24, 16:24] = 0.7
    for name in SHIFTS:
        outs = [apply_shift(x, name, s, seed=1) for s in (1, 2, 3, 4, 5)]
        assert torch.equal(outs[2], apply_shift(x, name, 3, seed=1)), name
        for out in outs:
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        dist = [float((o - x).abs().mean()) for o in outs]
        assert all(a < b for a, b in zip(dist, dist[1:])), (name, dist)
    assert not torch.equal(apply_shift(x, "gaussian_noise", 3, 1), apply_shift(x, "gaussian_noise", 3, 2))
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(apply_shift(flat, "gaussian_blur", 5), flat, atol=1e-6)
    c = apply_shift(x * 0.5 + 0.25, "contrast", 2)
    ref = x * 0.5 + 0.25
    assert torch.allclose(c - c.mean((2, 3), keepdim=True), 0.5 * (ref - ref.mean((2, 3), keepdim=True)),
                          atol=1e-5)


def test_rotation_by_90_degrees_is_exact_geometry():
    from stf_eval import shifts

    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 1:4, 4] = 1.0  # a vertical bar above the centre
    gen = torch.Generator().manual_seed(0)
    old = shifts.ROTATION_DEGREES
    try:
        shifts.ROTATION_DEGREES = (90.0,) * 5
        out = shifts.rotation(x, 1, gen)
    finally:
        shifts.ROTATION_DEGREES = old
    assert torch.allclose(out, torch.rot90(x, 1, (2, 3)), atol=1e-5) or \
        torch.allclose(out, torch.rot90(x, -1, (2, 3)), atol=1e-5)


# -- the suite -----------------------------------------------------------------------------------

def _run_suite(model, data, tmp_path, **params):
    from stf_eval.context import EvalContext
    from stf_eval.params import parse_params
    from stf_eval.suites.calibration import Calibration

    suite = Calibration(parse_params(Calibration.Params, params, "calibration"), "calibration")
    ctx = EvalContext(model_name="m", model=model, data=data, seed=0, run_dir=tmp_path, device=model.device)
    ctx.suite = "calibration"
    suite.run(model, data, ctx)
    return ctx


def test_suite_records_every_metric_with_intervals_and_shifts(fitted_models, tiny_data, tmp_path):
    from stf_eval.metrics.predictive import mean_probs

    model = fitted_models("deterministic")
    ctx = _run_suite(model, tiny_data, tmp_path, bootstrap=20, severities=[1, 5])
    rows = {(r["metric"], r["shift"], r["severity"]): r for r in ctx.records}
    probs = mean_probs(ctx.samples("test"))
    labels = tiny_data.test.y.numpy()
    for metric in ("accuracy", "nll", "brier", "ece", "ece_adaptive", "ece_classwise", "mce"):
        row = rows[metric, None, None]
        assert row["n"] == len(labels) and row["ci_low"] <= row["ci_high"]
        assert row["ci_low"] - 0.05 <= row["value"] <= row["ci_high"] + 0.05
        for shift in ("gaussian_noise", "gaussian_blur", "contrast", "rotation", "mean"):
            for sev in (1, 5):
                assert math.isfinite(rows[metric, shift, sev]["value"])
        assert math.isfinite(rows[metric, "mean", None]["value"])
    assert rows["ece", None, None]["value"] == pytest.approx(cal.ece_equal_width(probs, labels)[0], abs=1e-9)
    assert rows["accuracy", "gaussian_noise", 5]["value"] < rows["accuracy", None, None]["value"]
    mean5 = np.mean([rows["ece", s, 5]["value"] for s in ("gaussian_noise", "gaussian_blur", "contrast",
                                                            "rotation")])
    assert rows["ece", "mean", 5]["value"] == pytest.approx(mean5)
    assert "shift:rotation:5" in ctx.prediction_keys  # predictions shared through the context
    assert {f["name"] for f in ctx.figures} == {"reliability", "shift"}
    for fig in ctx.figures:
        assert (tmp_path / fig["path"]).read_text().lstrip().startswith("<?xml")
    assert any("examples per bin" in n["text"] for n in ctx.notes)


def test_records_recomputed_from_the_saved_per_example_arrays(fitted_models, tiny_data, tmp_path):
    """The saved npz holds what the records say: ECE and accuracy recomputed by independent numpy code
    from test/log_probs and test/label; the accuracy interval is Wilson, the ECE interval holds the ECE."""
    from statsmodels.stats.proportion import proportion_confint

    from stf_eval.examples import load_examples, write_examples

    model = fitted_models("deterministic")
    ctx = _run_suite(model, tiny_data, tmp_path, bootstrap=30, shifts=["contrast"], severities=[2],
                     shift_max_examples=50)
    write_examples(tmp_path, "calibration", "m", 0, ctx.examples["calibration"])
    arrays = load_examples(tmp_path, suite="calibration")["calibration", "m", 0]
    assert arrays["test/log_probs"].dtype == np.float32 and arrays["test/label"].dtype == np.int16
    assert arrays["shift/contrast/2/log_probs"].dtype == np.float16
    assert arrays["shift/contrast/2/index"].shape == (50,) and arrays["test/index"].dtype == np.int32
    rows = {(r["metric"], r["shift"], r["severity"]): r for r in ctx.records}
    p = np.exp(arrays["test/log_probs"].astype(np.float64))
    y = arrays["test/label"].astype(int)
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = sum(abs(((pred == y) & m).sum() - conf[m].sum()) for m in
              ((conf >= lo) & ((conf < hi) if hi < 1 else (conf <= hi)) for lo, hi in zip(edges[:-1], edges[1:])))
    assert rows["ece", None, None]["value"] == pytest.approx(ece / len(y), abs=1e-5)
    acc = rows["accuracy", None, None]
    assert acc["value"] == pytest.approx((pred == y).mean())
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx(
        proportion_confint((pred == y).sum(), len(y), method="wilson"))
    e = rows["ece", None, None]
    assert e["ci_low"] <= e["value"] <= e["ci_high"]
    shifted = np.exp(arrays["shift/contrast/2/log_probs"].astype(np.float64))
    assert rows["accuracy", "contrast", 2]["value"] == pytest.approx(
        (shifted.argmax(1) == tiny_data.test.y.numpy()[arrays["shift/contrast/2/index"]]).mean())


def test_suite_shift_subset_and_no_bootstrap(fitted_models, tiny_data, tmp_path):
    model = fitted_models("deterministic")
    ctx = _run_suite(model, tiny_data, tmp_path, bootstrap=0, shifts=["contrast"], severities=[2],
                     shift_max_examples=100, shift_seed=3)
    shifted = [r for r in ctx.records if r["shift"] == "contrast"]
    assert len(shifted) == 7 and all(r["n"] == 100 for r in shifted)
    # without resampling only accuracy has an interval (Wilson needs no resampling)
    assert all((r["ci_low"] is None) == (r["metric"] != "accuracy" or r["shift"] == "mean") for r in ctx.records)
    assert "shift:contrast:2:seed3:n100" in ctx.prediction_keys


def test_suite_rejects_bad_parameters():
    from stf_eval.errors import ConfigError
    from stf_eval.params import parse_params
    from stf_eval.suites.calibration import Calibration

    with pytest.raises(ConfigError, match="shifts"):
        parse_params(Calibration.Params, {"shifts": ["fog"]}, "suites.calibration")
    with pytest.raises(ConfigError, match="severities"):
        parse_params(Calibration.Params, {"severities": [0, 6]}, "suites.calibration")
