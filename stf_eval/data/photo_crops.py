"""Far OOD: random crops of the two natural photographs bundled with scikit-learn (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..params import require
from ..registry import DATASETS
from .base import DatasetPlugin, conform
from .noise import _shape_and_size, _unlabelled


@dataclass(frozen=True)
class PhotoCropsParams:
    min_side: int = 32  # smallest crop side, in pixels of the 427x640 photographs
    max_side: int = 160  # largest crop side

    def check(self) -> None:
        require(8 <= self.min_side <= 427, "min_side", "an integer in [8, 427]", self.min_side)
        require(self.min_side <= self.max_side <= 427, "max_side", "an integer in [min_side, 427]",
                self.max_side)


@DATASETS.register("photo_crops")
class PhotoCrops(DatasetPlugin):
    """Far OOD: random square crops of sklearn's two sample photographs, in the in-distribution shape.

    Side and position drawn at random (china.jpg, flower.jpg, 427x640); resized and converted (grey for
    1-channel data) with ``data.base.conform``."""

    Params = PhotoCropsParams
    ood_only = True

    def load(self, like=None, size=None, seed=0):
        from sklearn.datasets import load_sample_images

        shape, n = _shape_and_size("photo_crops", like, size)
        photos = [torch.as_tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
                  for img in load_sample_images().images]
        rng = np.random.default_rng(seed)
        crops = []
        for _ in range(n):
            photo = photos[rng.integers(len(photos))]
            _, h, w = photo.shape
            side = int(rng.integers(self.params.min_side, min(self.params.max_side, h, w) + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(conform(photo[None, :, top:top + side, left:left + side], shape))
        return _unlabelled(torch.cat(crops))
