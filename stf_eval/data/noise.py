"""Synthetic far-OOD sets: uniform and Gaussian noise images of the in-distribution shape."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError
from ..params import require
from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset

DEFAULT_SIZE = 1000


def _shape_and_size(name: str, like, size) -> tuple[tuple[int, int, int], int]:
    if like is None:
        raise DataError(f"dataset {name!r} is an OOD-only set: use it under [data.ood.NAME], not as data.dataset")
    return tuple(int(s) for s in like), int(size or DEFAULT_SIZE)


def _unlabelled(x: torch.Tensor) -> LoadedDataset:
    # OOD sets have no class of the in-distribution task: label -1, one pseudo-class
    return LoadedDataset(x=x.contiguous(), y=torch.full((x.shape[0],), -1, dtype=torch.long), num_classes=1)


@DATASETS.register("uniform_noise")
class UniformNoise(DatasetPlugin):
    """Far OOD: every pixel drawn independently from U(0, 1)."""

    ood_only = True

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        shape, n = _shape_and_size("uniform_noise", like, size)
        gen = torch.Generator().manual_seed(seed)
        return _unlabelled(torch.rand((n, *shape), generator=gen))


@dataclass(frozen=True)
class GaussianNoiseParams:
    mean: float = 0.5  # pixel mean before clipping
    std: float = 0.25  # pixel standard deviation before clipping

    def check(self) -> None:
        require(0.0 <= self.mean <= 1.0, "mean", "a number in [0, 1]", self.mean)
        require(self.std > 0.0, "std", "a positive number", self.std)


@DATASETS.register("gaussian_noise")
class GaussianNoise(DatasetPlugin):
    """Far OOD: every pixel drawn independently from N(mean, std^2), clipped to [0, 1]."""

    Params = GaussianNoiseParams
    ood_only = True

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        shape, n = _shape_and_size("gaussian_noise", like, size)
        gen = torch.Generator().manual_seed(seed)
        x = self.params.mean + self.params.std * torch.randn((n, *shape), generator=gen)
        return _unlabelled(x.clamp(0.0, 1.0))
