"""Control for DP-SGD: the same recipe trained without privacy (is a privacy/utility gap DP, or the recipe?).

Everything dp_sgd does except the two privacy mechanisms: the same architecture (batch-norm replaced
as for opacus), the same fixed input normalisation, optimiser, learning rate, momentum, epochs and
Poisson batch sampling (opacus' sampler), and the same gradient scaling (summed loss over the expected
batch size) - with no per-example clipping and no noise. Its defaults are dp_sgd's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..params import require
from ..registry import MODELS
from .dp_sgd import DpSgd, DpSgdParams

_DP = DpSgdParams()


@dataclass(frozen=True)
class SgdTwinParams:
    epochs: int = _DP.epochs
    lr: float = _DP.lr
    optimizer: Literal["sgd", "adam"] = _DP.optimizer
    momentum: float = _DP.momentum  # sgd only
    batch_size: int = _DP.batch_size  # expected batch size (Poisson sampling with rate batch_size / N_train)

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(0.0 <= self.momentum < 1.0, "momentum", "a number in [0, 1)", self.momentum)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)


@MODELS.register("sgd_twin")
class SgdTwin(DpSgd):
    """dp_sgd's recipe without clipping and noise: the non-private twin of dp_sgd."""

    Params = SgdTwinParams
    tiny = {k: v for k, v in DpSgd.tiny.items() if k in ("epochs", "batch_size")}
    private = False

    def capabilities(self):
        caps = super(DpSgd, self).capabilities()
        caps.notes.update({"private": False, "clipping": "off", "noise_multiplier": 0.0})
        return caps
