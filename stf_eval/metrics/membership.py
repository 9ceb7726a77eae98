"""Membership-inference scores and their evaluation: pure numpy functions, no models.

Convention: every attack returns a score per example where *higher means "member"*. Inputs are the
attacker's view of the deployed predictive: ``log_probs`` [N, C] = log of the mean softmax over S
samples (``metrics.predictive.log_mean_probs``), integer ``labels`` [N].

Evaluation (scikit-learn's ``roc_curve``): TPR at a fixed FPR is the largest TPR among ROC points
with FPR strictly below the target (Carlini et al. 2022's convention), without interpolation
(conservative: it never credits a threshold that was not observed); balanced accuracy is the best
over all thresholds.
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
             min_var: float = 1e-4, out_mask: np.ndarray | None = None) -> LiraFit:
    """Fit N(mean, var) to each example's IN and OUT reference scores.

    ``phi_refs`` [R, N]: phi of each example under each reference model; ``in_mask`` [R, N]: whether
    the example was in that reference's training half.

    ``variance="per_example"``: each example's own unbiased variance (needs >= 2 references per side).
    ``variance="global"``: one variance shared by every example and by IN and OUT: the pooled
    within-example variance (sum of squared deviations from each example's own mean over the total
    degrees of freedom), or, when no example has 2 references on a side, the variance of all
    reference scores. With one shared variance its value does not change the ROC (offline LiRA
    then ranks by phi - mean_out), only the scale of the scores.

    ``out_mask``: the OUT references to use (default: every reference not IN).
    """
    in_mask = in_mask.astype(bool)
    out_mask = ~in_mask if out_mask is None else out_mask.astype(bool)
    mean_in, sq_in, n_in = _side_stats(phi_refs, in_mask)
    mean_out, sq_out, n_out = _side_stats(phi_refs, out_mask)
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


def rmia_marginal(p_refs: np.ndarray, in_mask: np.ndarray, offline: bool, a: float,
                  out_mask: np.ndarray | None = None) -> np.ndarray:
    """Pr(x) averaged over reference models, from true-class probabilities ``p_refs`` [R, N].

    online: the mean over all references (with complementary halves, half of them IN).
    offline: only OUT references, with the paper's linear approximation of the IN mean,
    Pr_IN = a * Pr_OUT + (1 - a), so Pr(x) = ((1 + a) * Pr_OUT + (1 - a)) / 2.
    ``out_mask``: the OUT references to use (default: every reference not IN); with it, online
    averages the IN and OUT references in use only.
    """
    in_mask = in_mask.astype(bool)
    out = ~in_mask if out_mask is None else out_mask.astype(bool)
    if not offline:
        if out_mask is None:
            return p_refs.mean(axis=0)
        used = in_mask | out
        return (p_refs * used).sum(axis=0) / np.maximum(used.sum(axis=0), 1)
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
    """Largest TPR among ROC points with FPR strictly below ``target`` (no interpolation).

    The ROC always has the point (0, 0), so the value is defined for any target > 0; whether the
    data can resolve it is ``fpr_resolution``'s question."""
    ok = fpr < target - 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


STABLE_FALSE_POSITIVES = 10  # non-members above the threshold for a TPR-at-FPR point called stable


def fpr_resolution(n_non_members: int, target: float) -> tuple[str, int, int]:
    """Can ``n_non_members`` resolve TPR at FPR ``target``? -> (status, allowed, needed).

    ``allowed``: the non-members a threshold may let through while FPR stays strictly below the
    target, ceil(target * n) - 1. Status ``"undefined"`` when allowed = 0, i.e. n <= 1 / target: the
    point is then TPR at zero false positives, whatever the target; ``"coarse"`` when
    1 <= allowed < 10 (n <= 10 / target); ``"stable"`` otherwise. ``needed``: the non-members the
    next status needs (0 once stable).
    """
    def needs(false_positives: int) -> int:  # smallest n with target * n > false_positives
        return int(np.floor(false_positives / target + 1e-9)) + 1

    allowed = max(int(np.ceil(target * n_non_members - 1e-9)) - 1, 0)
    if allowed < 1:
        return "undefined", allowed, needs(1)
    if allowed < STABLE_FALSE_POSITIVES:
        return "coarse", allowed, needs(STABLE_FALSE_POSITIVES)
    return "stable", allowed, 0


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


