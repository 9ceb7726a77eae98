"""Near OOD for digit data: in-distribution digits turned by 90 degrees (or mirrored), never test digits.

The images come from the in-distribution dataset itself, so stroke width, contrast, background and
size match exactly and only the shape of the glyph is foreign: a semantic shift with no low-level cue.
They are drawn from the **train and val splits only** (the data plan hands this plugin that pool), so
the set shares no example with the test split it is compared with. Classes whose turned glyph can
still read as a digit (0 and 8 stay ovals, 1 stays a stroke) are left out by default; see docs/ood.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import DataError
from ..params import require
from ..registry import DATASETS
from .base import DatasetPlugin, Split
from .noise import _shape_and_size, _unlabelled


@dataclass(frozen=True)
class RotatedDigitsParams:
    transform: Literal["rot90", "hflip"] = "rot90"  # rot90: +-90 degrees, direction drawn per image
    exclude_classes: tuple[int, ...] = (0, 1, 8)  # in-distribution classes not used

    def check(self) -> None:
        for c in self.exclude_classes:
            require(c >= 0, "exclude_classes", "non-negative class indices", list(self.exclude_classes))


@DATASETS.register("rotated_digits")
class RotatedDigits(DatasetPlugin):
    """Near OOD: in-distribution train/val digits turned by +-90 degrees, classes 0, 1, 8 left out.

    Or mirrored (``transform = "hflip"``). Never an example of the test split."""

    Params = RotatedDigitsParams
    ood_only = True
    #: the data plan passes ``pool`` = the in-distribution train and val splits (never test)
    needs_id_pool = True

    def load(self, like=None, size=None, seed=0, pool: Split | None = None):
        shape, n = _shape_and_size("rotated_digits", like, size)
        if pool is None:
            raise DataError("dataset 'rotated_digits' is derived from the in-distribution train/val "
                            "splits: it needs the data plan (use it under [data.ood.NAME])")
        keep = ~np.isin(pool.y.numpy(), np.asarray(self.params.exclude_classes, dtype=np.int64))
        candidates = np.flatnonzero(keep)
        if len(candidates) == 0:
            raise DataError("dataset 'rotated_digits': exclude_classes leaves no in-distribution image")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
        x = pool.x[torch.as_tensor(pick)]
        if self.params.transform == "hflip":
            x = torch.flip(x, dims=(3,))
        else:
            turn_left = torch.as_tensor(rng.integers(0, 2, size=len(pick)).astype(bool))
            x = torch.where(turn_left[:, None, None, None], torch.rot90(x, 1, dims=(2, 3)),
                            torch.rot90(x, -1, dims=(2, 3)))
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"dataset 'rotated_digits': needs square images, got {tuple(x.shape[1:])}")
        return _unlabelled(x)
