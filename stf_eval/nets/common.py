"""Pieces every architecture shares, and the builder that resolves a net name or user callable."""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from ..config import NetConfig
from ..errors import ConfigError
from ..registry import NETS


class Normalize(nn.Module):
    """Per-channel standardisation inside the network, so attacks and users feed [0, 1] images."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def resolve_builder(arch: str):
    if ":" in arch:
        module_name, _, fn_name = arch.partition(":")
        try:
            return getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"net.arch: cannot import user network {arch!r}: {exc}") from exc
    return NETS.get(arch)


def build_net(cfg: NetConfig, input_shape, num_classes: int, mean, std) -> nn.Module:
    """Instantiate the configured architecture; options are checked against the builder's signature."""
    builder = resolve_builder(cfg.arch)
    sig = inspect.signature(builder)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key in cfg.options:
        if not accepts_any and key not in sig.parameters:
            allowed = [p for p in sig.parameters if p not in ("input_shape", "num_classes", "mean", "std")]
            raise ConfigError(f"net.options: unknown key {key!r} for {cfg.arch!r} (allowed: {', '.join(allowed)})")
    try:
        net = builder(input_shape=tuple(input_shape), num_classes=num_classes, mean=mean, std=std,
                      **cfg.options)
    except TypeError as exc:
        raise ConfigError(f"net.options: {cfg.arch!r} rejected its options: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"net.arch: {cfg.arch!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net
