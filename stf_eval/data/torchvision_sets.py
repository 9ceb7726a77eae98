"""The torchvision datasets (MNIST, FashionMNIST, KMNIST, CIFAR-10/100, SVHN) read from a data root.

Nothing is downloaded unless ``download = true`` is set explicitly: runs here and in CI are offline,
and a missing dataset gets a one-line error saying how to obtain it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset


def default_data_root() -> str:
    return os.environ.get("STF_EVAL_DATA") or str(Path.home() / ".cache" / "stf-eval" / "data")


@dataclass(frozen=True)
class TorchvisionParams:
    root: str = ""  # empty: $STF_EVAL_DATA or ~/.cache/stf-eval/data
    download: bool = False  # fetch the files from the internet when missing


def _to_tensor(data, layout: str) -> torch.Tensor:
    arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    x = torch.as_tensor(arr, dtype=torch.float32) / 255.0
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


class _TorchvisionSet(DatasetPlugin):
    Params = TorchvisionParams
    tv_name = ""
    layout = "NHW"
    num_classes = 10

    def _open(self, root: str, train: bool, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.tv_name)
        if self.tv_name == "SVHN":
            return cls(root, split="train" if train else "test", download=download)
        return cls(root, train=train, download=download)

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        root = os.path.expanduser(self.params.root or default_data_root())
        name = self.registered_name  # type: ignore[attr-defined]
        try:
            train = self._open(root, True, self.params.download)
            test = self._open(root, False, self.params.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            how = ("download failed (is there internet?)" if self.params.download else
                   "set download = true in the dataset's options (needs internet) or put the "
                   "torchvision files there")
            raise DataError(f"dataset {name!r} not found under {root}: {how} "
                            f"[{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}]") from exc
        labels = "labels" if self.tv_name == "SVHN" else "targets"
        classes = tuple(getattr(train, "classes", ()) or ())
        return LoadedDataset(
            x=_to_tensor(train.data, self.layout),
            y=torch.as_tensor(np.asarray(getattr(train, labels)), dtype=torch.long),
            x_test=_to_tensor(test.data, self.layout),
            y_test=torch.as_tensor(np.asarray(getattr(test, labels)), dtype=torch.long),
            num_classes=self.num_classes,
            class_names=tuple(str(c) for c in classes),
        )


def _make(name: str, tv_name: str, layout: str, num_classes: int, shape: tuple, sizes: tuple, doc: str) -> type:
    # shape and (train, test) sizes let `stf-eval plan` price a run before the files are downloaded
    cls = type(tv_name + "Plugin", (_TorchvisionSet,),
               {"tv_name": tv_name, "layout": layout, "num_classes": num_classes, "__doc__": doc,
                "plan_info": (shape, *sizes)})
    return DATASETS.register(name)(cls)


_make("mnist", "MNIST", "NHW", 10, (1, 28, 28), (60000, 10000), "torchvision MNIST (70,000 28x28 digits).")
_make("fashion_mnist", "FashionMNIST", "NHW", 10, (1, 28, 28), (60000, 10000),
      "torchvision FashionMNIST (28x28 clothing).")
_make("kmnist", "KMNIST", "NHW", 10, (1, 28, 28), (60000, 10000), "torchvision KMNIST (28x28 Kuzushiji characters).")
_make("cifar10", "CIFAR10", "NHWC", 10, (3, 32, 32), (50000, 10000), "torchvision CIFAR-10 (32x32 colour, 10 classes).")
_make("cifar100", "CIFAR100", "NHWC", 100, (3, 32, 32), (50000, 10000),
      "torchvision CIFAR-100 (32x32 colour, 100 classes).")
_make("svhn", "SVHN", "NCHW", 10, (3, 32, 32), (73257, 26032), "torchvision SVHN (32x32 house numbers).")
