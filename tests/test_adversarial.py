"""The adversarial suite on tiny digits: robust <= clean, eps 0, an independent PGD, EOT, sanity checks."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stf_eval import attacks
from stf_eval.context import EvalContext
from stf_eval.errors import ConfigError
from stf_eval.models.base import ModelPlugin
from stf_eval.params import parse_params
from stf_eval.registry import MODELS, SUITES


def _suite(**overrides):
    cls = SUITES.get("adversarial")
    return cls(parse_params(cls.Params, {**cls.tiny, **overrides}, "adversarial"), "adversarial")


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


class _BrokenStandIn(_DropoutStandIn):
    """Declares itself stochastic but uses nn.Dropout, which switches off under eval(): EOT must fail."""

    def __init__(self, base):
        super().__init__(base)
        self.dropout = nn.Dropout(self.p)

    def sample_logits(self, x, n_samples):
        h = self.hidden(x).unsqueeze(0).expand(n_samples, *x.shape[:1], -1)
        return self.net[-1](self.dropout(h))

    def networks(self):
        return [self.net, self.dropout]


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


# -- tests --------------------------------------------------------------------------------------------
def test_robust_accuracy_below_clean_and_equal_at_eps_zero(fitted_models, tiny_data, tmp_path):
    ctx = _run(fitted_models("deterministic"), tiny_data, tmp_path)
    (clean,) = _rows(ctx, "clean_accuracy")
    assert clean["value"] > 0.3
    for attack in ("fgsm", "pgd"):
        rows = {r["eps"]: r["value"] for r in _rows(ctx, "robust_accuracy", attack=attack)}
        assert set(rows) == {0.0, 0.1, 0.3}
        assert rows[0.0] == clean["value"]
        assert all(v <= clean["value"] for v in rows.values())
        assert rows[0.3] < rows[0.1] < clean["value"]
    for name in ("accuracy_falls_at_large_eps", "pgd_at_least_fgsm", "gradients_nonzero", "eot_in_use"):
        assert _check(ctx, name)["value"] == 1.0, _check(ctx, name)
    assert not _rows(ctx, "sanity_check", attack="transfer_not_stronger")  # base is the attacked net
    assert any("transfer_not_stronger skipped" in n["text"] for n in ctx.notes)
    scores = {r["score"] for r in _rows(ctx, "adv_detection_auroc")}
    assert scores == {"msp", "entropy", "energy"}  # mutual information is 0 for one sample: left out
    assert {f["name"] for f in ctx.figures} == {"robust_accuracy_vs_eps", "examples"}


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
    assert _check(ctx, "eot_in_use")["value"] == 1.0
    stds = _rows(ctx, "robust_accuracy_std", attack="pgd", eps=0.1)
    assert len(stds) == 1 and stds[0]["value"] >= 0.0
    (clean,) = _rows(ctx, "clean_accuracy")
    for row in _rows(ctx, "robust_accuracy", attack="pgd"):
        assert row["value"] <= clean["value"] + 0.05  # stochastic: eps 0 re-evaluations differ by noise
    assert {r["score"] for r in _rows(ctx, "adv_detection_auroc")} >= {"mutual_information", "entropy"}
    transfer = _rows(ctx, "robust_accuracy", attack="pgd_transfer")
    assert {r["eps"] for r in transfer} == {0.1, 0.3}  # the base copy is a different network
    assert _check(ctx, "transfer_not_stronger")["value"] in (0.0, 1.0)


def test_eot_check_fails_when_eval_switches_sampling_off(fitted_models, tiny_data, tmp_path):
    model = _BrokenStandIn(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, attacks=["fgsm"], eps=[0.1], square_queries=0,
               transfer_check=False)
    row = _check(ctx, "eot_in_use")
    assert row["value"] == 0.0 and "stop sampling in eval()" in row["note"]
    assert not _rows(ctx, "robust_accuracy_std", attack="fgsm")[0]["value"]  # treated as fixed: R = 1


def test_gradients_check_fails_on_masked_gradients(fitted_models, tiny_data, tmp_path):
    model = _QuantisedInput(fitted_models("deterministic"))
    ctx = _run(model, tiny_data, tmp_path, attacks=["fgsm"], eps=[0.1])
    assert _check(ctx, "gradients_nonzero")["value"] == 0.0


def test_mc_dropout_keeps_sampling_under_attack(fitted_models, tiny_data, tmp_path):
    if "mc_dropout" not in MODELS.names():
        pytest.skip("model plugin 'mc_dropout' is not registered yet (stf_eval/models/mc_dropout.py)")
    model = fitted_models("mc_dropout")
    assert model.stochastic
    seen = _spy_during_attack(model, tiny_data.test.x[:32], tiny_data.test.y[:32])
    assert seen and all(nets_eval and sampled for nets_eval, sampled in seen), seen
    ctx = _run(model, tiny_data, tmp_path, attacks=["pgd"], eps=[0.1], square_queries=0)
    assert _check(ctx, "eot_in_use")["value"] == 1.0


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
