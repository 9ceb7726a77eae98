"""Membership inference: metric cross-checks, attack behaviour on real and synthetic targets, the suite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_toml

from stf_eval.config import load_config
from stf_eval.context import EvalContext
from stf_eval.errors import ConfigError
from stf_eval.metrics import membership as mia
from stf_eval.metrics.names import METRICS
from stf_eval.models.base import ModelPlugin
from stf_eval.params import parse_params
from stf_eval.suites.membership import ATTACKS, REFERENCE_ATTACKS, Membership, complementary_halves

# -- metrics -----------------------------------------------------------------------------------------


def _brute_force(scores, is_member):
    """Independent ROC metrics: every threshold tried explicitly, AUC as the Mann-Whitney statistic."""
    pos, neg = scores[is_member], scores[~is_member]
    diff = pos[:, None] - neg[None, :]
    auc = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    thresholds = np.r_[np.inf, np.unique(scores)]
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    return auc, tpr, fpr


def test_metrics_agree_with_an_independent_computation():
    rng = np.random.default_rng(0)
    is_member = rng.random(700) < 0.6
    scores = np.round(rng.normal(size=700) + 0.7 * is_member, 1)  # rounding makes ties
    auc, tpr, fpr = _brute_force(scores, is_member)
    got = mia.summarize(scores, is_member)
    assert got["mia_auc"] == pytest.approx(auc, abs=1e-12)
    assert got["mia_balanced_accuracy"] == pytest.approx(((tpr + 1 - fpr) / 2).max(), abs=1e-12)
    for key, target in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
        assert got[key] == pytest.approx(tpr[fpr < target].max(), abs=1e-12)


def test_auc_interval_matches_the_bootstrap():
    rng = np.random.default_rng(1)
    is_member = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    scores = rng.normal(size=500) + 0.5 * is_member
    value = mia.auc(scores, is_member)
    low, high = mia.auc_interval(value, 300, 200)
    boot = []
    for _ in range(300):
        i = np.r_[rng.integers(0, 300, 300), 300 + rng.integers(0, 200, 200)]  # stratified resample
        boot.append(mia.auc(scores[i], is_member[i]))
    assert (high - low) / 2 == pytest.approx(1.96 * np.std(boot), rel=0.2)
    assert low < value < high


def test_tpr_at_fixed_fpr_hand_computed():
    # 10 non-members, 4 members. Sorted by score: m(0.95) n(0.9) m(0.8) m(0.7) n(0.6) m(0.5) n...
    members = np.array([0.95, 0.8, 0.7, 0.5])
    non_members = np.array([0.9, 0.6, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1])
    scores = np.r_[members, non_members]
    is_member = np.r_[np.ones(4, bool), np.zeros(10, bool)]
    fpr, tpr = mia.roc(scores, is_member)
    # FPR < 0.05 allows only the member above every non-member: TPR 1/4
    assert mia.tpr_at_fpr(fpr, tpr, 0.05) == 0.25  # no interpolation towards the next point
    # strict <: FPR 0.1 exactly (one non-member above the threshold) is not below 0.1
    assert mia.tpr_at_fpr(fpr, tpr, 0.1) == 0.25
    assert mia.tpr_at_fpr(fpr, tpr, 0.11) == 0.75  # members 0.95, 0.8, 0.7 above one non-member
    assert mia.tpr_at_fpr(fpr, tpr, 0.2) == 0.75
    assert mia.tpr_at_fpr(fpr, tpr, 0.21) == 1.0
    assert mia.best_balanced_accuracy(fpr, tpr) == pytest.approx((1.0 + 0.8) / 2)


def test_scores_on_known_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    logp, labels = np.log(probs), np.array([0, 0])
    assert mia.loss_score(logp, labels) == pytest.approx(np.log([0.7, 0.1]))
    assert mia.confidence_score(logp) == pytest.approx([0.7, 0.8])
    assert mia.logit_confidence(logp, labels) == pytest.approx(np.log([0.7 / 0.3, 0.1 / 0.9]))
    mentr0 = -(0.3 * np.log(0.7)) - (0.2 * np.log(0.8) + 0.1 * np.log(0.9))
    assert mia.modified_entropy_score(logp, labels)[0] == pytest.approx(-mentr0)
    # phi stays finite when p_y rounds to 1
    sharp = torch.log_softmax(torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float64), -1).numpy()
    assert np.isfinite(mia.logit_confidence(sharp, np.array([0])))[0]


def test_complementary_halves_give_every_example_half_in_half_out():
    mask = complementary_halves(101, 6, np.random.default_rng(0))
    assert set(mask.sum(axis=0)) == {3}
    assert abs(mask.sum(axis=1) - 50.5).max() <= 0.5


def _synthetic_lira_problem(n=2000, n_refs=16, seed=0):
    """Per-example difficulty dominates the raw confidence; membership adds a small shift to it."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3.0, n)
    shift, noise = 1.5, 0.5
    is_member = rng.random(n) < 0.5
    in_mask = complementary_halves(n, n_refs, rng)
    phi_refs = difficulty + shift * in_mask + rng.normal(0, noise, (n_refs, n))
    phi_target = difficulty + shift * is_member + rng.normal(0, noise, n)
    return phi_target, phi_refs, in_mask, is_member


