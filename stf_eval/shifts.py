"""Image corruptions computed on the fly (CIFAR-10-C style), pure torch, deterministic given a seed.

Each corruption maps images in [0, 1] of shape [N, C, H, W] and a severity 1..5 to corrupted images in
[0, 1] of the same shape. Magnitudes (see docs/calibration.md):

* ``gaussian_noise``: additive N(0, sigma^2) per pixel, sigma = 0.08, 0.12, 0.18, 0.26, 0.38
  (ImageNet-C's values; CIFAR-10-C's are milder and barely touch digit data).
* ``gaussian_blur``: Gaussian kernel, sigma = 0.5, 1.0, 1.5, 2.0, 2.5 pixels of a 28-pixel-high image,
  scaled with the image height (so 8x8 digits are blurred as much, relative to their size).
* ``contrast``: (x - per-image channel mean) * c + mean, c = 0.75, 0.5, 0.4, 0.3, 0.15 (CIFAR-10-C).
* ``rotation``: rotation by 15, 30, 45, 60, 75 degrees, direction drawn per image (digit data's
  natural shift), bilinear, zeros outside the image.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMA_AT_28 = (0.5, 1.0, 1.5, 2.0, 2.5)
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
ROTATION_DEGREES = (15.0, 30.0, 45.0, 60.0, 75.0)


def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = NOISE_SIGMA[severity - 1]
    return x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = BLUR_SIGMA_AT_28[severity - 1] * x.shape[-2] / 28.0
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    # separable blur, one channel at a time (groups=c); replicate padding works at any image size
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    factor = CONTRAST_FACTOR[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def rotation(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sign = torch.randint(0, 2, (x.shape[0],), generator=gen).to(x.dtype) * 2 - 1
    angle = sign * math.radians(ROTATION_DEGREES[severity - 1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    aspect = x.shape[-2] / x.shape[-1]  # rotate in pixel space, not in the [-1, 1] grid coordinates
    theta = torch.stack([torch.stack([cos, -sin * aspect, zero], 1),
                         torch.stack([sin / aspect, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


SHIFTS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "rotation": rotation,
}


def apply_shift(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupted copy of ``x`` (values in [0, 1]); the same (x, name, severity, seed) gives the same output."""
    if name not in SHIFTS:
        raise KeyError(f"unknown shift {name!r} (known: {', '.join(SHIFTS)})")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    # a generator of its own per (seed, shift, severity): results do not depend on call order
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}:{severity}".encode()))
    out = SHIFTS[name](x.detach().float().cpu(), severity, gen)
    return out.clamp(0.0, 1.0).contiguous()


def shift_key(name: str, severity: int, seed: int = 0, subset: int = 0) -> str:
    """The prediction-cache key of a shifted split (``ctx.samples_of``): shift:<name>:<severity>[...]."""
    key = f"shift:{name}:{severity}"
    if seed:
        key += f":seed{seed}"
    if subset:
        key += f":n{subset}"
    return key
