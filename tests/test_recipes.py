"""The shipped recipes of the variational models actually fit their distribution parameters.

For every shipped suite file, each variational model's own recipe (optimizer, learning rate, prior,
estimator, the file's schedule) runs a couple of epochs on tiny data with a tiny net substituted; sigma
must move away from its initial value by about what the learning rate promises. A recipe whose
optimizer cannot move rho (SGD at a small lr on a KL term divided by N_train) fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stf_eval.bayes import variational_layers
from stf_eval.cache import CheckpointCache
from stf_eval.config import PluginSpec, load_config
from stf_eval.registry import MODELS
from stf_eval.runner import build_model

SUITES = Path(__file__).resolve().parent.parent / "suites"
SHIPPED = ("quick", "smoke", "paper_cifar10")
VARIATIONAL = ("stf_bnn", "last_layer_bnn", "full_bnn")
EPOCHS = 2  # a couple of epochs of tiny data: ~20 optimiser steps


def _recipes():
    for suite in SHIPPED:
        cfg = load_config(SUITES / f"{suite}.toml")
        for spec in cfg.models:
            if spec.plugin in VARIATIONAL:
                yield pytest.param(suite, spec.name, id=f"{suite}-{spec.name}")


def _tiny_version(spec: PluginSpec) -> PluginSpec:
    """A couple of epochs; a prior_sigma_grid is replaced by its first candidate (the optimiser and its
    learning rate are under test here; the search is tested in test_models.py)."""
    epochs_key = "epochs" if spec.plugin == "full_bnn" else "svi_epochs"
    changes = {epochs_key: EPOCHS, "test_samples": 2}
    if getattr(spec.params, "prior_sigma_grid", ()):
        changes.update(prior_sigma=spec.params.prior_sigma_grid[0], prior_sigma_grid=())
    return dataclasses.replace(spec, params=dataclasses.replace(spec.params, **changes))


def _lr(params) -> float:
    return params.lr if hasattr(params, "lr") else params.svi_lr


@pytest.mark.parametrize("suite, model", list(_recipes()))
def test_each_shipped_variational_recipe_moves_sigma(suite, model, tiny_cfg, tiny_data):
    shipped = load_config(SUITES / f"{suite}.toml")
    spec = _tiny_version(shipped.model(model))
    # the file's training recipe (optimizer, schedule, batch size) with a short pretraining
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(shipped.train, epochs=2))
    built = build_model(spec, cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(cfg.cache_dir))
    p = spec.params
    sigma0 = float(F.softplus(torch.tensor(p.rho_init)))
    sigmas = torch.cat([F.softplus(layer.weight_rho.detach()).flatten() for layer in variational_layers(built.net)])
    steps = EPOCHS * -(-len(tiny_data.train) // (getattr(p, "batch_size", 0) or cfg.train.batch_size))
    # Adam steps rho by about lr (less under a decaying schedule and sign noise): demand a quarter of
    # lr x steps on average; at rho = -5, d sigma / sigma = sigmoid(rho) / softplus(rho) d rho ~ d rho
    moved = ((sigmas - sigma0).abs() / sigma0).mean().item()
    assert moved > 0.25 * _lr(p) * steps, f"{suite}/{model}: sigma moved by {moved:.2e} relative in {steps} steps"


def test_the_recipe_check_has_power_sgd_at_small_lr_leaves_sigma_in_place(tiny_cfg, tiny_data):
    """paper_cifar10's full_bnn before the fix (the [train] recipe's SGD at lr 1e-3) fails the check."""
    shipped = load_config(SUITES / "paper_cifar10.toml")
    spec = _tiny_version(shipped.model("full_bnn"))
    spec = dataclasses.replace(spec, params=dataclasses.replace(spec.params, optimizer="recipe"))
    assert shipped.train.optimizer == "sgd"
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(shipped.train, epochs=2))
    built = build_model(spec, cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(cfg.cache_dir))
    sigma0 = float(F.softplus(torch.tensor(spec.params.rho_init)))
    sigmas = torch.cat([F.softplus(layer.weight_rho.detach()).flatten() for layer in variational_layers(built.net)])
    steps = EPOCHS * -(-len(tiny_data.train) // cfg.train.batch_size)
    assert ((sigmas - sigma0).abs() / sigma0).mean().item() < 0.25 * spec.params.lr * steps
    assert MODELS.get("full_bnn").Params().optimizer == "adam"
