"""From sampled logits [S, N, C] to the predictive distribution and its uncertainty scores."""

from __future__ import annotations

import math

import numpy as np
import torch


def mean_probs(logits: torch.Tensor) -> np.ndarray:
    """Predictive mean: softmax averaged over the S samples -> [N, C] (float64)."""
    return torch.softmax(logits.double(), dim=-1).mean(dim=0).numpy()


def log_mean_probs(logits: torch.Tensor) -> np.ndarray:
    """log of the predictive mean, computed stably -> [N, C]."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return (torch.logsumexp(lp, dim=0) - math.log(logits.shape[0])).numpy()


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-300, 1.0)
    return -(probs * np.log(p)).sum(axis=-1)


def mutual_information(logits: torch.Tensor) -> np.ndarray:
    """Epistemic part of the predictive entropy: H[mean p] - mean H[p] (0 for S = 1)."""
    p = torch.softmax(logits.double(), dim=-1).numpy()
    return np.maximum(entropy(p.mean(axis=0)) - entropy(p).mean(axis=0), 0.0)


def energy(logits: torch.Tensor) -> np.ndarray:
    """Negative free energy of the mean logits, logsumexp(mean_s logits): higher = more in-distribution."""
    return torch.logsumexp(logits.double().mean(dim=0), dim=-1).numpy()
