"""Last-layer Laplace approximation (Daxberger et al. 2021) with the ``laplace-torch`` library.

The worked example of a third-party method in stf-eval (docs/api.md): the method lives in its own
library, this file only maps it onto the model contract. After the shared deterministic network is
trained (or loaded from the cache), ``laplace-torch`` fits a Gaussian posterior over the weights of
the network's last linear layer around the trained ones - a Kronecker-factored (default), full or
diagonal generalised Gauss-Newton curvature plus an isotropic prior whose precision it tunes by
maximising the marginal likelihood - and ``sample_logits`` draws S last-layer weight sets from that
posterior and applies each to the network's penultimate features.

Because the network is linear in its last-layer weights, these weight samples give exactly the
linearised (GLM) predictive's logit samples. They are differentiable in the input (the features
carry the gradient; the weight draws do not depend on x), so gradient attacks apply.

``laplace-torch`` is an optional extra: ``pip install 'stf-eval[laplace]'``. It is imported when a
run uses the model; without it the suite file is refused with one line.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from ..params import require
from ..profiling import peak_memory
from ..registry import MODELS
from .base import ModelPlugin, pretrained_base

INSTALL_HINT = "pip install 'stf-eval[laplace]' (or pip install laplace-torch)"


def laplace_missing() -> str | None:
    """Why the plugin cannot run here (laplace-torch absent), or None."""
    if importlib.util.find_spec("laplace") is None:
        return f"the laplace model needs laplace-torch, which is not installed: {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class LaplaceParams:
    hessian_structure: Literal["kron", "full", "diag"] = "kron"  # curvature of the last layer
    prior_precision: float = 1.0  # initial (or, with prior_optimization = "none", fixed) prior precision
    prior_optimization: Literal["marglik", "gridsearch", "none"] = "marglik"  # gridsearch: on val NLL
    test_samples: int = 32  # S last-layer weight draws per prediction

    def check(self) -> None:
        missing = laplace_missing()
        if missing:
            raise ValueError(f"plugin: {missing}")
        require(self.prior_precision > 0, "prior_precision", "a positive number", self.prior_precision)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)


@MODELS.register("laplace")
class LastLayerLaplace(ModelPlugin):
    """Last-layer Laplace (laplace-torch, optional extra) on the deterministic network: S weight samples."""

    Params = LaplaceParams
    stochastic = True
    tiny = {"test_samples": 4}

    @classmethod
    def missing_requirement(cls) -> str | None:
        return laplace_missing()

    def fit(self, data):
        try:
            from laplace import Laplace
        except ImportError as exc:
            raise ConfigError(laplace_missing() or f"laplace-torch failed to import: {exc}") from exc
        from torch.utils.data import DataLoader, TensorDataset

        p = self.params
        self.base, meta = pretrained_base(self.ctx, data)
        self.record_stage("train", meta)
        bs = self.ctx.train.batch_size
        train = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=bs)
        with peak_memory(self.device) as mem:
            start = time.perf_counter()
            la = Laplace(self.base, "classification", subset_of_weights="last_layer",
                         hessian_structure=p.hessian_structure, prior_precision=p.prior_precision,
                         enable_backprop=True)
            la.fit(train)
            with warnings.catch_warnings():  # it always warns that its default link is probit
                warnings.filterwarnings("ignore", message=".*link_approx.*")
                if p.prior_optimization == "marglik":
                    la.optimize_prior_precision(method="marglik", pred_type="glm")
                elif p.prior_optimization == "gridsearch":
                    if len(data.val) == 0:
                        raise ConfigError("laplace: prior_optimization = 'gridsearch' needs a validation "
                                          "split (data.val_fraction > 0)")
                    val = DataLoader(TensorDataset(data.val.x, data.val.y), batch_size=bs)
                    # the grid's objective is the validation NLL of laplace-torch's probit predictive
                    la.optimize_prior_precision(method="gridsearch", val_loader=val, pred_type="glm",
                                                link_approx="probit", progress_bar=False)
            seconds = time.perf_counter() - start
        self.la = la
        self.features = la.model  # laplace-torch's copy of the network, returning penultimate features
        self.features.eval()
        last = la.model.last_layer
        self.out_features, self.in_features = last.weight.shape
        self.has_bias = last.bias is not None
        self.prior_precision_fitted = float(torch.as_tensor(la.prior_precision).mean())
        self.record_stage("laplace", {"seconds": seconds, "cached": False, "peak_memory_mb": mem.mb,
                                      "memory_method": mem.method})
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        _, feats = self.features.forward_with_features(x)  # [B, D], differentiable in x
        theta = self.la.sample(n_samples).detach().to(feats.dtype)  # [S, C*D (+ C)]
        c, d = self.out_features, self.in_features
        weight = theta[:, :c * d].reshape(n_samples, c, d)
        logits = torch.einsum("bd,scd->sbc", feats, weight)
        if self.has_bias:
            logits = logits + theta[:, c * d:c * d + c].unsqueeze(1)
        return logits

    def networks(self):
        return [self.features]

    def trainable_params(self) -> int:
        """The stage fitted here: the last layer's weights (posterior mean and curvature)."""
        return self.out_features * self.in_features + (self.out_features if self.has_bias else 0)

    def deterministic_base(self):
        return self.base

    def capabilities(self):
        caps = super().capabilities()
        caps.notes["laplace"] = (f"last-layer Laplace, {self.params.hessian_structure} GGN curvature, prior "
                                 f"precision {self.prior_precision_fitted:.4g} ({self.params.prior_optimization})")
        return caps
