"""Proper scoring rules and calibration errors of a predictive distribution.

Inputs: ``probs`` [N, C] (predictive mean, rows sum to 1) and integer ``labels`` [N].
ECE variants come from netcal (imported lazily: it is slow to import); tests cross-check them
against the small direct computations in ``ece_equal_width``.
"""

from __future__ import annotations

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def nll(probs: np.ndarray, labels: np.ndarray, log_probs: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    if log_probs is not None:
        return float(-log_probs[np.arange(len(labels)), labels].mean())
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - 1[y = c])^2 (range 0..2)."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (Guo et al. 2017), via netcal."""
    from netcal.metrics import ECE

    return float(ECE(bins=bins).measure(probs, labels))


def ece_equal_width(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, float, np.ndarray]:
    """Independent direct computation: (ECE, MCE, bin counts) with equal-width confidence bins.

    Kept small and explicit so tests can cross-check the library's numbers.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total, worst = 0.0, 0.0
    counts = np.bincount(which, minlength=bins)
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = abs(correct[mask].mean() - conf[mask].mean())
            total += mask.mean() * gap
            worst = max(worst, gap)
    return float(total), float(worst), counts
