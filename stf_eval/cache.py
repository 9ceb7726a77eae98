"""Checkpoint cache: trained weights keyed by a hash of everything that determines them."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .paths import inside

log = logging.getLogger("stf_eval")

#: the parts of the package whose source determines trained weights (and hence results)
TRAINING_CODE = ("training.py", "bayes", "models", "nets", "data")


@functools.cache
def code_version() -> str:
    """The package version and a hash of the training code's source, computed once per process.

    Part of every cache key: an upgrade, or any edit to the code that produces weights, never reuses
    checkpoints trained by other code (no hand-bumped version number to forget).
    """
    from . import __version__

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for entry in TRAINING_CODE:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"


def cache_key(spec: dict[str, Any]) -> str:
    blob = json.dumps({"code": code_version(), **spec}, sort_keys=True, default=str)
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
        return inside(self.root, f"{key}.pt"), inside(self.root, f"{key}.json")

    @contextmanager
    def lock(self, key: str):
        """Hold the lock of ``key`` (a file lock: it also excludes other processes sharing the cache).

        Training a key happens under its lock, so two runs sharing a cache never train the same job
        twice or read a half-written file: the second waits, then finds the entry and loads it.
        """
        with self._locked(key, wait=True):
            yield

    @contextmanager
    def try_lock(self, key: str):
        """Hold the lock of ``key`` if nobody else does: yields True (held) or False (another process
        has it; nothing is held). Lets a process take other work instead of waiting (membership pools)."""
        with self._locked(key, wait=False) as held:
            yield held

    @contextmanager
    def _locked(self, key: str, wait: bool):
        if self.root is None:  # no directory, nobody to share it with
            yield True
            return
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(inside(self.root, f"{key}.lock")))
        try:
            lock.acquire(timeout=2 if wait else 0)
        except Timeout:
            if not wait:
                yield False
                return
            log.info("waiting for another run that is training cache entry %s", key)
            lock.acquire()
        try:
            yield True
        finally:
            lock.release()

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
