"""The deterministic network with a temperature fitted on the validation split (Guo et al. 2017)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..params import require
from ..profiling import peak_memory
from ..registry import MODELS
from .base import ModelPlugin, pretrained_base


@dataclass(frozen=True)
class TemperatureParams:
    max_iter: int = 200  # LBFGS iterations on log T

    def check(self) -> None:
        require(self.max_iter >= 1, "max_iter", "an integer >= 1", self.max_iter)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T, so T stays positive)."""
    logits, labels = logits.detach().double(), labels.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


@MODELS.register("temperature_scaled")
class TemperatureScaled(ModelPlugin):
    """The shared deterministic base with its logits divided by a temperature fitted on validation data."""

    Params = TemperatureParams
    stochastic = False

    def fit(self, data):
        if len(data.val) == 0:
            raise ConfigError("temperature_scaled needs a validation split: set data.val_fraction > 0")
        self.net, meta = pretrained_base(self.ctx, data)
        self.record_stage("train", meta)
        if self.ctx.stages_only:  # planning or training stages only: the temperature is fitted at evaluation
            return self
        with peak_memory(self.device) as mem:
            start = time.perf_counter()
            with torch.no_grad():
                logits = torch.cat([self.net(data.val.x[i:i + self.ctx.train.eval_batch_size].to(self.device))
                                    for i in range(0, len(data.val), self.ctx.train.eval_batch_size)])
            self.temperature = fit_temperature(logits.cpu(), data.val.y, self.params.max_iter)
            seconds = time.perf_counter() - start
        self.record_stage("temperature", {"seconds": seconds, "cached": False, "peak_memory_mb": mem.mb,
                                          "memory_method": mem.method})
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return (self.net(x) / self.temperature).unsqueeze(0)

    def networks(self):
        return [self.net]

    def trainable_params(self) -> int:
        return 1  # the temperature is all its own stage fits

    def deterministic_base(self):
        return self.net

    def capabilities(self):
        caps = super().capabilities()
        caps.notes["temperature"] = self.temperature
        return caps
