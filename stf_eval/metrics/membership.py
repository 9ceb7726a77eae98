"""Membership-inference scores and their evaluation: pure numpy functions, no models.

Convention: every attack returns a score per example where *higher means "member"*. Inputs are the
attacker's view of the deployed predictive: ``log_probs`` [N, C] = log of the mean softmax over S
samples (``metrics.predictive.log_mean_probs``), integer ``labels`` [N].

Evaluation (scikit-learn's ``roc_curve``): TPR at a fixed FPR is the largest TPR among ROC points
with FPR <= the target, without interpolation (conservative: it never credits a threshold that was
not observed); balanced accuracy is the best over all thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- attack scores from the target alone (threshold attacks) ---------------------------------------


def true_class_log_prob(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return log_probs[np.arange(len(labels)), labels]


def loss_score(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al. 2018: members have low loss; score = -loss = log p_y."""
    return true_class_log_prob(log_probs, labels)


def confidence_score(log_probs: np.ndarray) -> np.ndarray:
    """Label-free top confidence max_c p_c (Salem et al. 2019). The true-class confidence p_y is a
    monotone function of the loss and would give the loss attack's ROC exactly."""
    return np.exp(log_probs.max(axis=1))


def entropy_score(log_probs: np.ndarray) -> np.ndarray:
    """Members get confident, low-entropy predictions; score = -H(p)."""
    p = np.exp(log_probs)
    return (p * log_probs).sum(axis=1)


def modified_entropy_score(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal 2021: Mentr = -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c); score = -Mentr."""
    p = np.exp(log_probs)
    n = np.arange(len(labels))
    log_one_minus = np.log(np.clip(1.0 - p, 1e-300, None))
    others = p * log_one_minus
    others[n, labels] = 0.0
    mentr = -(1.0 - p[n, labels]) * log_probs[n, labels] - others.sum(axis=1)
    return -mentr


def logit_confidence(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)), computed in the log domain so p_y near 1 stays finite (LiRA)."""
    n = np.arange(len(labels))
    others = log_probs.copy()
    others[n, labels] = -np.inf
    log_rest = np.logaddexp.reduce(others, axis=1)
    return log_probs[n, labels] - log_rest


# -- LiRA (Carlini et al. 2022) ---------------------------------------------------------------------


@dataclass
class LiraFit:
    """Per-example Gaussian fits of reference scores phi, for the IN and OUT references."""

    mean_in: np.ndarray
    mean_out: np.ndarray
    var_in: np.ndarray  # per example, or one value broadcast (global variance)
    var_out: np.ndarray
    min_in: int  # fewest IN / OUT references any example has
    min_out: int
    variance: str  # "per_example" or "global"


