"""Last-layer BNN: STF-BNN's recipe applied to the output layer instead of the first one.

The natural contrast to STF-BNN: the same pretrained network, the same frozen body and the same SVI
stage, but the uncertainty sits where most "Bayesian last layer" methods put it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import MODELS
from .stf_bnn import ConvertedBNN, ConvertedBNNParams


@dataclass(frozen=True)
class LastLayerBnnParams(ConvertedBNNParams):
    layers: str | tuple[str, ...] = "last"  # the last Conv2d/Linear layer a forward pass applies


@MODELS.register("last_layer_bnn")
class LastLayerBnn(ConvertedBNN):
    """The last Conv2d/Linear layer a forward pass applies becomes Bayesian after pretraining."""

    Params = LastLayerBnnParams