def _binary_log_probs(phi):
    """log probabilities of [true class, other class] with log(p / (1 - p)) = phi."""
    return np.stack([-np.logaddexp(0, -phi), -np.logaddexp(0, phi)], axis=1)


def test_lira_and_rmia_beat_the_loss_threshold_when_difficulty_varies():
    phi_target, phi_refs, in_mask, is_member = _synthetic_lira_problem()
    labels = np.zeros(len(phi_target), dtype=int)
    logp = _binary_log_probs(phi_target)
    assert mia.logit_confidence(logp, labels) == pytest.approx(phi_target)
    loss = mia.summarize(mia.loss_score(logp, labels), is_member)
    fit = mia.fit_lira(phi_refs, in_mask, variance="per_example")
    offline = mia.summarize(mia.lira_offline(phi_target, fit), is_member)
    online = mia.summarize(mia.lira_online(phi_target, fit), is_member)
    p_true, p_refs = np.exp(logp[:, 0]), 1 / (1 + np.exp(-phi_refs))
    marginal = mia.rmia_marginal(p_refs, in_mask, offline=False, a=0.3)
    rmia = mia.summarize(mia.rmia_scores(p_true, marginal, p_true, marginal), is_member)
    assert loss["mia_auc"] < 0.7
    for strong in (offline, online, rmia):
        assert strong["mia_auc"] > loss["mia_auc"] + 0.15
        assert strong["tpr_at_1pct_fpr"] > loss["tpr_at_1pct_fpr"] + 0.05


def test_lira_variance_rules():
    _, phi_refs, in_mask, _ = _synthetic_lira_problem(n=300, n_refs=2)
    with pytest.raises(ValueError, match="per-example variance"):
        mia.fit_lira(phi_refs, in_mask, variance="per_example")
    fit = mia.fit_lira(phi_refs, in_mask, variance="global")
    assert fit.min_in == fit.min_out == 1 and np.all(fit.var_in == fit.var_in[0]) and fit.var_in[0] > 0
    _, phi_refs, in_mask, _ = _synthetic_lira_problem(n=300, n_refs=8)
    # pooled within-example variance recovers the noise variance (0.5^2), not the spread of difficulty
    assert mia.fit_lira(phi_refs, in_mask, variance="global").var_in[0] == pytest.approx(0.25, rel=0.15)


def test_rmia_offline_marginal_follows_the_paper_formula():
    p_refs = np.array([[0.9, 0.2], [0.5, 0.4]])
    in_mask = np.array([[True, False], [False, True]])
    got = mia.rmia_marginal(p_refs, in_mask, offline=True, a=0.5)
    assert got == pytest.approx([0.5 * (1.5 * 0.5 + 0.5), 0.5 * (1.5 * 0.2 + 0.5)])
    assert mia.rmia_marginal(p_refs, in_mask, offline=False, a=0.5) == pytest.approx([0.7, 0.3])


# -- the suite on real (tiny) targets -----------------------------------------------------------------

# 80 training digits, an MLP trained to near-zero loss: a clearly overfitted target
OVERFIT_TOML = (tiny_toml().replace("max_train = 600", "max_train = 80")
                .replace("max_test = 300", "max_test = 150")
                .replace('arch = "lenet"\noptions = { channels = [6, 12], hidden = 32 }',
                         'arch = "mlp"\noptions = { hidden = [128] }')
                .replace("epochs = 4", "epochs = 40").replace("batch_size = 64", "batch_size = 16"))


