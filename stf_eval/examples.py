"""Per-example arrays of a run: the raw material behind every aggregate record.

One compressed ``.npz`` file per (suite, model, seed) in ``RUN_DIR/examples/``, named
``<suite>--<model>--seed<seed>.npz``. Keys are '/'-separated names whose meaning each suite documents
in docs/records.md; example indices are positions in the splits saved in ``splits.json``. numpy reads
them directly (``np.load(path)``); ``load_examples`` gathers them for a run.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .paths import inside

EXAMPLES_DIR = "examples"


def examples_path(run_dir: Path, suite: str, model: str, seed: int) -> Path:
    return inside(run_dir, EXAMPLES_DIR, f"{suite}--{model}--seed{seed}.npz")


def write_examples(run_dir: Path, suite: str, model: str, seed: int, arrays: dict[str, np.ndarray]) -> Path:
    """Write one (suite, model, seed) file atomically; returns its path."""
    from .cache import atomic_write_bytes  # here, not at the top: cache imports torch, readers need none

    path = examples_path(run_dir, suite, model, seed)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_examples(run_dir: str | Path, suite: str | None = None, model: str | None = None,
                  seed: int | None = None) -> dict[tuple[str, str, int], dict[str, np.ndarray]]:
    """{(suite, model, seed): {key: array}} for every saved file matching the given filters."""
    out = {}
    folder = Path(run_dir) / EXAMPLES_DIR
    for path in sorted(folder.glob("*.npz")):
        parts = path.stem.split("--")
        if len(parts) != 3 or not parts[2].startswith("seed"):
            continue
        s, m, sd = parts[0], parts[1], int(parts[2][4:])
        if (suite is not None and s != suite) or (model is not None and m != model) or \
                (seed is not None and sd != seed):
            continue
        with np.load(path, allow_pickle=False) as data:
            out[(s, m, sd)] = {k: data[k] for k in data.files}
    return out
