"""A multilayer perceptron on flattened images."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..params import require
from ..registry import NETS
from .common import Normalize


@dataclass(frozen=True)
class MlpParams:
    """``[net] options`` of ``mlp``, validated when the suite file is read."""

    hidden: tuple[int, ...] = (256, 128)  # width of each hidden layer (empty: a linear model)

    def check(self) -> None:
        require(all(h >= 1 for h in self.hidden), "hidden", "a list of positive integers", list(self.hidden))


@NETS.register("mlp")
def mlp(input_shape, num_classes, mean, std, hidden: tuple = (256, 128)) -> nn.Module:
    """Normalize -> Flatten -> [Linear -> ReLU] per hidden width -> Linear."""
    c, h, w = input_shape
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    width = c * h * w
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        width = int(size)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


mlp.Params = MlpParams