class ConstantModel(ModelPlugin):
    """Predicts the same (non-uniform) distribution for every input: no membership signal at all."""

    def fit(self, data):
        self.bias = torch.nn.Parameter(torch.linspace(0, 1, data.num_classes))
        self.record_stage("train", {"seconds": 0.0})
        return self

    def sample_logits(self, x, n_samples):
        return self.bias.expand(1, x.shape[0], -1) + 0 * x.flatten(1)[:, :1]

    def networks(self):
        return []


def _run_suite(model, data, tmp_path, build_like, seed=0, **params):
    suite = Membership(parse_params(Membership.Params, params, "membership"), "membership")
    ctx = EvalContext(model_name="target", model=model, data=data, seed=seed, run_dir=tmp_path,
                      device=torch.device("cpu"), build_like=build_like)
    ctx.suite = "membership"
    assert suite.skip_reason(model, data) is None
    suite.run(model, data, ctx)
    table = {(r["metric"], r["attack"]): r["value"] for r in ctx.records}
    return table, ctx


@pytest.fixture(scope="module")
def overfit(cache_dir):
    from stf_eval.cache import CheckpointCache
    from stf_eval.data.plan import build_data
    from stf_eval.runner import build_model

    cfg = load_config(text=OVERFIT_TOML, overrides=[f'cache_dir="{cache_dir}"'])
    data = build_data(cfg)
    cache, cpu = CheckpointCache(cfg.cache_dir), torch.device("cpu")
    spec = cfg.models[0]
    built = []

    def build_like(bundle, seed):
        built.append((bundle.train.fingerprint, seed))
        return build_model(spec, cfg, bundle, seed, cpu, cache)

    return data, build_like, built


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_target_design_detects_an_overfitted_model_and_a_constant_model_is_at_chance(overfit, tmp_path):
    data, build_like, _ = overfit
    target = build_like(data, 0)
    table, ctx = _run_suite(target, data, tmp_path, build_like, design="target", num_references=2)
    assert table[("generalization_gap", None)] > 0.05
    assert table[("mia_auc", "gap")] > 0.52  # the label-only floor sees the generalisation gap ...
    for attack in ATTACKS[1:]:  # ... and every score-based attack beats it
        assert table[("mia_auc", attack)] > max(0.62, table[("mia_auc", "gap")]), attack
    assert max(table[("mia_auc", a)] for a in ("lira_offline", "rmia_offline", "rmia_online")) > 0.75
    assert table[("tpr_at_1pct_fpr", "rmia_online")] > 0.05  # chance would be 0.01
    # 150 non-members cannot resolve FPR 0.1%: recorded empty, with the count that would be needed
    row = next(r for r in ctx.records if r["metric"] == "tpr_at_0.1pct_fpr" and r["attack"] == "loss")
    assert row["value"] is None and "needs >= 1001 non-members" in row["note"]
    assert all(metric in METRICS for metric, _ in table)
    assert [f["name"] for f in ctx.figures] == ["exposed", "roc"]
    assert all((tmp_path / f["path"]).stat().st_size for f in ctx.figures)
    draws = json.loads((tmp_path / "figures" / "membership--target--seed0--references.json").read_text())
    assert len(draws["references"]) == 2 and draws["references"][0]["seed"] == 1000

    import dataclasses

    from stf_eval.cache import CheckpointCache

    # its own (empty) cache: the real model's cached pool predictions must not stand in for it
    plain = dataclasses.replace(target.ctx, cache=CheckpointCache(None))

    def constant(bundle, seed):
        return ConstantModel(None, plain).fit(bundle)

    flat, flat_ctx = _run_suite(constant(data, 0), data, tmp_path, constant, design="target", num_references=2)
    for attack in ATTACKS:
        # LiRA and online RMIA divide the (identical) prediction out exactly; the others rank by class
        # only (offline RMIA's Pr(x) is a, not exactly, the reference prediction), so see the class mix
        exact = attack in ("lira_offline", "lira_online", "rmia_online")
        assert flat[("mia_auc", attack)] == pytest.approx(0.5, abs=1e-12 if exact else 0.08), attack
        assert flat[("tpr_at_1pct_fpr", attack)] == 0.0, attack
    # a model that has learnt nothing about its members cannot be shown to break any epsilon
    assert flat[("dp_audit_epsilon_lb", next(a for m, a in flat if m == "dp_audit_epsilon_lb"))] == 0.0


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_shared_design_targets_in_turn_and_the_saved_arrays_reproduce_the_records(overfit, tmp_path):
    from sklearn.metrics import roc_auc_score

    data, build_like, built = overfit
    suite = Membership(parse_params(Membership.Params, {"num_references": 3}, "membership"), "membership")
    planned = [(split.fingerprint, seed) for split, seed in suite.reference_builds("target", data, 0)]
    # the models do not depend on the cell seed: every cell seed shares them through the cache
    assert planned == [(split.fingerprint, seed) for split, seed in suite.reference_builds("target", data, 7)]
    assert len(planned) == 4
    target = build_like(data, 0)
    built.clear()
    table, ctx = _run_suite(target, data, tmp_path, build_like, num_references=3)
    assert built == planned  # the suite trains exactly what it declared to the plan
    rows = {(r["metric"], r["attack"]): r for r in ctx.records}
    assert rows[("mia_auc", "lira_online")]["n"] == 4
    assert rows[("mia_auc", "lira_online")]["ci_low"] < rows[("mia_auc", "lira_online")]["value"]
    assert rows[("mia_reference_seconds", None)]["n"] == 3  # references per target
    # the overfitted recipe leaks, beyond the label-only floor
    assert table[("mia_auc_pooled", "lira_offline")] > max(0.65, table[("mia_auc_pooled", "gap")])
    # another cell seed: the same models and pool predictions from the cache, the same numbers
    built.clear()
    again, _ = _run_suite(target, data, tmp_path / "again", build_like, seed=1, num_references=3)
    assert built == []
    assert {k: v for k, v in again.items() if k[0] not in ("mia_reference_seconds", "generalization_gap")} == \
        {k: v for k, v in table.items() if k[0] not in ("mia_reference_seconds", "generalization_gap")}
    # the gap attack is the floor: its balanced accuracy is 1/2 + the members' minus non-members' accuracy / 2
    ctx.suite = "membership"
    arrays = ctx.examples["membership"]
    assert arrays["references/in_mask"].shape == (4, len(arrays["pool/label"]))
    assert set(arrays["references/in_mask"].sum(0)) == {2}
    aucs, offline = [], []
    for r in range(4):
        member = arrays[f"target{r}/is_member"]
        assert (member == arrays["references/in_mask"][r]).all()
        aucs.append(roc_auc_score(member, arrays[f"target{r}/score/lira_online"]))
        # offline LiRA with one shared variance ranks by phi - mean of the OUT references' phi, over
        # the OUT references in use: the same count for every example (1 of the 3 others with 4 models)
        others = np.arange(4) != r
        phi, mask = arrays["references/phi"][others], arrays[f"target{r}/references/out_use"]
        assert not (mask & arrays["references/in_mask"][others]).any() and set(mask.sum(0)) == {1}
        assert set(arrays[f"target{r}/references/in_use"].sum(0)) == {1}
        mean_out = (phi * mask).sum(0) / mask.sum(0)
        offline.append(roc_auc_score(member, arrays[f"target{r}/phi"] - mean_out))
        correct = arrays[f"target{r}/score/gap"] == 1
        gap = correct[member].mean() - correct[~member].mean()
        assert mia.summarize(arrays[f"target{r}/score/gap"], member)["mia_balanced_accuracy"] == \
            pytest.approx(max(0.5 + gap / 2, 0.5))
    assert table[("mia_auc", "lira_online")] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert table[("mia_auc", "lira_offline")] == pytest.approx(np.mean(offline), abs=1e-4)
    # a memorising recipe breaks any small epsilon; the bound is recorded once, for the chosen attack
    audit = [r for r in ctx.records if r["metric"] == "dp_audit_epsilon_lb"]
    assert len(audit) == 1 and audit[0]["value"] > 0.5 and "Clopper-Pearson" in audit[0]["note"]
    top = arrays["exposure/top"]
    assert len(top) == 16 and arrays["exposure/score"][top[0]] == np.nanmax(arrays["exposure/score"])
    assert {f["name"] for f in ctx.figures} == {"exposed", "roc"}
    # the report's overlay and overlap table read the same arrays back
    from stf_eval.examples import write_examples
    from stf_eval.report.figures import exposed_overlap_table, membership_roc_overlay

    other = dict(arrays)
    other["exposure/top"] = arrays["exposure/top"][::-1].copy()
    other["exposure/top"][:8] = np.setdiff1d(np.arange(len(arrays["pool/label"])), arrays["exposure/top"])[:8]
    write_examples(tmp_path, "membership", "a", 0, arrays)
    write_examples(tmp_path, "membership", "b", 0, other)
    figure = membership_roc_overlay(tmp_path, "membership", ["a", "b"], {})
    assert figure is not None and figure.uri.startswith("data:image/svg+xml")
    table = exposed_overlap_table(tmp_path, "membership", ["a", "b"])
    assert [[c.text for c in row[1:]] for row in table.body] == [["1.00", "0.50"], ["0.50", "1.00"]]


