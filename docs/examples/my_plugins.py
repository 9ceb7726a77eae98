"""A complete, small example of each plugin kind: net, dataset, model and suite (docs/plugins.md).

Importing this module registers them; tests/test_plugins_example.py runs a suite file that uses all four.
In a package of your own, name this module in an entry point instead (see docs/plugins.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stf_eval.data.base import DatasetPlugin, LoadedDataset
from stf_eval.models.base import ModelPlugin, pretrained_base
from stf_eval.nets.common import Normalize
from stf_eval.params import require
from stf_eval.registry import DATASETS, MODELS, NETS, SUITES
from stf_eval.seeding import torch_generator
from stf_eval.suites.base import SuitePlugin

# -- net: a builder function (input_shape, num_classes, mean, std, **options) -> nn.Module ------------------


@dataclass(frozen=True)
class WideLinearParams:
    hidden: int = 32  # width of the one hidden layer

    def check(self) -> None:
        require(self.hidden >= 1, "hidden", "a positive integer", self.hidden)


@NETS.register("example_one_hidden")
def one_hidden(input_shape, num_classes, mean, std, hidden: int = 32) -> nn.Module:
    """Normalize -> Flatten -> Linear -> ReLU -> Linear (an example net plugin)."""
    c, h, w = input_shape
    return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


one_hidden.Params = WideLinearParams  # [net] options are validated through it when the file is read


# -- dataset: load(like, size, seed) -> LoadedDataset with images in [0, 1], shape [N, C, H, W] --------------


@dataclass(frozen=True)
class StripesParams:
    n: int = 600  # images to generate
    side: int = 6  # images are 1 x side x side

    def check(self) -> None:
        require(self.n >= 20, "n", "an integer >= 20", self.n)
        require(self.side >= 2, "side", "an integer >= 2", self.side)


@DATASETS.register("example_stripes")
class Stripes(DatasetPlugin):
    """Noisy images with a bright row (class 0) or a bright column (class 1): an example dataset plugin."""

    Params = StripesParams

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        p = self.params
        gen = torch_generator(seed, "example_stripes")  # the same seed gives the same images
        n = size or p.n
        y = torch.randint(0, 2, (n,), generator=gen)
        pos = torch.randint(0, p.side, (n,), generator=gen)
        x = 0.3 * torch.rand((n, 1, p.side, p.side), generator=gen)
        for i in range(n):
            if y[i] == 0:
                x[i, 0, pos[i], :] = 1.0
            else:
                x[i, 0, :, pos[i]] = 1.0
        return LoadedDataset(x=x.clamp(0, 1), y=y, num_classes=2, class_names=("row", "column"))


# -- model: fit(data) -> self; sample_logits(x, S) -> [S, B, C]; networks() -> [modules] -------------------


@dataclass(frozen=True)
class LogitNoiseParams:
    sigma: float = 0.5  # std of the Gaussian noise added to the logits of each sample
    test_samples: int = 8  # S at evaluation

    def check(self) -> None:
        require(self.sigma >= 0, "sigma", "a number >= 0", self.sigma)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)


@MODELS.register("example_logit_noise")
class LogitNoise(ModelPlugin):
    """The shared deterministic network with Gaussian noise on its logits: an example model plugin."""

    Params = LogitNoiseParams
    stochastic = True  # n_samples is then params.test_samples

    def fit(self, data):
        # stage 1: the file's [net]/[train] recipe, cached and shared with the deterministic model
        self.net, meta = pretrained_base(self.ctx, data)
        self.record_stage("pretrain", meta)
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        logits = self.net(x)  # differentiable: attacks take gradients through this
        noise = torch.randn((n_samples, *logits.shape), device=logits.device)  # the runner seeds this draw
        return logits.unsqueeze(0) + self.params.sigma * noise

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.net


# -- suite: run(model, data, ctx) records metrics through ctx ------------------------------------------------


@dataclass(frozen=True)
class MarginParams:
    min_margin: float = 0.5  # margins below this count as "unsure"

    def check(self) -> None:
        require(0 <= self.min_margin <= 1, "min_margin", "a number in [0, 1]", self.min_margin)


@SUITES.register("example_margin")
class Margin(SuitePlugin):
    """Mean top-1 minus top-2 probability of the predictive mean on test: an example suite plugin."""

    Params = MarginParams
    metrics = ("accuracy", "mean_margin", "unsure_fraction")

    def skip_reason(self, model, data):
        return None if data.num_classes >= 2 else "needs at least two classes"

    def run(self, model, data, ctx) -> None:
        logits = ctx.samples("test")  # [S, N, C], computed once per cell and shared with other suites
        probs = torch.softmax(logits, dim=-1).mean(dim=0)
        top2 = probs.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).numpy()
        ctx.record("accuracy", float((probs.argmax(-1) == data.test.y).float().mean()), n=len(margin))
        ctx.record("mean_margin", float(margin.mean()), n=len(margin))
        ctx.record("unsure_fraction", float((margin < self.params.min_margin).mean()), n=len(margin))
        ctx.save_examples({"test/margin": margin.astype("float32")})
        ctx.note(f"unsure: margin below {self.params.min_margin}")
