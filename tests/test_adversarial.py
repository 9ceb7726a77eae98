"""The adversarial suite on tiny digits: robust <= clean, eps 0, an independent PGD, EOT, sanity checks."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stf_eval import attacks
from stf_eval.context import EvalContext
from stf_eval.errors import ConfigError
from stf_eval.models.base import ModelPlugin
from stf_eval.params import parse_params
from stf_eval.registry import MODELS, SUITES


def _suite(**overrides):
    cls = SUITES.get("adversarial")
    return cls(parse_params(cls.Params, {**cls.tiny, **overrides}, "adversarial"), "adversarial")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine two threads make these tiny passes ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(model, data, tmp_path, name="m", **overrides) -> EvalContext:
    ctx = EvalContext(model_name=name, model=model, data=data, seed=0, run_dir=tmp_path, device=model.device)
    ctx.suite = "adversarial"
    torch.manual_seed(0)
    _suite(**overrides).run(model, data, ctx)
    return ctx


def _rows(ctx, metric, **where):
    return [r for r in ctx.records if r["metric"] == metric and all(r[k] == v for k, v in where.items())]


def _check(ctx, name) -> dict:
    (row,) = _rows(ctx, "sanity_check", attack=name)
    return row


# -- stand-ins: a stochastic model built on the fitted deterministic net -----------------------------
@dataclass(frozen=True)
class _NoisyParams:
    test_samples: int = 4


class _DropoutStandIn(ModelPlugin):
    """Dropout on the hidden layer with F.dropout(training=True): samples in eval mode, as required."""

    Params = _NoisyParams
    stochastic = True

    def __init__(self, base: ModelPlugin, p: float = 0.3):
        super().__init__(None, base.ctx)
        self.net, self.p = base.net, p
        self.base_copy = copy.deepcopy(base.net).eval()  # a different network for the transfer check

    def hidden(self, x):
        return self.net[:-1](x)

    def sample_logits(self, x, n_samples):
        h = self.hidden(x).unsqueeze(0).expand(n_samples, *x.shape[:1], -1)
        return self.net[-1](F.dropout(h, self.p, training=True))

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.base_copy


class _QuantisedInput(ModelPlugin):
    """Rounds its input to 4 grey levels first: gradients vanish (masking), gradients_nonzero must fail."""

    stochastic = False

    def __init__(self, base: ModelPlugin):
        super().__init__(None, base.ctx)
        self.net = base.net

    def sample_logits(self, x, n_samples):
        return self.net(torch.round(x * 3) / 3).unsqueeze(0)

    def networks(self):
        return [self.net]


class _RandomOnlyAtEvaluation(_DropoutStandIn):
    """Samples only without gradients: evaluation is random, the attack sees a fixed model."""

    def sample_logits(self, x, n_samples):
        h = self.hidden(x).unsqueeze(0).expand(n_samples, *x.shape[:1], -1)
        return self.net[-1](F.dropout(h, self.p, training=not torch.is_grad_enabled()))


class _MaskedWithBase(_QuantisedInput):
    def deterministic_base(self):
        return self.net


SOUND_CHECKS = {"sampling_under_attack", "converged_in_steps", "noise_weaker_than_pgd", "pgd_at_least_fgsm",
                "accuracy_falls_with_eps", "gradient_norm_vs_base", "gradient_free_not_stronger"}


# -- tests --------------------------------------------------------------------------------------------
def test_robust_accuracy_below_clean_and_equal_at_eps_zero(fitted_models, tiny_data, tmp_path):
    ctx = _run(fitted_models("deterministic"), tiny_data, tmp_path)
    (clean,) = _rows(ctx, "clean_accuracy")
    assert clean["value"] > 0.3
    for attack in ("fgsm", "pgd"):
        rows = {r["eps"]: r for r in _rows(ctx, "robust_accuracy", attack=attack)}
        assert set(rows) == {0.0, 0.1, 0.3}
        assert rows[0.0]["value"] == clean["value"]
        assert all(r["value"] <= clean["value"] for r in rows.values())
        assert rows[0.3]["value"] < rows[0.1]["value"] < clean["value"]
        assert all(r["n"] == 48 and r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows.values())
    union = {r["eps"]: r["value"] for r in _rows(ctx, "robust_accuracy", attack="union")}
    for eps, value in union.items():
        assert value <= min(r["value"] for r in _rows(ctx, "robust_accuracy", eps=eps) if r["attack"] != "union")
    checks = {r["attack"]: r for r in _rows(ctx, "sanity_check")}
    assert set(checks) == SOUND_CHECKS, set(checks)  # fixed predictive: converged_in_samples is a note
    assert all(r["value"] == 1.0 for r in checks.values()), [r for r in checks.values() if r["value"] != 1.0]
    assert "ratio 1 " in checks["gradient_norm_vs_base"]["note"]  # the base is the attacked net itself
    assert any("converged_in_samples not run" in n["text"] for n in ctx.notes)
    scores = {r["score"] for r in _rows(ctx, "adv_detection_auroc")}
    assert scores == {"msp", "entropy", "energy"}  # mutual information is 0 for one sample: left out
    assert {f["name"] for f in ctx.figures} == {"robust_accuracy_vs_eps", "examples"}


def test_sanity_check_seeds_leave_other_cells_without_checks_and_their_numbers_unchanged(
        fitted_models, tiny_data, tmp_path):
    model = fitted_models("deterministic")
    cheap = dict(attacks=["fgsm"], eps=[0.1], noise_baseline=False, transfer_check=False, example_pairs=0)
    elsewhere = _run(model, tiny_data, tmp_path / "a", sanity_check_seeds=[1], **cheap)  # the cell is seed 0
    assert not _rows(elsewhere, "sanity_check")
    assert any("sanity checks not run in this cell" in n["text"] and "seed(s) 1" in n["text"] for n in elsewhere.notes)
    off = _run(model, tiny_data, tmp_path / "b", sanity_checks=False, **cheap)
    assert elsewhere.records == off.records
    here = _run(model, tiny_data, tmp_path / "c", sanity_check_seeds=[0, 1], **cheap)
    assert _rows(here, "sanity_check")


def test_detection_auroc_uses_successful_adversarials_only(fitted_models, tiny_data, tmp_path):
    ctx = _run(fitted_models("deterministic"), tiny_data, tmp_path, attacks=["pgd"], eps=[0.1],
               sanity_checks=False, noise_baseline=False, example_pairs=0)
    ex = ctx.examples["adversarial"]
    ok = ex["clean/pred"] == ex["label"]
    flipped = int((ok & ~ex["pgd/0.1/correct"][0]).sum())
    rows = _rows(ctx, "adv_detection_auroc", attack="pgd", eps=0.1)
    assert rows and all(r["n"] == flipped for r in rows) and 0 < flipped < int(ok.sum())
    from sklearn.metrics import roc_auc_score

    from stf_eval.metrics.predictive import mean_probs
    clean = ctx.samples("test")[:, torch.as_tensor(ex["index"])]
    (msp,) = [r for r in rows if r["score"] == "msp"]
    # recompute: the first re-evaluation of the adversarial inputs is the memoised adversarial prediction
    adv_key = [k for k in ctx.prediction_keys if k.startswith("adversarial:adversarial:pgd@0.1")][0]
    adv = ctx._predictions[adv_key]
    flip = ok & ~ex["pgd/0.1/correct"][0]
    scores = np.r_[-mean_probs(clean[:, ok]).max(1), -mean_probs(adv[:, flip]).max(1)]
    labels = np.r_[np.zeros(ok.sum()), np.ones(flip.sum())]
    assert msp["value"] == pytest.approx(roc_auc_score(labels, scores))


def test_per_example_arrays_recompute_robust_and_union_accuracy(fitted_models, tiny_data, tmp_path):
    model = _DropoutStandIn(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, sanity_checks=False, example_pairs=0)
    ex = ctx.examples["adversarial"]
    assert ex["index"].dtype == np.int32 and ex["label"].dtype == np.int16 and ex["clean/pred"].dtype == np.int16
    label = ex["label"].astype(np.int64)
    for row in _rows(ctx, "robust_accuracy"):
        key = f"{row['attack']}/{row['eps']:g}"
        if row["attack"] == "union":
            assert ex[f"{key}/correct"].shape == (48,)
            names = {k.split("/")[0] for k in ex if k.endswith(f"/{row['eps']:g}/pred")}
            # independent: survive = predicted the label in every re-evaluation of every attack
            survive = np.logical_and.reduce([(ex[f"{a}/{row['eps']:g}/pred"] == label).all(axis=0) for a in names])
            assert row["value"] == pytest.approx(survive.mean())
            assert np.array_equal(survive, ex[f"{key}/correct"])
        else:
            pred = ex[f"{key}/pred"]
            assert pred.dtype == np.int16 and pred.shape == (2, 48)  # R = 2 re-evaluations
            assert row["value"] == pytest.approx(np.mean([np.mean(p == label) for p in pred]))
    assert {"fgsm", "pgd", "noise", "pgd_transfer", "union"} <= {r["attack"] for r in _rows(ctx, "robust_accuracy")}


@pytest.mark.parametrize("check, args", [
    ("not_beaten", ("converged_in_steps", 0.60, 0.30, 100, "PGD")),
    ("gradient_ratio", (np.full(10, 2e-5), np.full(10, 0.5), 0.01)),
    ("gradient_ratio", (np.array([1.0, np.nan]), np.ones(2), 0.01)),
    ("noise_weaker", (0.3, 0.40, 0.40, 100)),
    ("gradient_free_not_stronger", (0.1, 0.10, 0.50, 50, 1000)),
    ("falls_with_eps", ([0.0, 0.1, 0.3], [0.9, 0.3, 0.6], 100, 0.1)),
    ("falls_with_eps", ([0.0, 0.1, 0.3], [0.9, 0.5, 0.4], 100, 0.1)),
    # a rise judged on the previous point's own n: 0.36 is above 0.30's interval over 500 examples
    ("falls_with_eps", ([0.0, 0.1, 0.2], [0.9, 0.30, 0.36], [500, 500, 50], 0.4)),
    ("sampling_under_attack", (0.2, 0.0, 1e-6)),
    ("pgd_at_least_fgsm", ([0.1], [0.5], [0.2], 100)),
    ("transfer_not_stronger", ([0.1], [0.1], [0.5], 100)),
])
def test_each_check_fails_on_numbers_that_should_fail_it(check, args):
    from stf_eval.suites import adversarial_checks

    assert not getattr(adversarial_checks, check)(*args).passed


@pytest.mark.parametrize("check, args", [
    ("not_beaten", ("converged_in_samples", 0.742, 0.724, 100, "PGD")),
    ("gradient_ratio", (np.full(10, 0.3), np.full(10, 0.5), 0.01)),
    ("noise_weaker", (0.3, 0.8, 0.1, 100)),
    ("gradient_free_not_stronger", (0.1, 0.45, 0.50, 50, 1000)),
    ("falls_with_eps", ([0.0, 0.1, 0.3], [0.9, 0.5, 0.0], 100, 0.1)),
    ("falls_with_eps", ([0.0, 0.1, 0.2, 0.5], [0.9, 0.5, 0.3, 0.06], [500, 500, 500, 50], 0.1)),
    # ... and 0.36 is inside 0.30's interval over 50 examples
    ("falls_with_eps", ([0.0, 0.1, 0.2], [0.9, 0.30, 0.36], [500, 50, 50], 0.4)),
    ("sampling_under_attack", (0.2, 0.2, 1e-6)),
    ("sampling_under_attack", (0.0, 0.0, 1e-6)),
    ("transfer_not_stronger", ([0.3], [0.0], [0.0], 100)),  # 0 vs 0 (the Wilson bound at k = 0 is 7e-18)
    ("gradient_free_not_stronger", (0.3, 0.0, 0.0, 50, 1000)),
])
def test_each_check_passes_on_sound_numbers(check, args):
    from stf_eval.suites import adversarial_checks

    assert getattr(adversarial_checks, check)(*args).passed


def test_masked_gradients_fail_the_gradient_norm_check(fitted_models, tiny_data, tmp_path):
    model = _MaskedWithBase(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, attacks=["pgd"], eps=[0.1, 0.3], transfer_check=False, example_pairs=0)
    row = _check(ctx, "gradient_norm_vs_base")
    assert row["value"] == 0.0 and "ratio 0" in row["note"], row
    # zero gradients: Square finds what PGD misses, PGD is no better than noise and does not reach 0
    for name in ("gradient_free_not_stronger", "noise_weaker_than_pgd", "accuracy_falls_with_eps"):
        assert _check(ctx, name)["value"] == 0.0, _check(ctx, name)


def test_random_only_at_evaluation_fails_sampling_under_attack(fitted_models, tiny_data, tmp_path):
    model = _RandomOnlyAtEvaluation(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, attacks=["fgsm"], eps=[0.1], square_queries=0,
               transfer_check=False, example_pairs=0)
    assert _check(ctx, "sampling_under_attack")["value"] == 0.0


def test_too_few_steps_fail_converged_in_steps(fitted_models, tiny_data, tmp_path):
    ctx = _run(fitted_models("deterministic"), tiny_data, tmp_path, attacks=["pgd"], eps=[0.1], pgd_steps=1,
               pgd_step_scale=0.3, pgd_random_start=False, check_steps_factor=10, check_restarts=2,
               square_queries=0, example_pairs=0)
    row = _check(ctx, "converged_in_steps")
    assert row["value"] == 0.0, row


def _reference_pgd(net, x, y, eps, steps, alpha, start):
    """Independent L-inf PGD on the network's logits (no torchattacks)."""
    x_adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return float((net(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_independent_pgd(fitted_models, tiny_data, random_start):
    model = fitted_models("deterministic")
    x, y = tiny_data.test.x[:128], tiny_data.test.y[:128]
    eps, steps = 0.1, 10
    settings = attacks.AttackSettings(steps=steps, random_start=random_start, batch_size=128)
    torch.manual_seed(0)
    ours = attacks.run("pgd", model.predictive(), x, y, eps, settings)
    with torch.no_grad():
        ours_acc = float((model.net(ours).argmax(1) == y).float().mean())
    torch.manual_seed(0)  # the same uniform start as torchattacks draws
    start = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    ref_acc = _reference_pgd(model.net.eval(), x, y, eps, steps, 2.5 * eps / steps, start)
    assert (ours - x).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    assert abs(ours_acc - ref_acc) <= 0.02, (ours_acc, ref_acc)
    with torch.no_grad():
        clean_acc = float((model.net(x).argmax(1) == y).float().mean())
    assert ours_acc < clean_acc - 0.1  # the attack does something


def _spy_during_attack(model, x, y):
    """Run torchattacks PGD on the predictive; per forward pass: were the nets in eval, did it sample?"""
    pred = model.predictive(2)
    seen = []

    def hook(module, inputs, output):
        with torch.no_grad():
            two = model.sample_logits(inputs[0][:8].detach(), 2)
        nets_eval = not any(m.training for net in model.networks() for m in net.modules())
        seen.append((nets_eval, bool((two[0] - two[1]).abs().max() > 0)))

    pred.train()  # torchattacks must switch it to eval itself
    handle = pred.register_forward_hook(hook)
    try:
        attacks.run("pgd", pred, x, y, 0.1, attacks.AttackSettings(steps=3, batch_size=32))
    finally:
        handle.remove()
    return seen


def test_stochastic_stand_in_keeps_sampling_under_attack(fitted_models, tiny_data, tmp_path):
    model = _DropoutStandIn(fitted_models("deterministic"))
    seen = _spy_during_attack(model, tiny_data.test.x[:32], tiny_data.test.y[:32])
    assert len(seen) == 3 and all(nets_eval and sampled for nets_eval, sampled in seen), seen

    ctx = _run(model, tiny_data, tmp_path)
    assert _check(ctx, "sampling_under_attack")["value"] == 1.0
    assert "attack S 2 vs 4" in _check(ctx, "converged_in_samples")["note"]
    stds = _rows(ctx, "robust_accuracy_std", attack="pgd", eps=0.1)
    assert len(stds) == 1 and stds[0]["value"] >= 0.0
    (clean,) = _rows(ctx, "clean_accuracy")
    for row in _rows(ctx, "robust_accuracy", attack="pgd"):
        assert row["value"] <= clean["value"] + 0.05  # stochastic: eps 0 re-evaluations differ by noise
    assert {r["score"] for r in _rows(ctx, "adv_detection_auroc")} >= {"mutual_information", "entropy"}
    transfer = _rows(ctx, "robust_accuracy", attack="pgd_transfer")
    assert {r["eps"] for r in transfer} == {0.1, 0.3}  # the base copy is a different network
    assert _check(ctx, "transfer_not_stronger")["value"] in (0.0, 1.0)


def test_mc_dropout_keeps_sampling_under_attack(fitted_models, tiny_data, tmp_path):
    if "mc_dropout" not in MODELS.names():
        pytest.skip("model plugin 'mc_dropout' is not registered yet (stf_eval/models/mc_dropout.py)")
    model = fitted_models("mc_dropout")
    assert model.stochastic
    seen = _spy_during_attack(model, tiny_data.test.x[:32], tiny_data.test.y[:32])
    assert seen and all(nets_eval and sampled for nets_eval, sampled in seen), seen
    ctx = _run(model, tiny_data, tmp_path, attacks=["pgd"], eps=[0.1], square_queries=0)
    assert _check(ctx, "sampling_under_attack")["value"] == 1.0


@pytest.mark.parametrize("bad", ["eps = [0.1, 2.0]", "pgd_steps = 0", "attacks = ['cw']",
                                 "detection_scores = ['margin']", "attack_samples = 0"])
def test_bad_settings_are_one_line_errors(bad):
    import tomllib

    cls = SUITES.get("adversarial")
    with pytest.raises(ConfigError, match=r"^suites\.adversarial\.\w+"):
        parse_params(cls.Params, tomllib.loads(bad), "suites.adversarial")


def test_autoattack_option_runs(fitted_models, tiny_data, tmp_path):
    # at eps 0.3 APGD, AutoAttack's first stage, fools every example and the rest is skipped: cheap
    ctx = _run(fitted_models("deterministic"), tiny_data, tmp_path, attacks=["pgd", "autoattack"], eps=[0.3],
               n_examples=16, square_queries=0, sanity_checks=False, example_pairs=0)
    (pgd,) = _rows(ctx, "robust_accuracy", attack="pgd", eps=0.3)
    (auto,) = _rows(ctx, "robust_accuracy", attack="autoattack", eps=0.3)
    assert auto["value"] <= pgd["value"] + 1 / 16
    assert any("AutoAttack version 'standard'" in n["text"] for n in ctx.notes)


def test_autoattack_rand_for_a_random_predictive(fitted_models, tiny_data, tmp_path):
    model = _DropoutStandIn(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, attacks=["autoattack"], eps=[0.3], n_examples=8,
               sanity_checks=False, example_pairs=0, noise_baseline=False, transfer_check=False)
    assert any("AutoAttack version 'rand'" in n["text"] for n in ctx.notes)
    (auto,) = _rows(ctx, "robust_accuracy", attack="autoattack", eps=0.3)
    assert auto["value"] <= 0.5


@pytest.mark.parametrize("name", ["pgd", "square", "noise", "autoattack"])
def test_attacks_are_history_independent_and_leave_the_global_rng_alone(fitted_models, tiny_data, name):
    model = _DropoutStandIn(fitted_models("deterministic"))
    pred = model.predictive(2)
    x, y = tiny_data.test.x[:8], tiny_data.test.y[:8]
    s = attacks.AttackSettings(steps=3, batch_size=8, square_queries=20, seed=7)
    runs = []
    for state in (1, 2):
        torch.manual_seed(state)
        before = torch.get_rng_state()
        runs.append(attacks.run(name, pred, x, y, 0.3 if name == "autoattack" else 0.1, s, purpose=("t",)))
        assert torch.equal(torch.get_rng_state(), before)  # the attack's reseeding did not leak out
    assert torch.equal(runs[0], runs[1])  # the same draws whatever the global state was
    other = attacks.run(name, pred, x, y, 0.1, dataclasses.replace(s, seed=8), purpose=("t",))
    assert name == "autoattack" or not torch.equal(other, runs[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["square", "autoattack"])
def test_attack_reseeding_does_not_leak_into_the_model_devices_generator(fitted_models, tiny_data, name):
    """Square and AutoAttack call torch.cuda.manual_seed; the fork is on the model's device (inputs on CPU)."""
    model = _DropoutStandIn(fitted_models("deterministic"))
    pred = model.predictive(2).to("cuda")
    x, y = tiny_data.test.x[:8], tiny_data.test.y[:8]  # on the CPU, as the suite hands them over
    try:
        torch.cuda.manual_seed(123)
        before = torch.cuda.get_rng_state()
        attacks.run(name, pred, x, y, 0.3, attacks.AttackSettings(steps=2, batch_size=8, square_queries=20))
        assert torch.equal(torch.cuda.get_rng_state(), before)
    finally:
        pred.to("cpu")  # the network is shared with the other tests