def test_allow_list_and_small_pool_are_skipped_with_a_reason(fitted_models, tiny_data):
    model = fitted_models("deterministic")
    listed = Membership(parse_params(Membership.Params, {"models": ["stf_bnn"]}, "m"), "membership")
    assert "not in suites.membership.models" in listed.skip_reason(model, tiny_data)
    few = tiny_data.with_train(tiny_data.train.subset(np.arange(5)))
    few.test = tiny_data.test.subset(np.arange(10))
    assert "pool" in Membership().skip_reason(model, few)
    threshold_only = Membership(parse_params(Membership.Params, {"attacks": ["loss"]}, "m"))
    assert threshold_only.skip_reason(model, few) is None


@pytest.mark.parametrize("table, message", [
    ("num_references = 1", "num_references: expected an integer >= 3"),
    ("design = 'target'\nnum_references = 1", "num_references: expected an integer >= 2"),
    ("design = 'both'", "design"),
    ("audit_confidence = 1.0", "audit_confidence"),
    ("attacks = ['loss', 'lira']", "attacks: expected a non-empty list"),
    ("num_references_per_model = { deterministic = 1 }", "num_references_per_model.deterministic: expected"),
    ("rmia_a = 2.0", "rmia_a"),
])
def test_bad_membership_parameters_are_one_line_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        load_config(text=tiny_toml(suites=f"[suites.membership]\n{table}"))


