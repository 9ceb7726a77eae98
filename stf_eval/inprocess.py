"""Objects handed over in this Python process (a user's network, sampler or tensors).

A suite file can only name things; ``stf_eval.evaluate`` also accepts live objects. They reach the
runner through this table: the model or dataset table in the run's configuration holds a ``ref``
string (a content hash where one can be computed), and the adapter plugin looks the object up by it
when the cell is built. ``evaluate`` puts its objects in for the duration of the run and takes them
out afterwards. Objects never leave this process, so runs with in-process objects use the local
executor (a worker process would not find them; the error says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import ConfigError

_OBJECTS: dict[str, Any] = {}


def tensor_digest(*tensors) -> str:
    """A short content hash of tensors / arrays (a changed network gets a new ref, so resume recomputes)."""
    import numpy as np

    h = hashlib.sha1()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


@contextmanager
def registered(objects: dict[str, Any]) -> Iterator[None]:
    """Make ``objects`` (ref -> object) visible to the adapters for the duration of the block."""
    added = [ref for ref in objects if ref not in _OBJECTS]
    _OBJECTS.update(objects)
    try:
        yield
    finally:
        for ref in added:
            _OBJECTS.pop(ref, None)


def lookup(ref: str, where: str) -> Any:
    if ref not in _OBJECTS:
        raise ConfigError(f"{where}: in-process object {ref!r} is not available: objects (networks, samplers, "
                          f"tensors) can only be passed through stf_eval.evaluate(), and only to the local "
                          f"executor in the same Python process")
    return _OBJECTS[ref]
