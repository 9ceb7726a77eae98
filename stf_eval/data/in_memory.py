"""Images and labels handed over as tensors in this process (``stf_eval.evaluate(data=(x, y))``).

The data plan splits them like any other set (seeded, stratified train / val / test). The tensors
are checked and converted by ``stf_eval.api`` before the run; this plugin only looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..inprocess import lookup
from ..params import require
from ..registry import DATASETS
from .base import DatasetPlugin, LoadedDataset


@dataclass(frozen=True)
class InMemoryParams:
    ref: str = ""  # set by stf_eval.evaluate: the tensors' name for this run (a content hash)

    def check(self) -> None:
        require(bool(self.ref), "ref", "an in-process tensor reference (use stf_eval.evaluate)", self.ref)


@DATASETS.register("in_memory")
class InMemory(DatasetPlugin):
    """Images [N, C, H, W] in [0, 1] and integer labels passed to stf_eval.evaluate as (x, y)."""

    Params = InMemoryParams

    def load(self, like=None, size=None, seed=0) -> LoadedDataset:
        x, y, num_classes = lookup(self.params.ref, "data.options.ref")
        return LoadedDataset(x=x, y=y, num_classes=num_classes,
                             class_names=tuple(str(i) for i in range(num_classes)))
