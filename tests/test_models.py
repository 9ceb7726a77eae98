"""Model plugins: STF-BNN and its baselines on tiny data (the runner-level part is tests/test_matrix.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import nn

from stf_eval.bayes import VariationalLayer, variational_layers
from stf_eval.errors import ConfigError
from stf_eval.models.temperature_scaled import fit_temperature
from stf_eval.params import parse_params
from stf_eval.registry import MODELS


def _conv_linear_weights(net: nn.Module) -> int:
    return sum(p.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def test_stf_bnn_converts_the_first_layer_and_keeps_the_rest_of_the_pretrained_net(fitted_models):
    model = fitted_models("stf_bnn")
    base = fitted_models("deterministic").net
    assert model.converted == ["1"]  # lenet: Normalize (no parameters) is module 0
    layer = model.net.get_submodule("1")
    assert isinstance(layer, VariationalLayer) and layer.fed_by_input
    n_dist = 2 * (base[1].weight.numel() + base[1].bias.numel())
    assert model.distribution_params() == n_dist == model.trainable_params()
    # every other weight is the deterministic model's, bit for bit, after SVI
    base_state, state = base.state_dict(), model.net.state_dict()
    others = [k for k in base_state if not k.startswith("1.")]
    assert others and all(torch.equal(base_state[k], state[k]) for k in others)
    assert torch.equal(layer.weight_prior_mu, base[1].weight)  # prior "trained" is centred on them
    assert not torch.equal(layer.weight_mu, base[1].weight)  # and SVI moved mu
    assert model.deterministic_base() is model.base_net
    eff = model.efficiency()
    assert set(eff["train_seconds"]) == {"pretrain", "svi"} and set(eff["peak_memory_mb"]) == {"pretrain", "svi"}
    notes = model.capabilities().notes
    assert notes["variational_layers"] == ["1"] and notes["train_estimator"] == "auto"
    assert notes["predictive"].startswith("weight sampling")
    # per-layer sigma and per-epoch SVI convergence, as records the efficiency suite writes
    rows = {(r["metric"], r.get("group")): r["value"] for r in model.extra_records}
    sigma = F.softplus(layer.weight_rho.detach())
    assert rows[("posterior_sigma_max", "1")] >= sigma.max().item()
    assert {m for m, _ in rows} >= {"posterior_sigma_mean", "posterior_sigma_max", "svi_nll", "svi_kl"}
    epochs = model.params.svi_epochs
    assert [g for m, g in rows if m == "svi_nll"] == [f"epoch {k}" for k in range(1, epochs + 1)]


def test_stf_bnn_svi_stage_is_cached(fitted_models, tiny_cfg, tiny_data):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    first = fitted_models("stf_bnn")
    params = parse_params(MODELS.get("stf_bnn").Params, {"svi_epochs": 1, "test_samples": 9}, "stf_bnn")
    again = build_model(PluginSpec("stf_bnn", "stf_bnn", params), tiny_cfg, tiny_data, 0, torch.device("cpu"),
                        CheckpointCache(tiny_cfg.cache_dir))
    assert again.from_cache == {"pretrain": True, "svi": True}  # test_samples is not part of the key
    assert again.extra_records == first.extra_records  # a warm cache reports what the cold run measured
    assert again.n_samples == 9
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()))


def test_last_layer_bnn_converts_the_output_layer(fitted_models):
    model = fitted_models("last_layer_bnn")
    base = fitted_models("deterministic").net
    assert model.converted == ["10"]
    assert model.distribution_params() == 2 * (base[10].weight.numel() + base[10].bias.numel())
    assert set(model.efficiency()["train_seconds"]) == {"pretrain", "svi"}


def test_stochastic_predictive_keeps_sampling_after_eval(fitted_models, tiny_data):
    x = tiny_data.test.x[:16]
    for name in ("stf_bnn", "last_layer_bnn", "mc_dropout", "full_bnn"):
        model = fitted_models(name)
        pred = model.predictive(2).eval()
        for net in model.networks():
            net.eval()
        with torch.no_grad():
            assert not torch.equal(pred(x), pred(x)), f"{name} stopped sampling in eval mode"
        samples = model.predict_samples(x)
        assert samples.shape[0] == model.params.test_samples
        assert not torch.equal(samples[0], samples[1])


def test_always_dropout_keeps_1_minus_p_scaled_in_eval_mode_too():
    """The mask is a uniform draw compared with p: units kept with probability 1 - p, scaled by 1/(1-p), in
    eval mode as in train mode, and the gradient is the same mask (an independent check of the layer)."""
    from stf_eval.models.mc_dropout import AlwaysDropout

    drop = AlwaysDropout(0.3).eval()
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    out = drop(x)
    kept = out.detach() != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # binomial sd 0.001
    assert torch.allclose(out.detach()[kept], torch.full((int(kept.sum()),), 1 / 0.7))
    assert abs(out.detach().mean().item() - 1.0) < 0.01
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d out / d x = mask / (1 - p) = out for x = 1
    assert not torch.equal(drop(torch.ones(1000)), drop(torch.ones(1000)))  # a fresh mask per call


def test_mc_dropout_places_dropout_where_asked(fitted_models, tiny_cfg, tiny_data):
    from stf_eval.models.mc_dropout import AlwaysDropout, insert_dropout
    from stf_eval.nets.lenet import lenet

    model = fitted_models("mc_dropout")
    drops = [m for m in model.net.modules() if isinstance(m, AlwaysDropout)]
    assert len(drops) == 3 and all(d.p == model.params.p for d in drops)  # after each of lenet's 3 ReLUs
    net = insert_dropout(lenet((1, 8, 8), 10, [0.0], [1.0]), "last", 0.5, torch.rand(1, 1, 8, 8))
    assert isinstance(net[-1], nn.Sequential) and isinstance(net[-1][0], AlwaysDropout)
    assert isinstance(net[-1][1], nn.Linear)
    assert model.efficiency()["train_seconds"].keys() == {"train"}


def test_temperature_is_fitted_on_validation_and_matches_a_scalar_search(fitted_models, tiny_data):
    model = fitted_models("temperature_scaled")
    with torch.no_grad():
        logits = model.net(tiny_data.val.x).double()
    y = tiny_data.val.y

    def nll(log_t):
        return float(F.cross_entropy(logits / np.exp(log_t), y))

    expected = float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded",
                                            options={"xatol": 1e-8}).x))
    assert model.temperature == pytest.approx(expected, rel=1e-3)
    assert model.capabilities().notes["temperature"] == model.temperature
    assert model.trainable_params() == 1 and set(model.efficiency()["train_seconds"]) == {"train", "temperature"}
    out = model.sample_logits(tiny_data.test.x[:4], 1)
    assert torch.allclose(out[0], model.net(tiny_data.test.x[:4]) / model.temperature)


def test_fit_temperature_recovers_a_known_temperature():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 5) * 3
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 2.5, labels) == pytest.approx(2.5, rel=0.1)


def test_deep_ensemble_member_zero_is_the_deterministic_base(fitted_models, tiny_data):
    model = fitted_models("deep_ensemble")
    base = fitted_models("deterministic").net
    assert model.n_samples == model.params.members == len(model.networks())
    assert all(torch.equal(a, b) for a, b in zip(model.members[0].state_dict().values(),
                                                 base.state_dict().values()))
    assert not torch.equal(model.members[0][1].weight, model.members[1][1].weight)
    x = tiny_data.test.x[:5]
    with torch.no_grad():
        s = model.sample_logits(x, 5)
        assert torch.equal(s[0], base(x)) and torch.equal(s[2], s[0])  # S > M: members in turn
    eff = model.efficiency()
    assert eff["forward_passes_per_prediction"] == model.params.members
    assert eff["trainable_params"] == model.params.members * sum(p.numel() for p in base.parameters())


def test_full_bnn_makes_every_layer_variational(fitted_models):
    model = fitted_models("full_bnn")
    plain = fitted_models("deterministic").net
    layers = variational_layers(model.net)
    assert len(layers) == 4 and model.converted == ["1", "4", "8", "10"]
    assert model.distribution_params() == 2 * _conv_linear_weights(plain) == model.trainable_params()
    assert all(layer.weight_prior_mu is None and layer.prior_sigma == model.params.prior_sigma for layer in layers)
    assert set(model.efficiency()["train_seconds"]) == {"train"}


def test_stf_bnn_layers_parameter_selects_placement_and_names_the_layers_on_error(fitted_models, tiny_cfg,
                                                                                  tiny_data):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    def build(table):
        params = parse_params(MODELS.get("stf_bnn").Params, {"svi_epochs": 1, "test_samples": 2, **table},
                              "models.stf_bnn")
        return build_model(PluginSpec("stf_bnn", "stf_bnn", params), tiny_cfg, tiny_data, 0,
                           torch.device("cpu"), CheckpointCache(tiny_cfg.cache_dir))

    assert build({"layers": ["4", "8"]}).converted == ["4", "8"]
    assert build({"layers": "last"}).converted == ["10"]
    with pytest.raises(ConfigError, match=r"no module named 'conv9'.*first to last: 1, 4, 8, 10"):
        build({"layers": ["conv9"]})


def test_prior_sigma_is_chosen_on_validation_nll_and_each_candidate_is_its_own_cached_stage(
        fitted_models, tiny_cfg, tiny_data):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    def build(table):
        params = parse_params(MODELS.get("last_layer_bnn").Params, {"svi_epochs": 1, "test_samples": 4, **table},
                              "models.last_layer_bnn")
        return build_model(PluginSpec("last_layer_bnn", "last_layer_bnn", params), tiny_cfg, tiny_data, 0,
                           torch.device("cpu"), CheckpointCache(tiny_cfg.cache_dir))

    model = build({"prior_sigma_grid": [0.01, 3.0]})
    assert set(model.val_nll) == {0.01, 3.0}
    assert model.prior_sigma == min(model.val_nll, key=model.val_nll.get)
    assert model.net.get_submodule("10").prior_sigma == model.prior_sigma
    assert set(model.efficiency()["train_seconds"]) == {"pretrain", "svi", "prior_sigma_search"}
    rows = [r for r in model.extra_records if r["metric"] in ("val_nll", "prior_sigma_chosen")]
    assert len(rows) == 3 and model.capabilities().notes["prior_sigma"] == model.prior_sigma
    # the chosen candidate's stage is the stage of a plain run with that prior_sigma (shared cache entry)
    plain = build({"prior_sigma": model.prior_sigma})
    assert plain.from_cache["svi"]
    assert all(torch.equal(a, b) for a, b in zip(plain.net.state_dict().values(), model.net.state_dict().values()))
    # seeded from (seed, candidate): the same figures again on a warm cache
    again = build({"prior_sigma_grid": [0.01, 3.0]})
    assert again.val_nll == model.val_nll


def test_training_seeds_come_from_one_scheme():
    from stf_eval.models.deep_ensemble import member_seed
    from stf_eval.seeding import derive_seed

    assert member_seed(7, 0) == 7  # member 0 is the deterministic base of the cell (shared cache)
    seeds = {member_seed(s, m) for s in (0, 1, 1000, 2000) for m in range(5)}
    assert len(seeds) == 20  # seed + 1000 m collided: member 1 of seed 0 = member 0 of seed 1000
    assert member_seed(3, 2) == derive_seed(3, "ensemble-member", 2)


@pytest.mark.parametrize("name, table, message", [
    ("stf_bnn", {"svi_epochs": 0}, "svi_epochs"),
    ("stf_bnn", {"prior": "flat"}, "prior"),
    ("full_bnn", {"prior_sigma": 0}, "prior_sigma"),
    ("stf_bnn", {"train_estimator": "reinforce"}, "train_estimator"),
    ("stf_bnn", {"local_reparam": True}, "local_reparam"),
    ("stf_bnn", {"prior_sigma_grid": [0.1, -1]}, "prior_sigma_grid"),
    ("stf_bnn", {"layers": []}, "layers"),
    ("full_bnn", {"optimizer": "rmsprop"}, "optimizer"),
    ("mc_dropout", {"p": 1.0}, "p"),
    ("deep_ensemble", {"members": 1}, "members"),
])
def test_bad_parameters_are_one_line_config_errors(name, table, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(MODELS.get(name).Params, table, f"models.{name}")
