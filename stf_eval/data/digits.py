"""scikit-learn's bundled 1,797 8x8 handwritten digits: the smallest real dataset, for tests."""

from __future__ import annotations

import torch

from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset


@DATASETS.register("digits")
class Digits(DatasetPlugin):
    """1,797 real 8x8 digits (UCI optdigits via scikit-learn), pixel values 0..16 scaled to [0, 1]."""

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(d.target, dtype=torch.long)
        return LoadedDataset(x=x, y=y, num_classes=10, class_names=tuple(str(i) for i in range(10)))
