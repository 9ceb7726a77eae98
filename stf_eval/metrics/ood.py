"""OOD-detection scores and metrics (OpenOOD v1.5 conventions, in-distribution positive).

Every score is oriented so that **higher = more in-distribution**: the max softmax probability and
the energy score already are; predictive entropy and mutual information are negated. The metrics take
the scores of in-distribution (``score_in``) and OOD (``score_out``) examples.
"""

from __future__ import annotations

import numpy as np
import torch

from .predictive import energy, entropy, mean_probs, mutual_information

#: score name -> what it is (the record's ``score`` column), all oriented higher = in-distribution
SCORES: dict[str, str] = {
    "msp": "max softmax probability of the predictive mean",
    "entropy": "negated predictive entropy H[mean_s softmax]",
    "mutual_information": "negated mutual information H[mean p] - mean H[p] (epistemic part)",
    "energy": "logsumexp of the mean logits (negative free energy)",
}


def ood_scores(logits: torch.Tensor, names=tuple(SCORES)) -> dict[str, np.ndarray]:
    """Scores [N] of sampled logits [S, N, C]; higher = more in-distribution for every score."""
    out: dict[str, np.ndarray] = {}
    probs = mean_probs(logits) if {"msp", "entropy"} & set(names) else None
    for name in names:
        if name == "msp":
            out[name] = probs.max(axis=1)
        elif name == "entropy":
            out[name] = -entropy(probs)
        elif name == "mutual_information":
            out[name] = -mutual_information(logits)
        elif name == "energy":
            out[name] = energy(logits)
        else:
            raise KeyError(f"unknown OOD score {name!r} (known: {', '.join(SCORES)})")
    return out


def _labels_scores(score_in: np.ndarray, score_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.ones(len(score_in)), np.zeros(len(score_out))])
    return y, np.concatenate([np.asarray(score_in, float), np.asarray(score_out, float)])


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under the ROC curve, in-distribution positive (0.5 = chance, 1 = perfect separation)."""
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(score_in, score_out)
    return float(roc_auc_score(y, s))


def _aupr(y: np.ndarray, s: np.ndarray) -> float:
    # OpenOOD v1.5 integrates the precision-recall curve with the trapezoid rule (sklearn.metrics.auc)
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision))


def aupr_in(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under precision-recall with in-distribution as the positive class."""
    y, s = _labels_scores(score_in, score_out)
    return _aupr(y, s)


def aupr_out(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under precision-recall with OOD as the positive class (scores negated)."""
    y, s = _labels_scores(score_in, score_out)
    return _aupr(1 - y, -s)


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD examples accepted at the highest threshold that accepts at least ``tpr`` of the
    in-distribution examples (in-distribution positive; "accepted" means score >= threshold)."""
    from sklearn.metrics import roc_curve

    y, s = _labels_scores(score_in, score_out)
    fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fprs[np.argmax(tprs >= tpr)])


def ood_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    """The four metrics of docs/ood.md by record name: auroc, aupr_in, aupr_out, fpr95."""
    return {
        "auroc": auroc(score_in, score_out),
        "aupr_in": aupr_in(score_in, score_out),
        "aupr_out": aupr_out(score_in, score_out),
        "fpr95": fpr_at_tpr(score_in, score_out, 0.95),
    }
