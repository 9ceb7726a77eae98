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


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with faster paths for 2x2 windows of stride 2 on contiguous CPU tensors of even
    size, the pooling every LeNet step runs. On this torch build the NCHW kernel measured 4-6x slower
    than the channels-last one, about half of a LeNet prediction and a fifth of a training step.

    * Without a gradient: the maximum of the four strided views.
    * With one: ``_ChannelsLastPool2x2``, torch's channels-last kernel on a copy, then the gradient
      scattered to the recorded winners (2x faster forward and backward together).

    A maximum only selects, so both give torch's values exactly, NaN included, and the same winner on
    ties (the first in the window), hence the same gradients (tests/test_core_pieces.py). Other windows,
    devices and layouts run torch's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._pairs_of(2) and not self.return_indices and not self.ceil_mode and x.dim() == 4
                and x.device.type == "cpu" and x.is_contiguous() and x.shape[-1] % 2 == 0
                and x.shape[-2] % 2 == 0):
            if torch.is_grad_enabled() and x.requires_grad:
                return _ChannelsLastPool2x2.apply(x)
            out = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])  # one fresh tensor, then in place
            torch.maximum(out, x[..., 1::2, 0::2], out=out)
            return torch.maximum(out, x[..., 1::2, 1::2], out=out)
        return super().forward(x)

    def _pairs_of(self, k: int) -> bool:
        pair = nn.modules.utils._pair
        return (pair(self.kernel_size) == (k, k) and pair(self.stride or self.kernel_size) == (k, k)
                and pair(self.padding) == (0, 0) and pair(self.dilation) == (1, 1))


class _ChannelsLastPool2x2(torch.autograd.Function):
    """2x2 / stride 2 max pool of an NCHW tensor through torch's channels-last kernel.

    The winners' indices (flat positions in each H x W plane, whatever the layout) are kept; the
    backward writes each output gradient to its winner. The windows do not overlap, so every input
    position receives at most one gradient: a scatter, the same sums as torch's backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, idx = torch.nn.functional.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), 2)
        ctx.save_for_backward(idx.contiguous())
        ctx.input_shape = x.shape
        return out.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (idx,) = ctx.saved_tensors
        n, c = ctx.input_shape[:2]
        grad_in = torch.zeros(ctx.input_shape, dtype=grad.dtype, device=grad.device)
        grad_in.view(n, c, -1).scatter_(2, idx.view(n, c, -1), grad.reshape(n, c, -1))
        return grad_in


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
