"""The deterministic network: one forward pass, S = 1. The reference every other model is compared to."""

from __future__ import annotations

import torch

from ..registry import MODELS
from .base import ModelPlugin, pretrained_base


@MODELS.register("deterministic")
class Deterministic(ModelPlugin):
    """A network trained with the suite file's [net] and [train] recipe (softmax of its logits)."""

    stochastic = False

    def fit(self, data):
        self.net, meta = pretrained_base(self.ctx, data)
        self.record_stage("train", meta)
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return self.net(x).unsqueeze(0)

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.net
