"""STF-BNN (Lei et al., arXiv 2112.06281): a trained network whose first layer is made Bayesian.

Stage "pretrain": the deterministic network of the file's [net]/[train] recipe (shared, through the
checkpoint cache, with the ``deterministic`` model). Stage "svi": the first layer the input reaches
(found by tracing a forward pass) becomes a mean-field Gaussian layer with mu = the trained weights;
every other parameter is frozen and batch-norm keeps its running statistics (the network stays in
eval mode); q is fitted by stochastic variational inference on the training split.

``ConvertedBNN`` is the whole recipe for any layer selection; ``last_layer_bnn`` reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..bayes import (
    ElboLoss,
    VariationalInit,
    convert,
    distribution_param_count,
    sample_logits,
    variational_layers,
)
from ..params import as_dict, require
from ..registry import MODELS
from ..training import fit
from .base import ModelPlugin, pretrained_base


@dataclass(frozen=True)
class ConvertedBNNParams:
    svi_epochs: int = 5  # epochs of stage 2 over the training split
    svi_lr: float = 0.05  # Adam learning rate for mu and rho (with the [train] recipe's schedule)
    batch_size: int = 0  # stage-2 batch size; 0 = the [train] recipe's batch_size
    kl_weight: float = 1.0  # loss = NLL + kl_weight * KL / N_train
    prior: Literal["trained", "zero"] = "trained"  # prior mean: the pretrained weights, or zero
    prior_sigma: float = 0.1  # prior standard deviation
    rho_rule: Literal["constant", "moped"] = "constant"  # rho = rho_init, or sigma = moped_delta * |w|
    rho_init: float = -5.0
    moped_delta: float = 0.1
    local_reparam: bool = True  # local reparameterisation (else: one weight draw per sample)
    train_samples: int = 1  # samples per training example and step
    test_samples: int = 16  # S at evaluation

    def check(self) -> None:
        require(self.svi_epochs >= 1, "svi_epochs", "an integer >= 1", self.svi_epochs)
        require(self.svi_lr > 0, "svi_lr", "a positive number", self.svi_lr)
        require(self.batch_size >= 0, "batch_size", "0 (the recipe's) or a positive integer", self.batch_size)
        require(self.kl_weight >= 0, "kl_weight", "a number >= 0", self.kl_weight)
        require(self.prior_sigma > 0, "prior_sigma", "a positive number", self.prior_sigma)
        require(self.moped_delta > 0, "moped_delta", "a positive number", self.moped_delta)
        require(self.train_samples >= 1, "train_samples", "an integer >= 1", self.train_samples)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)

    def variational_init(self) -> VariationalInit:
        return VariationalInit(rho_rule=self.rho_rule, rho_init=self.rho_init, moped_delta=self.moped_delta,
                               prior=self.prior, prior_sigma=self.prior_sigma, local_reparam=self.local_reparam)


class ConvertedBNN(ModelPlugin):
    """Pretrained deterministic net -> chosen layers variational (rest frozen) -> SVI."""

    Params = ConvertedBNNParams
    stochastic = True
    #: which layers become variational: "first", "last", "all" or a list of module names
    selection = "first"
    tiny = {"svi_epochs": 1, "test_samples": 4}

    def fit(self, data):
        p = self.params
        self.base_net, meta = pretrained_base(self.ctx, data)
        self.record_stage("pretrain", meta)
        example = data.train.x[:1].to(self.device)
        self.net, self.converted = convert(self.base_net, self.selection, example, p.variational_init())
        self.net.to(self.device).eval()
        self.layers = variational_layers(self.net)
        # test_samples does not change the fitted weights: keep it out of the cache key
        key_params = {k: v for k, v in as_dict(p).items() if k != "test_samples"}
        spec = self.ctx.key_spec(data, kind=self.registered_name, params=key_params)

        def train():
            torch.manual_seed(self.ctx.seed)
            loss = ElboLoss(self.layers, len(data.train), kl_weight=p.kl_weight, train_samples=p.train_samples)
            opt = torch.optim.Adam([q for layer in self.layers for q in layer.variational_parameters()],
                                   lr=p.svi_lr)
            seconds = fit(self.net, data.train, epochs=p.svi_epochs, batch_size=p.batch_size or self.ctx.train.batch_size,
                          optimizer=opt, device=self.device, seed=self.ctx.seed, schedule=self.ctx.train.schedule,
                          loss_fn=loss,
                          desc=f"svi {self.registered_name} s{self.ctx.seed}", train_mode=False)
            return seconds, {"layers": self.converted}

        self.run_stage("svi", spec, self.net, train)
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return sample_logits(self.net, x, n_samples, self.layers)

    def networks(self):
        return [self.net]

    def distribution_params(self) -> int:
        return distribution_param_count(self.net)

    def deterministic_base(self):
        return self.base_net

    def capabilities(self):
        caps = super().capabilities()
        sigmas = torch.cat([torch.nn.functional.softplus(layer.weight_rho.detach()).flatten()
                            for layer in self.layers])
        caps.notes.update({"variational_layers": list(self.converted),
                           "posterior_sigma_mean": float(sigmas.mean()),
                           "posterior_sigma_max": float(sigmas.max())})
        return caps


@MODELS.register("stf_bnn")
class StfBnn(ConvertedBNN):
    """STF-BNN: the first layer the input reaches becomes Bayesian after pretraining (the method under study)."""

    selection = "first"
