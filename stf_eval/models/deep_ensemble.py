"""Deep ensemble (Lakshminarayanan et al. 2017): M networks of the same recipe from different seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import require
from ..registry import MODELS
from ..seeding import derive_seed
from .base import ModelPlugin, pretrained_base


@dataclass(frozen=True)
class DeepEnsembleParams:
    members: int = 5  # M networks; the samples of a prediction are the members (S = M)

    def check(self) -> None:
        require(self.members >= 2, "members", "an integer >= 2", self.members)


def member_seed(seed: int, m: int) -> int:
    """Member 0 trains with the cell seed (it is the deterministic base of that seed, shared through the
    cache); member m >= 1 with ``derive_seed(seed, "ensemble-member", m)``, the run's one seed scheme, so
    no member shares an initialisation with another model's training by accident (seed + 1000 m did
    for cells whose seeds differ by 1000)."""
    return seed if m == 0 else derive_seed(seed, "ensemble-member", m)


@MODELS.register("deep_ensemble")
class DeepEnsemble(ModelPlugin):
    """M independently seeded copies of the [net]/[train] recipe; predictions average their softmax.

    Each member is cached on its own (member 0 is the ``deterministic`` model's network). The
    "train" stage reports the sum of the members' training seconds and the largest peak memory.
    """

    Params = DeepEnsembleParams
    stochastic = True
    tiny = {"members": 2}

    def fit(self, data):
        self.members = []
        seconds, peak, cached = 0.0, 0.0, True
        method = ""
        for m in range(self.params.members):
            net, meta = pretrained_base(self.ctx, data, seed=member_seed(self.ctx.seed, m))
            self.members.append(net)
            seconds += float(meta.get("seconds", 0.0))
            peak = max(peak, float(meta.get("peak_memory_mb", 0.0)))
            cached = cached and bool(meta.get("cached", False))
            method = meta.get("memory_method", method)
        self.record_stage("train", {"seconds": seconds, "cached": cached, "peak_memory_mb": peak,
                                    "memory_method": method})
        return self

    @property
    def n_samples(self) -> int:
        return self.params.members

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """The members' logits; asked for S != M, members are taken in turn (m = s mod M)."""
        m = len(self.members)
        outs = [net(x) for net in self.members[:min(n_samples, m)]]
        return torch.stack([outs[s % m] for s in range(n_samples)])

    def networks(self):
        return list(self.members)

    def deterministic_base(self):
        return self.members[0]

    def capabilities(self):
        caps = super().capabilities()
        caps.notes["member_seeds"] = [member_seed(self.ctx.seed, m) for m in range(self.params.members)]
        return caps
