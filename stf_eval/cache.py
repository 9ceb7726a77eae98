"""Checkpoint cache: trained weights keyed by a hash of everything that determines them."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CACHE_VERSION = 1  # bump when a change in training code invalidates old checkpoints


def cache_key(spec: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class CheckpointCache:
    """``root/<key>.pt`` holds a state dict, ``root/<key>.json`` what produced it and its metadata."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root else None

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def load(self, key: str, module: torch.nn.Module) -> dict | None:
        """Fill ``module`` from the cache; return the stored metadata, or None on a miss."""
        if self.root is None:
            return None
        pt, meta = self._paths(key)
        if not (pt.is_file() and meta.is_file()):
            return None
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            return json.loads(meta.read_text())["meta"]
        except Exception:  # a corrupt or stale entry is retrained, not fatal
            return None

    def meta(self, key: str) -> dict | None:
        """The stored metadata of ``key`` (seconds, memory ...) without loading weights; None on a miss."""
        if self.root is None:
            return None
        pt, meta = self._paths(key)
        if not (pt.is_file() and meta.is_file()):
            return None
        try:
            return json.loads(meta.read_text())["meta"]
        except (ValueError, KeyError, OSError):
            return None

    def save(self, key: str, module: torch.nn.Module, spec: dict, meta: dict) -> None:
        if self.root is None:
            return
        pt, meta_path = self._paths(key)
        import io

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
        atomic_write_bytes(pt, buf.getvalue())
        atomic_write_text(meta_path, json.dumps({"spec": spec, "meta": meta}, indent=1, default=str))