def _side_stats(phi_refs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = mask.sum(axis=0)
    mean = (phi_refs * mask).sum(axis=0) / np.maximum(counts, 1)
    sq = (((phi_refs - mean) ** 2) * mask).sum(axis=0)
    return np.where(counts > 0, mean, np.nan), sq, counts


def fit_lira(phi_refs: np.ndarray, in_mask: np.ndarray, variance: str = "global",
             min_var: float = 1e-4) -> LiraFit:
    """Fit N(mean, var) to each example's IN and OUT reference scores.

    ``phi_refs`` [R, N]: phi of each example under each reference model; ``in_mask`` [R, N]: whether
    the example was in that reference's training half.

    ``variance="per_example"``: each example's own unbiased variance (needs >= 2 references per side).
    ``variance="global"``: one variance shared by every example and by IN and OUT: the pooled
    within-example variance (sum of squared deviations from each example's own mean over the total
    degrees of freedom), or, when no example has 2 references on a side, the variance of all
    reference scores. With one shared variance its value does not change the ROC (offline LiRA
    then ranks by phi - mean_out), only the scale of the scores.
    """
    in_mask = in_mask.astype(bool)
    mean_in, sq_in, n_in = _side_stats(phi_refs, in_mask)
    mean_out, sq_out, n_out = _side_stats(phi_refs, ~in_mask)
    min_in, min_out = int(n_in.min()), int(n_out.min())
    if variance == "per_example":
        if min(min_in, min_out) < 2:
            raise ValueError("per-example variance needs at least 2 IN and 2 OUT references per example")
        var_in = np.maximum(sq_in / (n_in - 1), min_var)
        var_out = np.maximum(sq_out / (n_out - 1), min_var)
    elif variance == "global":
        dof = np.maximum(n_in - 1, 0).sum() + np.maximum(n_out - 1, 0).sum()
        pooled = (sq_in.sum() + sq_out.sum()) / dof if dof > 0 else float(np.var(phi_refs))
        var_in = var_out = np.full(phi_refs.shape[1], max(float(pooled), min_var))
    else:
        raise ValueError(f"unknown variance rule {variance!r}")
    return LiraFit(mean_in, mean_out, var_in, var_out, min_in, min_out, variance)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def lira_offline(phi_target: np.ndarray, fit: LiraFit) -> np.ndarray:
    """One-sided test against the OUT Gaussian: z = (phi - mean_out) / sd_out (higher = member).

    Monotone in the paper's 1 - Pr[Z > phi] for each example, so the ROC is the same."""
    if fit.min_out < 1:
        raise ValueError("offline LiRA needs at least one OUT reference per example")
    return (phi_target - fit.mean_out) / np.sqrt(fit.var_out)


def lira_online(phi_target: np.ndarray, fit: LiraFit) -> np.ndarray:
    """Log likelihood ratio log N(phi; IN) - log N(phi; OUT)."""
    if fit.min_in < 1 or fit.min_out < 1:
        raise ValueError("online LiRA needs at least one IN and one OUT reference per example")
    return (_log_normal_pdf(phi_target, fit.mean_in, fit.var_in)
            - _log_normal_pdf(phi_target, fit.mean_out, fit.var_out))


# -- RMIA (Zarifzadeh et al. 2024) -------------------------------------------------------------------


def rmia_marginal(p_refs: np.ndarray, in_mask: np.ndarray, offline: bool, a: float) -> np.ndarray:
    """Pr(x) averaged over reference models, from true-class probabilities ``p_refs`` [R, N].

    online: the mean over all references (with complementary halves, half of them IN).
    offline: only OUT references, with the paper's linear approximation of the IN mean,
    Pr_IN = a * Pr_OUT + (1 - a), so Pr(x) = ((1 + a) * Pr_OUT + (1 - a)) / 2.
    """
    if not offline:
        return p_refs.mean(axis=0)
    out = ~in_mask.astype(bool)
    counts = out.sum(axis=0)
    if counts.min() < 1:
        raise ValueError("offline RMIA needs at least one OUT reference per example")
    p_out = (p_refs * out).sum(axis=0) / counts
    return 0.5 * ((1.0 + a) * p_out + (1.0 - a))


def rmia_scores(p_target_x: np.ndarray, marginal_x: np.ndarray, p_target_z: np.ndarray,
                marginal_z: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Score(x) = fraction of population examples z with LR(x, z) = [p(x|target)/Pr(x)] /
    [p(z|target)/Pr(z)] >= gamma."""
    ratio_x = p_target_x / np.maximum(marginal_x, 1e-300)
    ratio_z = np.sort(p_target_z / np.maximum(marginal_z, 1e-300))
    # LR >= gamma  <=>  ratio_z <= ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="right") / len(ratio_z)


# -- evaluation ----------------------------------------------------------------------------------


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold (scikit-learn, all points kept)."""
    from sklearn.metrics import roc_curve

    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or infinite values")
    fpr, tpr, _ = roc_curve(is_member.astype(int), scores, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= target (no interpolation)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_member.astype(int), scores))


def auc_interval(auc_value: float, n_members: int, n_non_members: int, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval of an AUC from its Hanley & McNeil (1982) standard error."""
    a = auc_value
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_members - 1) * (q1 - a * a) + (n_non_members - 1) * (q2 - a * a)) / (
        n_members * n_non_members)
    half = z * float(np.sqrt(max(var, 0.0)))
    return max(0.0, a - half), min(1.0, a + half)


def best_balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of (TPR + TNR) / 2."""
    return float(((tpr + 1.0 - fpr) / 2.0).max())


def summarize(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """The membership record metrics of one attack's scores."""
    fpr, tpr = roc(scores, is_member)
    return {"mia_auc": auc(scores, is_member), "mia_balanced_accuracy": best_balanced_accuracy(fpr, tpr),
            "tpr_at_0.1pct_fpr": tpr_at_fpr(fpr, tpr, 0.001), "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01)}
