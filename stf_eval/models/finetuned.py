"""Control for STF-BNN: the deterministic base trained further for as many epochs as STF-BNN's stage 2.

STF-BNN spends ``svi_epochs`` extra epochs on the training split after the deterministic network is
trained. ``finetuned`` spends the same extra epochs fine-tuning every weight of that same network
(the shared pretrained base of the cell) with the [train] recipe's optimiser, so a gain of STF-BNN over
this control is not explained by more training alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..params import as_dict, require
from ..registry import MODELS
from ..seeding import derive_seed
from ..training import fit, make_optimizer
from .base import ModelPlugin, pretrained_base
from .stf_bnn import ConvertedBNNParams


@dataclass(frozen=True)
class FinetunedParams:
    epochs: int = ConvertedBNNParams().svi_epochs  # extra epochs: stf_bnn's default stage-2 budget
    lr: float = 0.0  # 0 = the [train] recipe's learning rate
    batch_size: int = 0  # 0 = the [train] recipe's batch_size

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.lr >= 0, "lr", "0 (the recipe's) or a positive number", self.lr)
        require(self.batch_size >= 0, "batch_size", "0 (the recipe's) or a positive integer", self.batch_size)


@MODELS.register("finetuned")
class Finetuned(ModelPlugin):
    """The shared deterministic base fine-tuned for ``epochs`` more epochs with the [train] recipe."""

    Params = FinetunedParams
    stochastic = False
    tiny = {"epochs": 1}

    def fit(self, data):
        p, recipe = self.params, self.ctx.train
        self.base_net, meta = pretrained_base(self.ctx, data)
        self.record_stage("pretrain", meta)
        self.net = copy.deepcopy(self.base_net)
        spec = self.ctx.key_spec(data, kind="finetuned", params=as_dict(p))
        seed = derive_seed(self.ctx.seed, "finetune")

        def train():
            torch.manual_seed(seed)
            opt = make_optimizer(self.net.parameters(), recipe, lr=p.lr or None)
            seconds = fit(self.net, data.train, epochs=p.epochs, batch_size=p.batch_size or recipe.batch_size,
                          optimizer=opt, device=self.device, seed=seed, schedule=recipe.schedule,
                          desc=f"finetune s{self.ctx.seed}")
            return seconds, {"extra_epochs": p.epochs}

        self.run_stage("finetune", spec, self.net, train)
        self.net.eval()
        return self

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return self.net(x).unsqueeze(0)

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.base_net
