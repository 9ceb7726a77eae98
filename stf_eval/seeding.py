"""Randomness as a function of (seed, what is drawn), never of what ran before.

Every stochastic draw of a run (a prediction's weight samples, an attack's random start, a reference
model's data half, a bootstrap) takes its generator from ``derive_seed(seed, *purpose)``: the same
run seed and the same description of the draw give the same numbers whether the checkpoint cache was
cold or warm, whether the run was resumed, and in whatever order an executor ran the jobs.

``seeded(seed, *purpose)`` is the way to call code that draws from torch's *global* generator
(variational layers, dropout, torchattacks): it forks the global state, seeds it from the purpose,
and restores it afterwards, so the block neither depends on nor disturbs anything outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, *purpose) -> int:
    """A 63-bit seed from the run ``seed`` and the parts that name the draw (strings, numbers)."""
    text = "\x1f".join(str(p) for p in purpose)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    seq = np.random.SeedSequence([int(seed) % (2**63), *words])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, *purpose) -> np.random.Generator:
    """A numpy Generator for the draw named by ``purpose``."""
    return np.random.default_rng(derive_seed(seed, *purpose))


def torch_generator(seed: int, *purpose, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator (on ``device``) for the draw named by ``purpose``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *purpose))


def _cuda_devices(device) -> list[int]:
    if device is None or not torch.cuda.is_available():
        return []
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def seeded(seed: int, *purpose, device: torch.device | str | None = None) -> Iterator[int]:
    """Run a block on torch's global generator seeded from (seed, purpose); restore it afterwards.

    ``device``: a CUDA device whose generator is forked too (CPU's always is). Yields the derived seed.
    """
    derived = derive_seed(seed, *purpose)
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(derived)
        yield derived


@contextmanager
def seeded_all(seed: int, *purpose, device: torch.device | str | None = None) -> Iterator[int]:
    """Like ``seeded``, and numpy's and Python's global generators are forked and seeded too.

    For code outside our control that may draw from any global generator (a model plugin's ``fit``):
    what it draws is a function of (seed, purpose) and nothing it draws leaks out of the block.
    """
    import random

    np_state, py_state = np.random.get_state(), random.getstate()
    with seeded(seed, *purpose, device=device) as derived:
        np.random.seed(derived % (2**32))
        random.seed(derived)
        try:
            yield derived
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
