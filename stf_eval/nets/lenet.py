"""A LeNet-style CNN: two conv + pool stages and two linear layers."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..params import require
from ..registry import NETS
from .common import MaxPool2d, Normalize


@dataclass(frozen=True)
class LenetParams:
    """``[net] options`` of ``lenet``, validated when the suite file is read."""

    channels: tuple[int, ...] = (16, 32)  # output channels of each conv stage
    hidden: int = 128  # width of the hidden linear layer
    batch_norm: bool = False  # BatchNorm2d after each conv

    def check(self) -> None:
        require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
                "a non-empty list of positive integers", list(self.channels))
        require(self.hidden >= 1, "hidden", "a positive integer", self.hidden)


@NETS.register("lenet")
def lenet(input_shape, num_classes, mean, std, channels: tuple = (16, 32), hidden: int = 128,
          batch_norm: bool = False) -> nn.Module:
    """Conv(5x5, padding 2) -> [BN] -> ReLU -> MaxPool(2), twice; then Linear -> ReLU -> Linear.

    Small inputs (8x8 digits) keep their size through padding; pooling stops at 1x1.
    """
    c, h, w = input_shape
    layers: list[nn.Module] = [Normalize(mean, std)]
    in_ch = c
    for out_ch in channels:
        layers.append(nn.Conv2d(in_ch, int(out_ch), kernel_size=5, padding=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(out_ch)))
        layers.append(nn.ReLU())
        if h >= 2 and w >= 2:
            layers.append(MaxPool2d(2))
            h, w = h // 2, w // 2
        in_ch = int(out_ch)
    layers += [nn.Flatten(), nn.Linear(in_ch * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


lenet.Params = LenetParams
