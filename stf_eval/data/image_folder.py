"""Any folder of images laid out one sub-folder per class (torchvision ImageFolder)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from ..params import require
from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset


@dataclass(frozen=True)
class ImageFolderParams:
    root: str = ""  # root/<class>/<image>; required
    test_root: str = ""  # optional official test folder with the same classes
    size: int = 32  # images are resized to size x size
    channels: int = 3  # 1 = grayscale, 3 = RGB

    def check(self) -> None:
        require(bool(self.root), "root", "a folder with one sub-folder per class", self.root)
        require(self.size >= 4, "size", "an integer >= 4", self.size)
        require(self.channels in (1, 3), "channels", "1 or 3", self.channels)


def _read(folder: str, size: int, channels: int):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder!r} does not exist")
    steps = [transforms.Resize((size, size))]
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    steps.append(transforms.ToTensor())
    try:
        ds = ImageFolder(folder, transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"image folder {folder!r}: {exc}") from exc
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x = torch.stack(xs)
    if x.shape[1] != channels:  # e.g. grayscale files asked as RGB
        x = x[:, :1].expand(-1, channels, -1, -1).contiguous()
    return x, torch.as_tensor(np.asarray(ys), dtype=torch.long), ds.classes


@DATASETS.register("image_folder")
class ImageFolderSet(DatasetPlugin):
    """Your own images: root/<class>/<file>, resized to size x size, loaded into memory."""

    Params = ImageFolderParams

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        p = self.params
        x, y, classes = _read(p.root, p.size, p.channels)
        x_test = y_test = None
        if p.test_root:
            x_test, y_test, test_classes = _read(p.test_root, p.size, p.channels)
            if list(test_classes) != list(classes):
                raise DataError(f"image folder {p.test_root!r}: classes differ from {p.root!r}")
        return LoadedDataset(x=x, y=y, num_classes=len(classes), x_test=x_test, y_test=y_test,
                             class_names=tuple(classes))
