"""MC dropout (Gal & Ghahramani 2016): a network trained with dropout that keeps dropping at test time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..bayes import replace_module, sample_logits, traced_calls
from ..errors import ConfigError
from ..params import as_dict, require
from ..registry import MODELS
from ..training import train_deterministic
from .base import ModelPlugin


class AlwaysDropout(nn.Module):
    """Dropout that samples in eval mode too (MC dropout must keep sampling after ``.eval()``)."""

    samples_in_eval = True  # bayes.sampling: the S-sample pass expands the batch before this module

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # keep a unit with probability 1 - p and scale it by 1 / (1 - p), as F.dropout does; the mask is one
        # uniform draw compared with p, written in place: F.dropout's bernoulli_ mask costs ~3x more on
        # CPU, where masking the S-fold expanded activations is a third to a half of MC dropout's time
        keep = uniform_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        if torch.is_grad_enabled() and x.requires_grad:
            return x * keep
        return keep.mul_(x)  # the mask is ours: no second fresh S-fold activation (see bayes.sampling)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def uniform_like(x: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws of ``x``'s shape, float32 (24 random bits each, as ``torch.rand_like``).

    On the CPU they come from numpy's PCG64, seeded by one draw of torch's generator (so ``seeded``
    blocks and ``torch.manual_seed`` govern them as they govern every other draw): it fills a large
    mask about twice as fast as ``torch.rand_like``'s Mersenne twister on this machine, whatever the
    thread count. Other devices and dtypes use ``torch.rand_like``.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return torch.rand_like(x)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).random(tuple(x.shape), dtype=np.float32))


def insert_dropout(net: nn.Module, placement: str, p: float, example_input: torch.Tensor) -> nn.Module:
    """Put ``AlwaysDropout(p)`` after every nn.ReLU ("hidden") or before the last layer applied ("last")."""
    if placement == "hidden":
        relus = [name for name, m in net.named_modules() if isinstance(m, nn.ReLU)]
        if not relus:
            raise ConfigError("mc_dropout.placement 'hidden': the network has no nn.ReLU module; use 'last'")
        for name in relus:
            replace_module(net, name, nn.Sequential(net.get_submodule(name), AlwaysDropout(p)))
    else:
        calls = traced_calls(net, example_input)
        if not calls:
            raise ConfigError("mc_dropout: the network applies no Conv2d or Linear layer")
        replace_module(net, calls[-1], nn.Sequential(AlwaysDropout(p), net.get_submodule(calls[-1])))
    return net


@dataclass(frozen=True)
class McDropoutParams:
    p: float = 0.2  # dropout rate
    placement: Literal["hidden", "last"] = "hidden"  # after every ReLU, or before the output layer
    test_samples: int = 16  # S at evaluation

    def check(self) -> None:
        require(0.0 < self.p < 1.0, "p", "a number in (0, 1)", self.p)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)


@MODELS.register("mc_dropout")
class McDropout(ModelPlugin):
    """Trained with the [net]/[train] recipe plus dropout; predictions average S dropout masks."""

    Params = McDropoutParams
    stochastic = True
    tiny = {"test_samples": 4}

    def fit(self, data):
        torch.manual_seed(self.ctx.seed)
        net = self.ctx.new_net(data)
        self.net = insert_dropout(net, self.params.placement, self.params.p, data.train.x[:1]).to(self.device)
        key_params = {k: v for k, v in as_dict(self.params).items() if k != "test_samples"}
        spec = self.ctx.key_spec(data, kind="mc_dropout", params=key_params)

        def train():
            return train_deterministic(self.net, data.train, self.ctx.train, self.device, self.ctx.seed,
                                       desc=f"train mc_dropout s{self.ctx.seed}"), {}

        self.run_stage("train", spec, self.net, train)
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return sample_logits(self.net, x, n_samples)  # one expanded pass; dropout draws a mask per row

    def networks(self):
        return [self.net]
