"""Proper scoring rules and calibration errors of a predictive distribution.

Inputs: ``probs`` [N, C] (predictive mean, rows sum to 1) and integer ``labels`` [N].

Library numbers come from netcal (imported lazily: it is slow to import): top-label ECE, MCE and the
per-class ECE terms of the classwise ECE. netcal's equal-mass binning fails when confidences tie
(np.quantile repeats an edge and scipy refuses it), which saturated softmax outputs do all the time,
so the adaptive ECE is computed here with duplicate edges merged. Tests cross-check every variant
against the small direct computations at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable

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


def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the predicted class, 1 if that prediction is right else 0)."""
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.int64)


# netcal is given (confidence, correct) as a binary problem: handed multi-class probabilities with
# labels of at most two distinct values (a small bootstrap resample can have that), it would silently
# switch to binary mode and fail.
def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (Guo et al. 2017), via netcal."""
    from netcal.metrics import ECE

    conf, correct = top_label(probs, labels)
    return float(ECE(bins=bins).measure(conf, correct))


def mce(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over non-empty equal-width bins."""
    from netcal.metrics import MCE

    conf, correct = top_label(probs, labels)
    return float(MCE(bins=bins).measure(conf, correct))


def ece_classwise(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): for each class k, the equal-width-binned ECE of p_k against
    the indicator y = k over all examples; then the mean over classes."""
    from netcal.metrics import ECE

    metric = ECE(bins=bins)
    per_class = [metric.measure(probs[:, k], (labels == k).astype(np.int64)) for k in range(probs.shape[1])]
    return float(np.mean(per_class))


def equal_mass_edges(conf: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges holding about N/bins examples each; edges that coincide (tied confidences) are merged,
    so a block of ties stays in one bin and there may be fewer than ``bins`` bins."""
    edges = np.quantile(conf, np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return np.unique(edges)


def ece_adaptive(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-mass bins (adaptive ECE, as in Nixon et al. 2019 / Mukhoti et al. 2020)."""
    conf, correct = top_label(probs, labels)
    edges = equal_mass_edges(conf, bins)
    # bins are [e_i, e_i+1) with the last one closed, like np.histogram and netcal
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    conf_sum = np.bincount(which, weights=conf, minlength=len(edges) - 1)
    acc_sum = np.bincount(which, weights=correct, minlength=len(edges) - 1)
    filled = counts > 0
    gaps = np.abs(acc_sum[filled] - conf_sum[filled]) / counts[filled]
    return float((counts[filled] / len(conf) * gaps).sum())


def bin_counts(conf: np.ndarray, bins: int = 15) -> np.ndarray:
    """Examples per equal-width confidence bin ([a, b), the last bin closed), as the ECE uses them."""
    return np.histogram(conf, bins=np.linspace(0.0, 1.0, bins + 1))[0]


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = 15):
    """Per equal-width bin: (edges, counts, mean confidence, accuracy); NaN where a bin is empty."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / counts
        acc = np.bincount(which, weights=correct, minlength=bins) / counts
    return edges, counts, mean_conf, acc


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, log_probs: np.ndarray | None = None,
                        bins: int = 15, adaptive_bins: int = 15) -> dict[str, float]:
    """Every calibration metric of docs/calibration.md, by its record name."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels, log_probs),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels, bins),
        "ece_adaptive": ece_adaptive(probs, labels, adaptive_bins),
        "ece_classwise": ece_classwise(probs, labels, bins),
        "mce": mce(probs, labels, bins),
    }


def bootstrap_intervals(statistic: Callable[[np.ndarray], dict[str, float]], n: int, resamples: int,
                        seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over examples: ``statistic(indices) -> {name: value}`` is evaluated on
    ``resamples`` index sets drawn with replacement; returns {name: (low, high)} at ``level``."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for name, value in statistic(rng.integers(0, n, size=n)).items():
            draws.setdefault(name, []).append(value)
    tail = 100.0 * (1.0 - level) / 2.0
    return {name: (float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100.0 - tail)))
            for name, v in draws.items()}


# -- independent direct computations (for the tests' cross-checks) -------------------------------

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


def ece_equal_mass_direct(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Independent direct computation of the adaptive ECE: sort by confidence, cut into ``bins`` runs
    of (nearly) equal length. Agrees with ``ece_adaptive`` when confidences do not tie."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) / len(conf) * abs(correct[chunk].mean() - conf[chunk].mean())
    return float(total)


def ece_classwise_direct(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Independent direct computation of the classwise ECE (Kull et al. 2019), loops and all."""
    n, k = probs.shape
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for c in range(k):
        p = probs[:, c]
        hit = (labels == c).astype(float)
        for b in range(bins):
            lo, hi = edges[b], edges[b + 1]
            mask = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
            if mask.any():
                total += mask.sum() / n * abs(hit[mask].mean() - p[mask].mean())
    return float(total / k)
