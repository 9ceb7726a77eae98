"""ResNet-18 for 32x32 inputs (CIFAR variant: 3x3 stem, stride 1, no max-pool)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..params import require
from ..registry import NETS
from .common import Normalize


@dataclass(frozen=True)
class ResNet18Params:
    """``[net] options`` of ``resnet18``, validated when the suite file is read."""

    width: int = 64  # channels of the first stage (doubled at each of the next three)

    def check(self) -> None:
        require(self.width >= 1, "width", "a positive integer", self.width)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, input_shape, num_classes, mean, std, width: int = 64):
        super().__init__()
        c = input_shape[0]
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks = []
        in_ch = width
        for i, mult in enumerate((1, 2, 4, 8)):
            out_ch = width * mult
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.stem(self.normalize(x))
        return self.fc(self.flatten(self.pool(self.layers(x))))


@NETS.register("resnet18")
def resnet18(input_shape, num_classes, mean, std, width: int = 64) -> nn.Module:
    """CIFAR ResNet-18 (He et al. 2016, the 3x3-stem variant used for 32x32 images)."""
    return CifarResNet18(input_shape, num_classes, mean, std, width=width)


resnet18.Params = ResNet18Params