FPR_POINTS = {"tpr_at_0.1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.01}


def summarize(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """The membership record metrics of one attack's scores."""
    fpr, tpr = roc(scores, is_member)
    return {"mia_auc": auc(scores, is_member), "mia_balanced_accuracy": best_balanced_accuracy(fpr, tpr),
            **{name: tpr_at_fpr(fpr, tpr, target) for name, target in FPR_POINTS.items()}}


def interval_over_targets(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of per-target measurements.

    Targets share training data and references, so they are not independent draws: the interval
    describes the spread over targets, not a sampling guarantee. One value gives (value, nan, nan)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


# -- label-only baseline ----------------------------------------------------------------------------


def gap_score(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al. 2018's gap attack: member iff correctly classified (score 1 or 0).

    Its best balanced accuracy is 1/2 + (train accuracy - test accuracy) / 2: the floor an attack
    must beat to show more than the generalisation gap."""
    return (log_probs.argmax(axis=1) == labels).astype(float)


# -- the shared design's memberships -----------------------------------------------------------------


def balanced_memberships(n: int, n_models: int, rng: np.random.Generator) -> np.ndarray:
    """in_mask [n_models, n]: each example IN for exactly floor(n_models / 2) models, chosen at random
    per example (Carlini et al. 2022's assignment); each model trains on about half of the pool."""
    keys = rng.random((n_models, n))
    return keys.argsort(axis=0).argsort(axis=0) < n_models // 2


def equal_count_references(in_mask: np.ndarray, n_in: int, n_out: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(in_use, out_use) [R, N]: exactly ``n_in`` IN and ``n_out`` OUT references per example, at random.

    In the shared design an example's IN count among a target's references is one lower when the
    target trained on it, so the references' count reveals membership and the noise of LiRA's and
    RMIA's estimates differs between members and non-members (with 4 models: online LiRA falls
    below chance, online RMIA is flattered). Using the same counts for every example removes that."""
    in_mask = np.asarray(in_mask, bool)

    def pick(side: np.ndarray, k: int) -> np.ndarray:
        keys = np.where(side, rng.random(side.shape), np.inf)
        rank = keys.argsort(axis=0).argsort(axis=0)
        return side & (rank < k)

    if (in_mask.sum(0) < n_in).any() or ((~in_mask).sum(0) < n_out).any():
        raise ValueError(f"some example has fewer than {n_in} IN or {n_out} OUT references")
    return pick(in_mask, n_in), pick(~in_mask, n_out)


# -- per-example exposure ----------------------------------------------------------------------------


def exposure(scores: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """Mean attack score of each example over the targets it was a member of (nan where none).

    ``scores`` [T, N] (higher = member), ``in_mask`` [T, N]. High exposure = the attack singles the
    example out when it is trained on."""
    in_mask = np.asarray(in_mask, bool)
    counts = in_mask.sum(axis=0)
    total = np.where(in_mask, scores, 0.0).sum(axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def top_exposed(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest finite values, highest first (ties: lower position first)."""
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.lexsort((finite, -values[finite]))]
    return order[:k]


def top_overlap(a, b) -> float:
    """|A intersect B| / k for two top-k lists of hashable example identities (k = the shorter length)."""
    k = min(len(a), len(b))
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k if k else float("nan")


# -- DP audit (Jagielski et al. 2020; Nasr et al. 2021) ---------------------------------------------


def epsilon_lower_bound(tp: int, n_members: int, fp: int, n_non_members: int, delta: float,
                        confidence: float = 0.95) -> tuple[float, str]:
    """Empirical lower bound on epsilon from one threshold's counts -> (eps_lb, form).

    An (eps, delta)-DP training bounds every test: TPR <= e^eps FPR + delta and
    1 - FPR <= e^eps (1 - TPR) + delta. With Clopper-Pearson intervals at ``confidence`` (two-sided,
    so each one-sided bound holds at 1 - (1 - confidence) / 2 and both together at ``confidence``):
      form "tpr/fpr":   log((TPR_lo - delta) / FPR_hi)
      form "tnr/fnr":   log((1 - FPR_hi - delta) / (1 - TPR_lo))
    The larger is returned, floored at 0 (form "none" when neither is positive)."""
    from ..stats import proportion_interval

    tpr_lo, _ = proportion_interval(tp, n_members, confidence, method="exact")
    _, fpr_hi = proportion_interval(fp, n_non_members, confidence, method="exact")
    best, form = 0.0, "none"
    if tpr_lo - delta > 0 and fpr_hi > 0:
        value = float(np.log((tpr_lo - delta) / fpr_hi))
        if value > best:
            best, form = value, "tpr/fpr"
    if 1 - fpr_hi - delta > 0 and tpr_lo < 1:
        value = float(np.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
        if value > best:
            best, form = value, "tnr/fnr"
    return best, form


def _threshold_counts(scores: np.ndarray, is_member: np.ndarray):
    """(thresholds, tp, fp) for the rule "member iff score >= threshold", at every distinct score."""
    thresholds = np.unique(scores)[::-1]
    pos = np.sort(scores[is_member])
    neg = np.sort(scores[~is_member])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return thresholds, tp, fp


def _bounds_vectorised(tp, n_pos, fp, n_neg, delta, confidence) -> np.ndarray:
    """epsilon_lower_bound for arrays of counts (scipy's beta quantiles: the Clopper-Pearson bounds)."""
    from scipy.stats import beta

    alpha = 1.0 - confidence
    tp, fp = np.asarray(tp, float), np.asarray(fp, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr_lo = np.where(tp > 0, beta.ppf(alpha / 2, tp, n_pos - tp + 1), 0.0)
        fpr_hi = np.where(fp < n_neg, beta.ppf(1 - alpha / 2, fp + 1, n_neg - fp), 1.0)
        a = np.where((tpr_lo - delta > 0) & (fpr_hi > 0), np.log((tpr_lo - delta) / fpr_hi), 0.0)
        b = np.where((1 - fpr_hi - delta > 0) & (tpr_lo < 1), np.log((1 - fpr_hi - delta) / (1 - tpr_lo)), 0.0)
    return np.nan_to_num(np.maximum(np.maximum(a, b), 0.0))


def dp_audit(scores: np.ndarray, is_member: np.ndarray, select: np.ndarray, delta: float,
             confidence: float = 0.95) -> dict:
    """The epsilon lower bound of the rule "member iff score >= t", with t chosen on one part.

    ``select`` (bool [N]): the examples on which the threshold is chosen (the one with the largest
    bound there); the bound is then computed on the other examples only, so the Clopper-Pearson
    intervals are not spent on the choice. Returns eps_lb, form, threshold, and the held-out counts.
    """
    is_member = np.asarray(is_member, bool)
    select = np.asarray(select, bool)
    s_scores, s_member = scores[select], is_member[select]
    n_pos, n_neg = int(s_member.sum()), int((~s_member).sum())
    thresholds, tp, fp = _threshold_counts(s_scores, s_member)
    bounds = _bounds_vectorised(tp, n_pos, fp, n_neg, delta, confidence)
    t = float(thresholds[int(np.argmax(bounds))]) if len(bounds) else float("inf")
    e_scores, e_member = scores[~select], is_member[~select]
    flagged = e_scores >= t
    tp_e, fp_e = int((flagged & e_member).sum()), int((flagged & ~e_member).sum())
    n_pos_e, n_neg_e = int(e_member.sum()), int((~e_member).sum())
    eps, form = epsilon_lower_bound(tp_e, n_pos_e, fp_e, n_neg_e, delta, confidence)
    return {"eps_lb": eps, "form": form, "threshold": t, "tp": tp_e, "n_members": n_pos_e, "fp": fp_e,
            "n_non_members": n_neg_e, "selection_bound": float(bounds.max()) if len(bounds) else 0.0}


# -- reading the saved per-example arrays (examples/membership--<model>--seed<s>.npz) ---------------


def targets_in_examples(arrays: dict) -> list[str]:
    """Key prefixes of the targets in one file: ``["target0/", ...]`` (shared design) or ``[""]``."""
    if "is_member" in arrays:
        return [""]
    found = sorted({k.split("/", 1)[0] for k in arrays if k.startswith("target") and k.endswith("/is_member")},
                   key=lambda t: int(t[len("target"):]))
    return [f"{t}/" for t in found]


def attacks_in_examples(arrays: dict) -> list[str]:
    prefixes = targets_in_examples(arrays)
    if not prefixes:
        return []
    head = f"{prefixes[0]}score/"
    return [k[len(head):] for k in arrays if k.startswith(head)]


def pooled_from_examples(arrays: dict, attack: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_member) of ``attack`` over every target of one file, concatenated."""
    prefixes = targets_in_examples(arrays)
    scores = np.concatenate([np.asarray(arrays[f"{t}score/{attack}"], float) for t in prefixes])
    truth = np.concatenate([np.asarray(arrays[f"{t}is_member"], bool) for t in prefixes])
    return scores, truth


def exposed_identities(arrays: dict) -> list[tuple[int, int]]:
    """The top-exposed examples of one file as (split: 0 train / 1 test, position in that split)."""
    if "exposure/top" not in arrays:
        return []
    top = np.asarray(arrays["exposure/top"], int)
    return list(zip(np.asarray(arrays["pool/split"])[top].tolist(), np.asarray(arrays["pool/index"])[top].tolist()))
