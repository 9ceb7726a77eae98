"""Facts about where a run happened: package versions, device, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("stf-eval", "torch", "torchvision", "torchattacks", "opacus", "scikit-learn", "netcal", "numpy",
            "pandas", "matplotlib", "jinja2")


def git_commit(path: Path | None = None) -> str:
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                return out.stdout.strip() + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def describe(device: torch.device, deterministic: bool = False, threads: int = 0) -> dict:
    """Where and how a run happened; ``numerics`` holds what changes trained weights (device type,
    torch version, TF32 / deterministic flags on CUDA) and ``deterministic`` the run's option;
    ``cpu_threads``: torch's threads of the jobs and cells (``threads``, else this process's count)."""
    from .device import numerics

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": threads or torch.get_num_threads(),
        "device": dev,
        "cuda": torch.version.cuda,
        "deterministic": bool(deterministic),
        "numerics": numerics(device),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "git_commit": git_commit(),
        "packages": versions,
    }
