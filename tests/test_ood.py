"""OOD metrics cross-checked against direct computations; scores; OOD data sets; the suite end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stf_eval.metrics import ood


@pytest.fixture(scope="module")
def fixed():
    rng = np.random.default_rng(0)
    score_in = np.round(rng.normal(1.0, 1.0, size=300), 1)  # rounded: ties between and within groups
    score_out = np.round(rng.normal(0.0, 1.0, size=200), 1)
    return score_in, score_out


def _auroc_pairwise(score_in, score_out) -> float:
    """Mann-Whitney: P(in > out) + 0.5 P(in = out), over every pair."""
    diff = score_in[:, None] - score_out[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _aupr_direct(pos, neg) -> float:
    """Precision-recall curve at every distinct threshold, plus (recall 0, precision 1), trapezoid rule."""
    recall, precision = [0.0], [1.0]
    for t in np.unique(np.concatenate([pos, neg]))[::-1]:
        tp, fp = (pos >= t).sum(), (neg >= t).sum()
        recall.append(tp / len(pos))
        precision.append(tp / (tp + fp))
    return float(np.trapezoid(precision, recall))


def test_metrics_agree_with_direct_computations(fixed):
    score_in, score_out = fixed
    got = ood.ood_metrics(score_in, score_out)
    assert got["auroc"] == pytest.approx(_auroc_pairwise(score_in, score_out), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(_aupr_direct(score_in, score_out), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(_aupr_direct(-score_out, -score_in), abs=1e-12)
    threshold = np.sort(np.unique(score_in))[::-1]
    accept = next(t for t in threshold if (score_in >= t).mean() >= 0.95)
    assert got["fpr95"] == pytest.approx((score_out >= accept).mean(), abs=1e-12)


def test_auroc_agrees_with_scikit_learn_in_the_ood_positive_convention(fixed):
    from sklearn.metrics import roc_auc_score

    score_in, score_out = fixed
    y_out = np.r_[np.zeros(len(score_in)), np.ones(len(score_out))]
    assert ood.auroc(score_in, score_out) == pytest.approx(
        roc_auc_score(y_out, -np.r_[score_in, score_out]), abs=1e-12)


def test_fpr95_hand_computed():
    score_in = np.arange(1.0, 21.0)  # 20 in-distribution scores: accepting 19 of them needs t = 2
    score_out = np.array([0.5, 2.5, 5.5, 10.5, 19.5, 25.0])  # 5 of 6 lie at or above 2
    assert ood.fpr_at_tpr(score_in, score_out) == pytest.approx(5 / 6)
    assert ood.fpr_at_tpr(score_in, score_out - 30) == 0.0
    assert ood.fpr_at_tpr(score_in, score_out + 30) == 1.0


def test_uninformative_scores_get_auroc_one_half():
    same = np.full(50, 0.7)
    assert ood.auroc(same, np.full(80, 0.7)) == 0.5
    assert ood.fpr_at_tpr(same, np.full(80, 0.7)) == 1.0
    values = np.linspace(0, 1, 101)
    assert ood.auroc(values, values.copy()) == pytest.approx(0.5)


def test_perfect_separation():
    got = ood.ood_metrics(np.linspace(1, 2, 40), np.linspace(-1, 0.5, 30))
    assert got == pytest.approx({"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}, abs=1e-12)


def test_scores_are_higher_for_in_distribution_like_predictions():
    confident = torch.tensor([[[8.0, 0.0, 0.0]], [[8.0, 0.0, 0.0]]])  # S=2, N=1, agreeing and sure
    flat = torch.tensor([[[0.1, 0.0, 0.0]], [[0.0, 0.1, 0.0]]])
    disagree = torch.tensor([[[8.0, 0.0, 0.0]], [[0.0, 8.0, 0.0]]])  # sure but contradicting
    s_conf, s_flat, s_dis = (ood.ood_scores(t) for t in (confident, flat, disagree))
    for name in ("msp", "entropy", "energy"):
        assert s_conf[name][0] > s_flat[name][0], name
    assert s_conf["mutual_information"][0] > s_dis["mutual_information"][0]
    assert s_conf["mutual_information"][0] == pytest.approx(0.0, abs=1e-9)
    single = ood.ood_scores(torch.randn(1, 5, 4))
    assert np.allclose(single["mutual_information"], 0.0)


# -- OOD data sets -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["uniform_noise", "gaussian_noise", "photo_crops"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_synthetic_ood_sets(name, shape):
    from stf_eval.errors import DataError
    from stf_eval.registry import DATASETS

    cls = DATASETS.get(name)
    assert cls.ood_only
    a = cls().load(like=shape, size=30, seed=3)
    assert a.x.shape == (30, *shape) and a.x.min() >= 0 and a.x.max() <= 1
    assert torch.equal(a.x, cls().load(like=shape, size=30, seed=3).x)
    assert not torch.equal(a.x, cls().load(like=shape, size=30, seed=4).x)
    assert float(a.x.std()) > 0.05
    with pytest.raises(DataError, match="OOD-only"):
        cls().load(size=5)


def test_rotated_digits_never_use_test_examples_or_excluded_classes(tiny_data):
    ood_set = tiny_data.ood["rotated_digits"]
    assert ood_set.group == "near" and ood_set.x.shape[1:] == tiny_data.test.x.shape[1:]
    pool_x = torch.cat([tiny_data.train.x, tiny_data.val.x])
    pool_y = torch.cat([tiny_data.train.y, tiny_data.val.y])
    pool = {bytes(im.numpy().tobytes()): int(c) for im, c in zip(pool_x, pool_y)}
    test = {bytes(im.numpy().tobytes()) for im in tiny_data.test.x}
    for im in ood_set.x:
        undone = [torch.rot90(im, k, dims=(1, 2)).contiguous().numpy().tobytes() for k in (1, -1)]
        sources = [u for u in undone if u in pool]
        assert sources, "every rotated digit comes from the train/val pool"
        assert pool[sources[0]] not in (0, 1, 8)
        assert not any(u in test for u in undone), "never a test digit"


def test_rotated_digits_need_the_data_plan():
    from stf_eval.errors import DataError
    from stf_eval.registry import DATASETS

    with pytest.raises(DataError, match="data plan"):
        DATASETS.get("rotated_digits")().load(like=(1, 8, 8), size=5)


# -- the suite -----------------------------------------------------------------------------------

def test_suite_records_per_set_and_group_means(fitted_models, tiny_data, tmp_path):
    from stf_eval.context import EvalContext
    from stf_eval.suites.ood import OodDetection

    model = fitted_models("deterministic")
    suite = OodDetection(name="ood")
    ctx = EvalContext(model_name="m", model=model, data=tiny_data, seed=0, run_dir=tmp_path, device=model.device)
    ctx.suite = "ood"
    suite.run(model, tiny_data, ctx)
    rows = {(r["metric"], r["ood_set"], r["score"]): r for r in ctx.records}
    scores = ("msp", "entropy", "energy")  # mutual information is 0 for S = 1: not recorded
    assert {k[2] for k in rows} == set(scores)
    id_scores = ood.ood_scores(ctx.samples("test"))
    for score in scores:
        for set_name, group in (("uniform_noise", "far"), ("rotated_digits", "near")):
            out_scores = ood.ood_scores(ctx.samples(f"ood:{set_name}"))
            expected = ood.ood_metrics(id_scores[score], out_scores[score])
            for metric, value in expected.items():
                row = rows[metric, set_name, score]
                assert row["value"] == pytest.approx(value) and row["group"] == group and row["n"] == 100
                assert rows[metric, f"{group}_mean", score]["value"] == pytest.approx(value)  # one set each
    assert all(0.0 <= r["value"] <= 1.0 and math.isfinite(r["value"]) for r in ctx.records)
    assert [f["name"] for f in ctx.figures] == ["scores"]
    assert any("positive" in n["text"] for n in ctx.notes)


def test_auroc_recomputed_from_the_saved_scores(fitted_models, tiny_data, tmp_path):
    """An OOD AUROC record recomputed by sklearn from the saved per-example scores; its DeLong interval
    contains it, and the near/far group means have one too."""
    from sklearn.metrics import roc_auc_score

    from stf_eval.context import EvalContext
    from stf_eval.examples import load_examples, write_examples
    from stf_eval.suites.ood import OodDetection

    model = fitted_models("deterministic")
    ctx = EvalContext(model_name="m", model=model, data=tiny_data, seed=0, run_dir=tmp_path, device=model.device)
    ctx.suite = "ood"
    OodDetection(name="ood").run(model, tiny_data, ctx)
    write_examples(tmp_path, "ood", "m", 0, ctx.examples["ood"])
    arrays = load_examples(tmp_path, suite="ood", model="m", seed=0)["ood", "m", 0]
    rows = {(r["metric"], r["ood_set"], r["score"]): r for r in ctx.records}
    for set_name in ("uniform_noise", "rotated_digits"):
        s_in, s_out = arrays["test/score/entropy"], arrays[f"ood/{set_name}/score/entropy"]
        assert s_in.dtype == np.float32 and len(s_out) == 100
        assert arrays[f"ood/{set_name}/log_probs"].shape == (100, 10)
        y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
        row = rows["auroc", set_name, "entropy"]
        assert row["value"] == pytest.approx(roc_auc_score(y, np.r_[s_in, s_out]), abs=1e-4)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    for group in ("near_mean", "far_mean"):
        row = rows["auroc", group, "entropy"]
        assert row["ci_low"] <= row["value"] <= row["ci_high"]


def test_suite_skips_without_ood_sets(fitted_models, tiny_data):
    from dataclasses import replace

    from stf_eval.suites.ood import OodDetection

    assert "no OOD sets" in OodDetection().skip_reason(None, replace(tiny_data, ood={}))
    assert OodDetection().skip_reason(None, tiny_data) is None
