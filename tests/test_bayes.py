"""Variational layers, the converter, KL and the S-sample pass (stf_eval.bayes)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stf_eval.bayes import (
    ElboLoss,
    VariationalConv2d,
    VariationalInit,
    VariationalLinear,
    convert,
    distribution_param_count,
    estimating,
    kl_divergence,
    sample_logits,
    trace_call_order,
    variational_layers,
)
from stf_eval.errors import ConfigError
from stf_eval.nets.common import Normalize
from stf_eval.nets.lenet import lenet
from stf_eval.training import fit


def small_net(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return lenet((1, 8, 8), 10, [0.3], [0.4], channels=(4, 8), hidden=16, batch_norm=batch_norm).eval()


class HeadFirst(nn.Module):
    """Defines its output layer first: module order is not call order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2 * 6 * 6, 3)
        self.normalize = Normalize([0.5], [0.5])
        self.stem = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.head(torch.relu(self.stem(self.normalize(x))).flatten(1))


def test_first_and_last_are_found_by_tracing_not_module_order():
    net = HeadFirst().eval()
    x = torch.rand(1, 1, 8, 8)
    assert [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == ["head", "stem"]
    assert trace_call_order(net, x) == ["stem", "head"]
    first, names = convert(net, "first", x)
    assert names == ["stem"] and isinstance(first.stem, VariationalConv2d) and isinstance(first.head, nn.Linear)
    assert first.stem.fed_by_input  # only the parameter-free Normalize comes before it
    last, names = convert(net, "last", x)
    assert names == ["head"] and isinstance(last.head, VariationalLinear) and not last.head.fed_by_input


def test_selection_by_name_and_errors():
    net = small_net()
    x = torch.rand(1, 1, 8, 8)
    assert convert(net, "all", x)[1] == ["1", "4", "8", "10"]
    assert convert(net, ["8"], x)[1] == ["8"]
    with pytest.raises(ConfigError, match="no module named 'nope'"):
        convert(net, ["nope"], x)
    with pytest.raises(ConfigError, match="not Conv2d or Linear"):
        convert(net, ["0"], x)  # Normalize


def test_only_mu_and_rho_train_and_frozen_state_is_bit_identical(tiny_data):
    net = small_net(batch_norm=True)
    with torch.no_grad():  # non-trivial running statistics, to see that SVI leaves them alone
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    bnn, names = convert(net, "first", tiny_data.train.x[:1], VariationalInit(rho_init=-4.0))
    trainable = sorted(n for n, p in bnn.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{names[0]}.{k}" for k in ("weight_mu", "weight_rho", "bias_mu", "bias_rho"))
    before = {k: v.clone() for k, v in bnn.state_dict().items()}
    layer = variational_layers(bnn)[0]
    opt = torch.optim.Adam(layer.variational_parameters(), lr=0.05)
    fit(bnn, tiny_data.train, epochs=1, batch_size=64, optimizer=opt, device=torch.device("cpu"), seed=0,
        loss_fn=ElboLoss([layer], len(tiny_data.train)), train_mode=False)
    after = bnn.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{names[0]}.{k}" for k in ("weight_mu", "weight_rho", "bias_mu", "bias_rho")}
    # the original network is untouched (the converter works on a deep copy)
    assert torch.equal(net.state_dict()["1.weight"], before[f"{names[0]}.weight_prior_mu"])


def test_mu_from_trained_weights_and_moped_rho():
    net = small_net()
    x = torch.rand(1, 1, 8, 8)
    bnn, _ = convert(net, "first", x, VariationalInit(rho_rule="moped", moped_delta=0.2, prior="zero"))
    layer = bnn.get_submodule("1")
    assert torch.equal(layer.weight_mu, net[1].weight) and torch.equal(layer.bias_mu, net[1].bias)
    expected = (0.2 * net[1].weight.abs()).clamp_min(1e-8)
    assert torch.allclose(F.softplus(layer.weight_rho), expected, rtol=1e-4, atol=1e-9)
    assert layer.weight_prior_mu is None  # zero-mean prior
    assert distribution_param_count(bnn) == 2 * (net[1].weight.numel() + net[1].bias.numel())


@pytest.mark.parametrize("prior", ["trained", "zero"])
def test_closed_form_kl_matches_monte_carlo(prior):
    torch.manual_seed(1)
    layer = VariationalLinear(5, 3, prior_sigma=0.3, rho_init=-1.0)
    with torch.no_grad():
        layer.weight_rho.add_(0.3 * torch.randn_like(layer.weight_rho))
    if prior == "trained":
        layer.set_prior(0.3, torch.randn(3, 5) * 0.2, torch.randn(3) * 0.2)
    n = 200_000
    total = 0.0
    for mu, rho, prior_mu in ((layer.weight_mu, layer.weight_rho, layer.weight_prior_mu),
                              (layer.bias_mu, layer.bias_rho, layer.bias_prior_mu)):
        q = torch.distributions.Normal(mu.detach(), F.softplus(rho.detach()))
        p = torch.distributions.Normal(torch.zeros_like(mu) if prior_mu is None else prior_mu, 0.3)
        w = q.sample((n,))
        total += (q.log_prob(w) - p.log_prob(w)).sum(dim=tuple(range(1, w.ndim))).mean().item()
    closed = layer.kl().item()
    assert closed == pytest.approx(total, rel=0.02)


@pytest.mark.parametrize("estimator", ["flipout", "local_reparam", "weight_sample"])
def test_sigma_near_zero_reproduces_the_deterministic_logits(estimator):
    net = small_net()
    x = torch.rand(16, 1, 8, 8)
    bnn, _ = convert(net, "all", x[:1], VariationalInit(rho_init=-25.0, train_estimator=estimator))
    layers = variational_layers(bnn)
    for training in (False, True):
        with estimating(layers) if training else contextlib.nullcontext():
            out = sample_logits(bnn, x, 3, layers)
        assert out.shape == (3, 16, 10)
        assert torch.allclose(out, net(x).expand(3, -1, -1), atol=1e-4)


def test_samples_differ_but_their_mean_is_stable():
    net = small_net()
    x = torch.rand(16, 1, 8, 8)
    bnn, _ = convert(net, "first", x[:1], VariationalInit(rho_init=-2.0))
    layers = variational_layers(bnn)
    with torch.no_grad():
        a = sample_logits(bnn, x, 300, layers)
        b = sample_logits(bnn, x, 300, layers)
    assert (a[0] - a[1]).abs().max() > 1e-3  # samples differ
    assert (a - b).abs().max() > 1e-3  # calls differ
    pa, pb = a.softmax(-1).mean(0), b.softmax(-1).mean(0)
    assert (pa - pb).abs().max() < 0.05  # the predictive mean is stable
    bnn.eval()  # mode does not switch sampling off
    with torch.no_grad():
        assert not torch.equal(sample_logits(bnn, x, 2, layers)[0], sample_logits(bnn, x, 2, layers)[0])


def _analytic_moments(layer, x):
    sig2 = F.softplus(layer.weight_rho) ** 2
    bsig2 = F.softplus(layer.bias_rho) ** 2
    return layer._op(x, layer.weight_mu, layer.bias_mu), layer._op(x * x, sig2, bsig2)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("shared", [False, True])
def test_every_estimator_and_the_predictive_have_the_exact_mean_and_variance_per_unit(kind, shared):
    torch.manual_seed(2)
    layer = VariationalLinear(6, 4, rho_init=-1.0) if kind == "linear" else VariationalConv2d(2, 3, 3, padding=1,
                                                                                              rho_init=-1.0)
    x = torch.rand(3, 6) if kind == "linear" else torch.rand(3, 2, 5, 5)
    mean, var = _analytic_moments(layer, x)
    s = 4000
    layer.fed_by_input = shared
    # flipout ignores the shared-input shortcut (its signs differ per row): checked once
    for estimator in ("predictive", "local_reparam", "weight_sample") + (() if shared else ("flipout",)):
        out = _draws(layer, x, estimator, s)
        assert out.shape == (s, *mean.shape)
        tol = 5 * var.sqrt() / s**0.5  # ~5 standard errors of the mean
        assert ((out.mean(0) - mean).abs() <= tol).all(), f"{estimator}: mean off"
        assert torch.allclose(out.var(0), var, rtol=0.15), f"{estimator}: variance off"
        # samples of different copies are independent draws, not repeats
        assert (out[0] - out[1]).abs().max() > 1e-3


def _draws(layer, x: torch.Tensor, estimator: str, s: int) -> torch.Tensor:
    """[s, *out] samples of one layer: the predictive, or a training estimator under ``estimating``.

    Flipout shares one perturbation per call (decorrelated across rows by random signs only), so its
    marginal distribution is seen over many calls: 8 samples per call."""
    if estimator == "predictive":
        with torch.no_grad():
            return sample_logits(layer, x, s, [layer])
    layer.train_estimator = estimator
    per_call = 8 if estimator == "flipout" else s
    with torch.no_grad(), estimating([layer]):
        return torch.cat([sample_logits(layer, x, per_call, [layer]) for _ in range(s // per_call)])


def _exact_neighbour_correlation(layer: VariationalConv2d, x: torch.Tensor) -> torch.Tensor:
    """Correlation, under q, of horizontally neighbouring output positions [B, C_out, H, W-1]: both
    share the weight draw, so Cov = sum_j patch_p[j] patch_p'[j] sigma_j^2 + sigma_bias^2."""
    sig2 = F.softplus(layer.weight_rho).detach().flatten(1) ** 2  # [O, J]
    bsig2 = F.softplus(layer.bias_rho).detach() ** 2
    patches = F.unfold(x, layer.kernel_size, padding=layer.padding)  # [B, J, L]
    h = w = x.shape[-1]  # stride 1, 'same' padding in these tests
    patches = patches.reshape(x.shape[0], -1, h, w)
    left, right = patches[..., :-1], patches[..., 1:]
    cov = torch.einsum("oj,bjhw->bohw", sig2, left * right) + bsig2[None, :, None, None]
    var_l = torch.einsum("oj,bjhw->bohw", sig2, left * left) + bsig2[None, :, None, None]
    var_r = torch.einsum("oj,bjhw->bohw", sig2, right * right) + bsig2[None, :, None, None]
    return cov / (var_l * var_r).sqrt()


def _empirical_neighbour_correlation(out: torch.Tensor) -> torch.Tensor:
    """out [S, B, C, H, W] -> correlation over S of horizontally neighbouring positions."""
    c = out - out.mean(0)
    left, right = c[..., :-1], c[..., 1:]
    return (left * right).mean(0) / (left.square().mean(0) * right.square().mean(0)).sqrt()


@pytest.mark.parametrize("shared", [False, True])
def test_predictive_of_a_conv_layer_has_the_exact_spatial_correlation_of_weight_sampling(shared):
    torch.manual_seed(4)
    layer = VariationalConv2d(1, 3, 3, padding=1, rho_init=-2.0)
    layer.fed_by_input = shared
    x = torch.rand(2, 1, 6, 6)
    exact = _exact_neighbour_correlation(layer, x)
    assert exact.mean() > 0.3  # the positions really are correlated under q
    out = _draws(layer, x, "predictive", 4000)
    assert (_empirical_neighbour_correlation(out) - exact).abs().max() < 0.05
    if shared:
        return
    # flipout trains on the same spatial correlation; local reparameterisation does not (it would fail).
    # (Flipout's samples within a call share one perturbation: fewer effective draws, so the mean error.)
    for estimator, faithful in (("flipout", True), ("weight_sample", True), ("local_reparam", False)):
        est = _empirical_neighbour_correlation(_draws(layer, x, estimator, 4000))
        assert ((est - exact).abs().mean() < 0.025) == faithful, estimator


def _mutual_information(logits: torch.Tensor) -> torch.Tensor:
    """[S, B, C] -> per-example MI = H(mean p) - mean H(p)."""
    p = logits.softmax(-1)
    mean = p.mean(0)
    entropy = lambda q: -(q * q.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    return entropy(mean) - entropy(p).mean(0)


class PooledNet(nn.Module):
    """conv -> ReLU -> global average pool -> linear: the pool sums the conv's positions, so whether
    they share one weight draw (q) or get independent noise (local reparameterisation) decides the
    predictive's spread."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize([0.5], [0.5])
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(torch.relu(self.stem(self.normalize(x))), 1).flatten(1))


@pytest.mark.parametrize("fed_by_input", [True, False])  # stacked draws on one copy / grouped draws on S copies
def test_mutual_information_of_the_predictive_matches_explicit_weight_draws(fed_by_input):
    torch.manual_seed(6)
    net = PooledNet().eval()
    with torch.no_grad():
        net.head.weight.mul_(8.0)
    x = torch.rand(64, 1, 6, 6)
    bnn, names = convert(net, "first", x[:1], VariationalInit(rho_init=-1.5))
    layers = variational_layers(bnn)
    layer = layers[0]
    layer.fed_by_input = fed_by_input
    s = 64
    with torch.no_grad():
        predictive = _mutual_information(sample_logits(bnn, x, s, layers))
        # brute force: S explicit weight draws, each applied to the whole batch by an ordinary Conv2d
        draws = []
        for _ in range(s):
            det = copy.deepcopy(net)
            det.stem.weight.copy_(layer.weight_mu + F.softplus(layer.weight_rho) * torch.randn_like(layer.weight_mu))
            det.stem.bias.copy_(layer.bias_mu + F.softplus(layer.bias_rho) * torch.randn_like(layer.bias_mu))
            draws.append(det(x))
        brute = _mutual_information(torch.stack(draws))
        layer.train_estimator = "local_reparam"
        with estimating(layers):
            local = _mutual_information(sample_logits(bnn, x, s, layers))
    diff = predictive - brute
    assert names == ["stem"] and brute.mean() > 0.02  # a posterior wide enough to mean something
    assert diff.mean().abs() < 4 * diff.std() / len(diff) ** 0.5 + 0.002, (predictive.mean(), brute.mean())
    # the test can see the old predictive's error: local reparameterisation underestimates MI here
    off = local - brute
    assert off.mean() < -4 * off.std() / len(off) ** 0.5, (local.mean(), brute.mean())


def test_flipout_matches_the_analytic_expected_gradient_and_reaches_mu_and_rho():
    """E[sum out^2] = sum (mean^2 + var) in closed form; flipout's average gradient must match its gradient."""
    torch.manual_seed(7)
    layer = VariationalConv2d(2, 3, 3, padding=1, rho_init=-1.0)
    layer.train_estimator = "flipout"
    x = torch.rand(16, 2, 5, 5)
    params = layer.variational_parameters()
    mean, var = _analytic_moments(layer, x)
    exact = torch.autograd.grad((mean.square() + var).sum() / len(x), params)
    reps = 200
    total = [torch.zeros_like(p) for p in params]
    for _ in range(reps):
        with estimating([layer]):
            out = layer(x)
        grads = torch.autograd.grad(out.square().sum() / len(x), params)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)  # mu and rho both learn
        total = [t + g / reps for t, g in zip(total, grads)]
    for name, got, want in zip(("weight_mu", "weight_rho", "bias_mu", "bias_rho"), total, exact):
        rel = (got - want).norm() / want.norm()
        assert rel < 0.2, f"{name}: relative error {rel:.3f}"  # Monte Carlo error of 200 draws: ~0.1


def test_grouped_and_stacked_weight_sampling_equal_a_loop_over_draws():
    torch.manual_seed(3)
    for layer, x in ((VariationalConv2d(2, 3, 3, stride=2, padding=1), torch.rand(8, 2, 7, 7)),
                     (VariationalLinear(5, 4), torch.rand(8, 5))):
        g = 4
        w = torch.randn(g, *layer.weight_mu.shape)
        b = torch.randn(g, *layer.bias_mu.shape)
        # row r of the batch uses draw r mod G
        looped = torch.cat([layer._op(x[r:r + 1], w[r % g], b[r % g]) for r in range(len(x))])
        assert torch.allclose(layer._op_grouped(x, w, b), looped, atol=1e-5)
        first = x[:2]  # stacked: example i under draw d is row i * G + d
        stacked = torch.cat([layer._op(first[i:i + 1], w[d], b[d]) for i in range(2) for d in range(g)])
        assert torch.allclose(layer._op_stacked(first, w, b), stacked, atol=1e-5)


def test_elbo_loss_and_kl_annealing():
    net = small_net()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    bnn, _ = convert(net, "first", x[:1])
    layers = variational_layers(bnn)
    loss = ElboLoss(layers, n_train=100, kl_weight=2.0, warmup_steps=4)
    weights = []
    for _ in range(6):
        loss(bnn, x, y)
        weights.append(loss.current_kl_weight())
    assert weights == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    torch.manual_seed(0)
    full = ElboLoss(layers, n_train=100, kl_weight=2.0)(bnn, x, y)
    torch.manual_seed(0)
    with estimating(layers):  # the loss samples with the training estimator
        nll = F.cross_entropy(sample_logits(bnn, x, 1, layers)[0], y)
    assert full.item() == pytest.approx(nll.item() + 2.0 * kl_divergence(bnn).item() / 100, rel=1e-5)


def test_elbo_with_several_training_samples_averages_their_nll():
    net = small_net()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    bnn, _ = convert(net, "first", x[:1], VariationalInit(rho_init=-1.0))
    layers = variational_layers(bnn)
    torch.manual_seed(5)
    loss = ElboLoss(layers, n_train=50, kl_weight=0.0, train_samples=3)(bnn, x, y)
    torch.manual_seed(5)
    with estimating(layers):
        logits = sample_logits(bnn, x, 3, layers)
    expected = torch.stack([F.cross_entropy(logits[s], y) for s in range(3)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.allclose(logits[0], logits[1])


class Opaque(nn.Module):
    """The same network behind a non-Sequential wrapper: sample_logits expands the input, no prefix."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("kind", ["last_layer_bnn", "mc_dropout", "stf_bnn"])
def test_deterministic_prefix_runs_once_and_gives_the_same_samples_and_gradients(kind):
    """The frozen body of a last-layer BNN (the first conv of MC dropout) runs on B rows, not S x B, and
    the samples and input gradients equal those of the plain S-fold expanded pass under the same draws."""
    from stf_eval.bayes.sampling import deterministic_prefix
    from stf_eval.models.mc_dropout import insert_dropout

    x = torch.rand(6, 1, 8, 8)
    net, layers = small_net(), []
    if kind == "mc_dropout":
        net = insert_dropout(net, "hidden", 0.3, x[:1]).eval()
    else:
        net, _ = convert(net, "last" if kind == "last_layer_bnn" else "first", x[:1],
                         VariationalInit(rho_init=-2.0))
        layers = variational_layers(net.eval())
    expected_prefix = {"last_layer_bnn": len(net) - 1, "mc_dropout": 2, "stf_bnn": 1}[kind]
    assert deterministic_prefix(net) == expected_prefix
    rows = []
    hook = net[1].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    s, outs, grads = 5, [], []
    for model in (net, Opaque(net)):
        torch.manual_seed(11)
        xg = x.clone().requires_grad_(True)
        out = sample_logits(model, xg, s, layers)
        (g,) = torch.autograd.grad(torch.log_softmax(out, -1)[..., 0].sum(), xg)
        outs.append(out.detach())
        grads.append(g)
    hook.remove()
    # first call: the prefix sees each example once (stf_bnn's variational first layer: its copies collapse)
    assert rows[0] == (len(x) * s if kind == "stf_bnn" else len(x)) and rows[1] == len(x) * s
    assert outs[0].shape == (s, len(x), 10)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert outs[0].std(0).max() > 1e-3  # the samples still differ


def test_a_net_that_draws_nothing_gives_s_identical_samples_from_one_pass():
    net = small_net()
    out = sample_logits(net, torch.rand(3, 1, 8, 8), 4)
    assert out.shape == (4, 3, 10) and torch.equal(out[0], out[3])


@pytest.mark.parametrize("kind", ["mc_dropout", "stf_bnn", "full_bnn"])
def test_relus_work_in_place_only_inside_a_no_grad_expanded_pass(kind):
    """The expanded pass runs the ReLUs of a Sequential net in place: the same samples as out of place
    (same draws), the caller's input untouched even when the net starts with a ReLU, every module
    restored afterwards, ReLUs of other modules and of gradient passes left out of place."""
    from stf_eval.bayes import sampling
    from stf_eval.models.mc_dropout import insert_dropout

    x = torch.randn(6, 1, 8, 8)  # negative entries: an in-place ReLU on the caller's tensor would show
    net, layers = nn.Sequential(nn.ReLU(), *small_net()), []
    if kind == "mc_dropout":
        net = insert_dropout(net, "hidden", 0.3, x[:1]).eval()
    else:
        net, _ = convert(net, "first" if kind == "stf_bnn" else "all", x[:1], VariationalInit(rho_init=-2.0))
        layers = variational_layers(net.eval())
    seen = []
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    for relu in relus:
        relu.register_forward_hook(lambda m, i, o: seen.append(m.inplace))
    before = x.clone()
    outs = []
    for in_place in (False, True):
        original = sampling._relus_in_place
        if not in_place:
            sampling._relus_in_place = lambda net, enabled: contextlib.nullcontext()
        try:
            torch.manual_seed(3)
            with torch.no_grad():
                outs.append(sample_logits(net, x, 4, layers))
        finally:
            sampling._relus_in_place = original
    assert torch.equal(outs[0], outs[1]) and torch.equal(x, before)
    one = x[:1].clone()  # one example: the S-fold batch is a stride-0 view of it, copied before ReLUs
    with torch.no_grad():
        assert sample_logits(net, one, 4, layers).shape == (4, 1, 10)
    assert torch.equal(one, x[:1])
    assert any(seen) and not any(r.inplace for r in relus)  # some ran in place; all restored
    seen.clear()
    sample_logits(net, x.clone().requires_grad_(True), 4, layers).sum().backward()
    assert seen and not any(seen)  # a pass that records gradients keeps every ReLU out of place

    class Residual(nn.Module):  # reuses its input after the ReLU: never switched
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, h):
            return h + self.relu(h)

    res = nn.Sequential(Residual(), AlwaysSample())
    with torch.no_grad():
        out = sample_logits(res, x, 3)
    assert torch.allclose(out[0], x + x.clamp_min(0)) and not res[0].relu.inplace


class AlwaysSample(nn.Module):
    """Marks a Sequential as drawing samples without changing its values."""

    samples_in_eval = True

    def forward(self, h):
        return h