def test_per_model_reference_count():
    params = {"num_references": 4, "num_references_per_model": {"deep_ensemble": 3, "full_bnn": 0}}
    suite = Membership(parse_params(Membership.Params, params, "m"))
    assert suite.num_references("deep_ensemble") == 3 and suite.num_references("stf_bnn") == 4
    assert suite.uses_references("stf_bnn") and not suite.uses_references("full_bnn")


def test_zero_references_runs_threshold_attacks_only(fitted_models, tiny_data, tmp_path):
    model = fitted_models("deterministic")

    def refuse(bundle, seed):
        raise AssertionError("no reference model may be built")

    params = {"num_references_per_model": {"target": 0}}
    table, ctx = _run_suite(model, tiny_data, tmp_path, refuse, **params)
    assert {a for _, a in table if a} == set(ATTACKS) - set(REFERENCE_ATTACKS)
    assert any("threshold attacks on the cell's own model only" in n["text"] for n in ctx.notes)


# -- the new pieces: resolution, gap, memberships, exposure, DP audit ----------------------------------


def test_fpr_resolution_states_how_many_non_members_a_point_needs():
    assert mia.fpr_resolution(1000, 0.001) == ("undefined", 0, 1001)  # strict <: zero false positives
    assert mia.fpr_resolution(1001, 0.001) == ("coarse", 1, 10001)
    assert mia.fpr_resolution(2250, 0.001) == ("coarse", 2, 10001)
    assert mia.fpr_resolution(10001, 0.001) == ("stable", 10, 0)
    assert mia.fpr_resolution(1500, 0.01) == ("stable", 14, 0)


def test_balanced_memberships_put_every_example_in_half_the_models():
    mask = mia.balanced_memberships(1000, 9, np.random.default_rng(0))
    assert set(mask.sum(axis=0)) == {4}
    assert abs(mask.sum(axis=1) / 1000 - 4 / 9).max() < 0.06


