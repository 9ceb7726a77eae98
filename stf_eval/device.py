"""Device choice (made once, passed down), numerics flags, and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r}: not a device torch knows ('auto', 'cpu', 'cuda' or 'cuda:N')") \
            from exc
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if not 0 <= device.index < count:
            raise ConfigError(f"device {name!r}: no such GPU; this machine has {count} "
                              f"(cuda:0 .. cuda:{count - 1})" if count else f"device {name!r}: no GPU visible")
    return device


def apply_numerics(device: torch.device, deterministic: bool = False) -> dict:
    """Set the flags that change numbers, and return them (recorded in environment.json).

    ``deterministic``: ``torch.use_deterministic_algorithms(True)``, ``CUBLAS_WORKSPACE_CONFIG`` for
    deterministic cuBLAS, TF32 off, cuDNN benchmark off: same-seed GPU retrains give the same weights
    (slower). Otherwise TF32 stays off for matmul (torch's default) and cuDNN's autotuner is on when the
    device is CUDA.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = device.type == "cuda"
    return numerics(device)


def numerics(device: torch.device) -> dict:
    """What, besides the recipe, changes trained weights: device type, torch version, and on CUDA the
    TF32 / deterministic flags. Part of every cache key of trained weights (models/base.py)."""
    out = {"device": device.type, "torch": torch.__version__.split("+")[0]}
    if device.type == "cuda":
        out.update({"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                    "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
                    "deterministic": bool(torch.are_deterministic_algorithms_enabled())})
    return out


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
