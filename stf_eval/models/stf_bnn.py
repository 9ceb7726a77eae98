"""STF-BNN (Lei et al., arXiv 2112.06281): a trained network whose first layer is made Bayesian.

Stage "pretrain": the deterministic network of the file's [net]/[train] recipe (shared, through the
checkpoint cache, with the ``deterministic`` model). Stage "svi": the chosen layers (``layers``;
default the first layer the input reaches, found by tracing a forward pass) become mean-field
Gaussian layers with mu = the trained weights; every other parameter is frozen and batch-norm keeps
its running statistics (the network stays in eval mode); q is fitted by stochastic variational
inference on the training split. With ``prior_sigma_grid`` one SVI stage runs per candidate prior
scale (each cached under its own key) and the one with the lowest validation NLL is kept.

``ConvertedBNN`` is the whole recipe for any layer selection; ``last_layer_bnn`` reuses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

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
from ..errors import ConfigError
from ..params import as_dict, require
from ..registry import MODELS
from ..seeding import derive_seed, seeded
from ..training import fit
from .base import ModelPlugin, log_mean_softmax, pretrained_base


@dataclass(frozen=True)
class ConvertedBNNParams:
    layers: str | tuple[str, ...] = "first"  # "first", "last", "all" or a list of module names
    svi_epochs: int = 5  # epochs of stage 2 over the training split
    svi_lr: float = 0.05  # Adam learning rate for mu and rho (with the [train] recipe's schedule)
    batch_size: int = 0  # stage-2 batch size; 0 = the [train] recipe's batch_size
    kl_weight: float = 1.0  # loss = NLL + kl_weight * KL / N_train
    prior: Literal["trained", "zero"] = "trained"  # prior mean: the pretrained weights, or zero
    prior_sigma: float = 0.1  # prior standard deviation (unused when prior_sigma_grid is given)
    prior_sigma_grid: tuple[float, ...] = ()  # candidates; the lowest validation NLL is kept
    rho_rule: Literal["constant", "moped"] = "constant"  # rho = rho_init, or sigma = moped_delta * |w|
    rho_init: float = -5.0
    moped_delta: float = 0.1
    train_estimator: Literal["auto", "flipout", "local_reparam", "weight_sample"] = "auto"
    train_samples: int = 1  # samples per training example and step
    test_samples: int = 16  # S at evaluation (and for the validation NLL of prior_sigma_grid)

    def check(self) -> None:
        require(self.svi_epochs >= 1, "svi_epochs", "an integer >= 1", self.svi_epochs)
        require(self.svi_lr > 0, "svi_lr", "a positive number", self.svi_lr)
        require(self.batch_size >= 0, "batch_size", "0 (the recipe's) or a positive integer", self.batch_size)
        require(self.kl_weight >= 0, "kl_weight", "a number >= 0", self.kl_weight)
        require(self.prior_sigma > 0, "prior_sigma", "a positive number", self.prior_sigma)
        require(all(s > 0 for s in self.prior_sigma_grid), "prior_sigma_grid", "positive numbers",
                list(self.prior_sigma_grid))
        require(len(set(self.prior_sigma_grid)) == len(self.prior_sigma_grid), "prior_sigma_grid",
                "distinct values", list(self.prior_sigma_grid))
        require(self.moped_delta > 0, "moped_delta", "a positive number", self.moped_delta)
        require(self.train_estimator in TRAIN_ESTIMATORS, "train_estimator", " or ".join(TRAIN_ESTIMATORS),
                self.train_estimator)
        require(self.train_samples >= 1, "train_samples", "an integer >= 1", self.train_samples)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)
        require(not isinstance(self.layers, tuple) or len(self.layers) > 0, "layers",
                "'first', 'last', 'all' or a non-empty list of module names", list(self.layers))

    def variational_init(self, prior_sigma: float | None = None) -> VariationalInit:
        return VariationalInit(rho_rule=self.rho_rule, rho_init=self.rho_init, moped_delta=self.moped_delta,
                               prior=self.prior, prior_sigma=self.prior_sigma if prior_sigma is None else prior_sigma,
                               train_estimator=self.train_estimator)


class ConvertedBNN(ModelPlugin):
    """Pretrained deterministic net -> chosen layers variational (rest frozen) -> SVI."""

    Params = ConvertedBNNParams
    stochastic = True
    tiny = {"svi_epochs": 1, "test_samples": 4}

    def fit(self, data):
        p = self.params
        self.base_net, meta = pretrained_base(self.ctx, data)
        self.record_stage("pretrain", meta)
        self.example = data.train.x[:1].to(self.device)
        candidates = list(p.prior_sigma_grid) or [p.prior_sigma]
        if len(candidates) > 1 and len(data.val) == 0:
            raise ConfigError(f"{self.ctx.spec.name}.prior_sigma_grid: needs a validation split "
                              "(data.val_fraction > 0) to choose prior_sigma on")
        fitted = [self._svi(data, sigma) for sigma in candidates]
        self.val_nll: dict[float, float] = {}
        if len(candidates) > 1:
            for sigma, (net, _, _) in zip(candidates, fitted):
                self.val_nll[sigma] = self._validation_nll(net, data, sigma)
            best = min(candidates, key=lambda s: (self.val_nll[s], s))
        else:
            best = candidates[0]
        self.prior_sigma = best
        self.net, self.svi_meta, _ = fitted[candidates.index(best)]
        self.layers = variational_layers(self.net)
        self.record_stage("svi", self.svi_meta)
        others = [m for s, (_, m, _) in zip(candidates, fitted) if s != best]
        if others:  # the search is part of the method's cost
            self.record_stage("prior_sigma_search", {
                "seconds": sum(float(m.get("seconds", 0.0)) for m in others),
                "cached": all(m.get("cached") for m in others),
                "peak_memory_mb": max(float(m.get("peak_memory_mb", 0.0)) for m in others),
                "memory_method": others[0].get("memory_method", "")})
        self.extra_records = self._records()
        return self

    def _svi(self, data, prior_sigma: float):
        """One SVI stage at ``prior_sigma`` (cached by its own key): (net, stage meta, layer names)."""
        p = self.params
        net, converted = convert(self.base_net, p.layers, self.example, p.variational_init(prior_sigma))
        net.to(self.device).eval()
        layers = variational_layers(net)
        self.converted = converted
        # test_samples and the grid do not change the fitted weights: keep them out of the cache key, so
        # a candidate of a grid is the same stage as a plain run with that prior_sigma
        key_params = {k: v for k, v in as_dict(p).items() if k not in ("test_samples", "prior_sigma_grid")}
        key_params["prior_sigma"] = prior_sigma
        spec = self.ctx.key_spec(data, kind=self.registered_name, params=key_params, layers_resolved=converted)
        batch_size = p.batch_size or self.ctx.train.batch_size
        seed = derive_seed(self.ctx.seed, "svi")

        def train():
            torch.manual_seed(seed)
            loss = ElboLoss(layers, len(data.train), kl_weight=p.kl_weight, train_samples=p.train_samples)
            opt = torch.optim.Adam([q for layer in layers for q in layer.variational_parameters()], lr=p.svi_lr)
            seconds = fit(net, data.train, epochs=p.svi_epochs, batch_size=batch_size, optimizer=opt,
                          device=self.device, seed=seed, schedule=self.ctx.train.schedule, loss_fn=loss,
                          desc=f"svi {self.registered_name} s{self.ctx.seed}", train_mode=False)
            nll, kl = loss.per_epoch(math.ceil(len(data.train) / batch_size))
            return seconds, {"layers": converted, "prior_sigma": prior_sigma, "nll_per_epoch": nll,
                             "kl_per_epoch": kl, "sigma": sigma_summary(net, converted)}

        seconds, cached, meta = self.ctx.cached(spec, net, train)
        meta = {**meta, "seconds": seconds, "cached": cached, "sigma": sigma_summary(net, converted)}
        return net, meta, converted

    @torch.no_grad()
    def _validation_nll(self, net, data, prior_sigma: float) -> float:
        """NLL of the S-sample predictive (S = test_samples) on the validation split."""
        layers = variational_layers(net)
        s = self.params.test_samples
        bs = self.prediction_batch_size(s)
        total = 0.0
        with seeded(self.ctx.seed, "prior-sigma-validation", prior_sigma, device=self.device):
            for start in range(0, len(data.val), bs):
                x = data.val.x[start:start + bs].to(self.device)
                y = data.val.y[start:start + bs].to(self.device)
                log_p = log_mean_softmax(sample_logits(net, x, s, layers))
                total += float(F.nll_loss(log_p, y, reduction="sum"))
        return total / len(data.val)

    def _records(self) -> list[dict]:
        rows = posterior_records(self.svi_meta, "svi")
        if self.val_nll:
            for sigma, nll in self.val_nll.items():
                rows.append({"metric": "val_nll", "value": nll, "group": f"prior_sigma={sigma:g}", "stage": "svi",
                             "note": f"validation NLL after SVI, S={self.params.test_samples}"})
            rows.append({"metric": "prior_sigma_chosen", "value": self.prior_sigma, "stage": "svi",
                         "note": "lowest validation NLL of prior_sigma_grid "
                                 + ", ".join(f"{s:g}" for s in self.val_nll)})
        return rows

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
        sigmas = torch.cat([F.softplus(layer.weight_rho.detach()).flatten() for layer in self.layers])
        caps.notes.update({
            "variational_layers": list(self.converted),
            "posterior_sigma_mean": float(sigmas.mean()),
            "posterior_sigma_max": float(sigmas.max()),
            "prior_sigma": self.prior_sigma,
            "train_estimator": self.params.train_estimator,
            "predictive": "weight sampling (one draw per sample)"})
        if self.val_nll:
            caps.notes["prior_sigma_val_nll"] = {f"{s:g}": round(v, 5) for s, v in self.val_nll.items()}
        return caps


@MODELS.register("stf_bnn")
class StfBnn(ConvertedBNN):
    """STF-BNN: the first layer the input reaches becomes Bayesian after pretraining (the method under study)."""