def test_equal_count_references_remove_the_membership_confound():
    # 4 models, each example IN for 2: for target 0, its members have 1 IN reference among the
    # other 3 and its non-members 2, so the count alone would reveal membership
    mask = mia.balanced_memberships(500, 4, np.random.default_rng(0))
    others = mask[1:]
    assert (others.sum(0)[mask[0]] == 1).all() and (others.sum(0)[~mask[0]] == 2).all()
    in_use, out_use = mia.equal_count_references(others, 1, 1, np.random.default_rng(1))
    assert set(in_use.sum(0)) == {1} and set(out_use.sum(0)) == {1}
    assert not (in_use & ~others).any() and not (out_use & others).any()
    with pytest.raises(ValueError, match="fewer than 2 IN"):
        mia.equal_count_references(others, 2, 1, np.random.default_rng(1))


def test_exposure_and_top_overlap():
    scores = np.array([[5.0, 1.0, 3.0, 9.0], [7.0, 2.0, 0.0, -9.0]])
    in_mask = np.array([[True, True, False, False], [True, False, True, False]])
    value = mia.exposure(scores, in_mask)
    assert value[:3] == pytest.approx([6.0, 1.0, 0.0]) and np.isnan(value[3])  # never a member: no exposure
    assert mia.top_exposed(value, 2).tolist() == [0, 1]
    assert mia.top_overlap([("train", 1), ("test", 2)], [("test", 2), ("train", 3)]) == 0.5


def test_dp_audit_bound_matches_a_hand_computation():
    # every member flagged, no non-member: Clopper-Pearson at 95% gives TPR_lo = 0.025^(1/n) and
    # FPR_hi = 1 - 0.025^(1/n), so eps_lb = log(TPR_lo / FPR_hi) (delta = 0)
    n = 100
    lo = 0.025 ** (1 / n)
    eps, form = mia.epsilon_lower_bound(n, n, 0, n, delta=0.0)
    assert form == "tpr/fpr" and eps == pytest.approx(np.log(lo / (1 - lo)), rel=1e-9)
    assert eps == pytest.approx(3.2813, abs=1e-4)
    # delta comes off the TPR side: log((TPR_lo - delta) / FPR_hi)
    assert mia.epsilon_lower_bound(n, n, 0, n, delta=0.1)[0] == pytest.approx(np.log((lo - 0.1) / (1 - lo)))
    # 40/100 members and 2/100 non-members flagged, against scipy's beta quantiles
    from scipy.stats import beta

    tpr_lo, fpr_hi = beta.ppf(0.025, 40, 61), beta.ppf(0.975, 3, 98)
    want = max(np.log(tpr_lo / fpr_hi), np.log((1 - fpr_hi) / (1 - tpr_lo)))
    assert mia.epsilon_lower_bound(40, 100, 2, 100, 0.0)[0] == pytest.approx(want, rel=1e-6)
    # the symmetric form wins when the attack finds non-members: few members flagged as non-members
    eps2, form2 = mia.epsilon_lower_bound(99, 100, 60, 100, 0.0)
    assert form2 == "tnr/fnr" and eps2 == pytest.approx(np.log((1 - beta.ppf(0.975, 61, 40))
                                                               / (1 - beta.ppf(0.025, 99, 2))), rel=1e-6)
    # the vectorised selection agrees with the scalar bound
    got = mia._bounds_vectorised([100, 40, 99], 100, [0, 2, 60], 100, 0.0, 0.95)
    assert got == pytest.approx([eps, want, eps2], rel=1e-6)


def test_dp_audit_memorising_scorer_gives_a_high_bound_and_a_random_one_zero():
    rng = np.random.default_rng(0)
    is_member = rng.random(4000) < 0.5
    select = rng.random(4000) < 0.5
    memorised = mia.dp_audit(is_member + 0.01 * rng.random(4000), is_member, select, delta=1e-5)
    assert memorised["eps_lb"] > 5.0 and memorised["fp"] == 0
    random = mia.dp_audit(rng.random(4000), is_member, select, delta=1e-5)
    assert random["eps_lb"] < 0.1
    assert random["n_members"] + random["n_non_members"] == (~select).sum()  # counted on the other half


def test_interval_over_targets():
    mean, low, high = mia.interval_over_targets([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((0.6, 0.6 - half, 0.6 + half))
