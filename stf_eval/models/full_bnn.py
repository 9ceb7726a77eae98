"""Full BNN, Bayes by Backprop (Blundell et al. 2015): every conv and linear layer variational,
trained from scratch. The paper's "vanilla BNN" that STF-BNN is compared with for cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..bayes import (
    TRAIN_ESTIMATORS,
    ElboLoss,
    VariationalInit,
    convert,
    distribution_param_count,
    sample_logits,
    variational_layers,
)
from ..bayes.summary import posterior_records, sigma_summary
from ..params import as_dict, require
from ..registry import MODELS
from ..seeding import derive_seed
from ..training import fit, make_optimizer
from .base import ModelPlugin


@dataclass(frozen=True)
class FullBnnParams:
    epochs: int = 10  # its own training length (the [train] recipe's epochs are not used)
    optimizer: Literal["adam", "adamw", "sgd", "recipe"] = "adam"  # "recipe" = [train].optimizer
    lr: float = 0.003  # its own learning rate, with the [train] recipe's schedule
    batch_size: int = 0  # 0 = the [train] recipe's batch_size
    prior_sigma: float = 1.0  # prior N(0, prior_sigma^2) on every weight and bias
    rho_init: float = -5.0  # initial rho of every weight (sigma = softplus(rho_init))
    kl_weight: float = 1.0  # loss = NLL + kl_weight * KL / N_train
    kl_anneal_epochs: int = 0  # linear warm-up of the KL weight from 0 over the first k epochs
    train_estimator: Literal["auto", "flipout", "local_reparam", "weight_sample"] = "auto"
    train_samples: int = 1  # samples per training example and step
    test_samples: int = 16  # S at evaluation

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(self.batch_size >= 0, "batch_size", "0 (the recipe's) or a positive integer", self.batch_size)
        require(self.prior_sigma > 0, "prior_sigma", "a positive number", self.prior_sigma)
        require(self.kl_weight >= 0, "kl_weight", "a number >= 0", self.kl_weight)
        require(self.kl_anneal_epochs >= 0, "kl_anneal_epochs", "an integer >= 0", self.kl_anneal_epochs)
        require(self.train_estimator in TRAIN_ESTIMATORS, "train_estimator", " or ".join(TRAIN_ESTIMATORS),
                self.train_estimator)
        require(self.train_samples >= 1, "train_samples", "an integer >= 1", self.train_samples)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)


@MODELS.register("full_bnn")
class FullBnn(ModelPlugin):
    """Every Conv2d/Linear layer mean-field Gaussian, prior N(0, s^2), trained by Bayes by Backprop."""

    Params = FullBnnParams
    stochastic = True
    tiny = {"epochs": 2, "test_samples": 4}

    def fit(self, data):
        p = self.params
        # its own seed stream: not the deterministic net's initialisation or batch order of the same seed
        seed = derive_seed(self.ctx.seed, "full_bnn")
        torch.manual_seed(seed)
        init = VariationalInit(rho_init=p.rho_init, prior="zero", prior_sigma=p.prior_sigma,
                               train_estimator=p.train_estimator)
        # mu starts from the architecture's usual random initialisation; nothing is frozen
        self.net, self.converted = convert(self.ctx.new_net(data), "all", data.train.x[:1], init,
                                           freeze_rest=False)
        self.net.to(self.device)
        self.layers = variational_layers(self.net)
        key_params = {k: v for k, v in as_dict(p).items() if k != "test_samples"}
        spec = self.ctx.key_spec(data, kind="full_bnn", params=key_params, seeding="derive_seed")
        batch_size = p.batch_size or self.ctx.train.batch_size
        recipe = self.ctx.train if p.optimizer == "recipe" else replace(self.ctx.train, optimizer=p.optimizer)

        def train():
            torch.manual_seed(seed)
            steps_per_epoch = math.ceil(len(data.train) / batch_size)
            loss = ElboLoss(self.layers, len(data.train), kl_weight=p.kl_weight, train_samples=p.train_samples,
                            warmup_steps=p.kl_anneal_epochs * steps_per_epoch)
            opt = make_optimizer(self.net.parameters(), recipe, lr=p.lr, weight_decay=0.0)
            seconds = fit(self.net, data.train, epochs=p.epochs, batch_size=batch_size, optimizer=opt,
                          device=self.device, seed=seed, schedule=self.ctx.train.schedule, loss_fn=loss,
                          desc=f"train full_bnn s{self.ctx.seed}")
            nll, kl = loss.per_epoch(steps_per_epoch)
            return seconds, {"nll_per_epoch": nll, "kl_per_epoch": kl,
                             "sigma": sigma_summary(self.net, self.converted)}

        seconds, cached, meta = self.ctx.cached(spec, self.net, train)
        self.train_meta = {**meta, "seconds": seconds, "cached": cached,
                           "sigma": sigma_summary(self.net, self.converted)}
        self.record_stage("train", self.train_meta)
        self.extra_records = posterior_records(self.train_meta, "train")
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return sample_logits(self.net, x, n_samples, self.layers)

    def networks(self):
        return [self.net]

    def distribution_params(self) -> int:
        return distribution_param_count(self.net)

    def capabilities(self):
        caps = super().capabilities()
        caps.notes.update({"train_estimator": self.params.train_estimator,
                           "predictive": "weight sampling (one draw per sample)",
                           "optimizer": self.params.optimizer, "lr": self.params.lr})
        return caps
