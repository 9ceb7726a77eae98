"""What a fitted variational model reports about its posterior: sigma per layer and SVI convergence.

The figures are kept in the training stage's cache metadata (so a warm cache reports what the cold
run measured) and turned into tidy records by ``posterior_records`` (the efficiency suite writes a
model's ``extra_records``; docs/models.md lists the metrics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import VariationalLayer


def sigma_summary(net: nn.Module, names: list[str]) -> dict[str, dict[str, float]]:
    """{layer name: {"mean": ..., "max": ...}} of sigma = softplus(rho) over weights and biases."""
    out = {}
    for name in names:
        layer = net.get_submodule(name)
        if not isinstance(layer, VariationalLayer):
            raise TypeError(f"{name} is not a variational layer")
        sigma = [F.softplus(p.detach()).flatten() for p in (layer.weight_rho, layer.bias_rho) if p is not None]
        flat = torch.cat(sigma)
        out[name] = {"mean": float(flat.mean()), "max": float(flat.max())}
    return out


def posterior_records(meta: dict, stage: str) -> list[dict]:
    """Records of a stage's metadata: ``posterior_sigma_mean`` / ``posterior_sigma_max`` per layer
    (group = layer name), ``svi_nll`` / ``svi_kl`` per epoch (group = "epoch k")."""
    rows = []
    for name, s in (meta.get("sigma") or {}).items():
        rows.append({"metric": "posterior_sigma_mean", "value": s["mean"], "group": name, "stage": stage,
                     "note": "mean of softplus(rho) over the layer's weights and biases at the end of training"})
        rows.append({"metric": "posterior_sigma_max", "value": s["max"], "group": name, "stage": stage})
    for metric, values, note in (("svi_nll", meta.get("nll_per_epoch") or [], "mean training NLL of the epoch"),
                                 ("svi_kl", meta.get("kl_per_epoch") or [], "mean KL(q || prior) / N_train")):
        for epoch, value in enumerate(values, start=1):
            if value is not None and math.isfinite(value):
                rows.append({"metric": metric, "value": value, "group": f"epoch {epoch}", "stage": stage,
                             "note": note})
    return rows
