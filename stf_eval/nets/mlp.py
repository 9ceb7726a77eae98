"""A multilayer perceptron on flattened images."""

from __future__ import annotations

from torch import nn

from ..registry import NETS
from .common import Normalize


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
