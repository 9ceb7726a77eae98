"""Containers shared by every dataset plugin and the data plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..params import NoParams


@dataclass
class LoadedDataset:
    """What a dataset plugin returns: images in [0, 1], shape [N, C, H, W], integer labels.

    ``x_test``/``y_test`` are set when the source has an official test split (torchvision sets);
    otherwise the data plan draws the test split from ``x``.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()


@dataclass
class Split:
    """One split of the data: images in [0, 1] and labels, plus the source indices it came from."""

    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def fingerprint(self) -> str:
        """Content hash (images and labels): the part of a cache key that says what was trained on."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(self.x.detach().cpu().contiguous().numpy().tobytes())
            h.update(self.y.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def subset(self, idx: np.ndarray) -> Split:
        idx = np.asarray(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        src = self.indices[idx] if self.indices is not None else idx
        return Split(self.x[t], self.y[t], src)


@dataclass
class OodSet:
    name: str
    dataset: str
    group: str
    x: torch.Tensor


@dataclass
class DataBundle:
    """Everything the models and suites see: the split in-distribution data and the OOD sets."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train: Split  # members
    val: Split
    test: Split  # non-members
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ood: dict[str, OodSet] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    split_seed: int = 0

    def with_train(self, train: Split) -> DataBundle:
        """The same bundle with another training set (reference models of membership inference)."""
        from dataclasses import replace
        return replace(self, train=train)


class DatasetPlugin:
    """Base class of dataset plugins. ``load`` gets the in-distribution image shape when the set is
    used as an OOD set (so noise or crops can be made to match); in-distribution sets ignore it."""

    Params = NoParams
    #: True for sets that only make sense as OOD data (noise, crops): they need ``like``.
    ood_only = False
    #: ((C, H, W), train size, test size) when known without the files (planning a run before a download)
    plan_info: tuple | None = None

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def load(self, like: tuple[int, int, int] | None = None, size: int | None = None,
             seed: int = 0) -> LoadedDataset:
        raise NotImplementedError


def conform(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize and convert channels so that images of another dataset fit a network's input shape."""
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 3 and c == 1:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        elif x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


def check_images(x: torch.Tensor, what: str) -> None:
    """Reject data the models cannot use, with one clear line."""
    if x.ndim != 4:
        raise DataError(f"{what}: expected images of shape [N, C, H, W], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{what}: contains NaN or infinite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(f"{what}: pixel values must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
