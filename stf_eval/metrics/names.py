"""The one place where record metric names are defined (each is explained in docs/).

``better``: "higher", "lower" or None (descriptive). The report uses it for arrows and best marks.
"""

METRICS: dict[str, tuple[str, str | None]] = {
    # calibration
    "accuracy": ("Top-1 accuracy of the predictive mean on the test split.", "higher"),
    "nll": ("Mean negative log-likelihood of the true class under the predictive mean (nats).", "lower"),
    "brier": ("Multi-class Brier score, sum over classes of squared error, averaged (0..2).", "lower"),
    "ece": ("Expected calibration error, top-label, 15 equal-width bins (Guo et al. 2017).", "lower"),
    "ece_adaptive": ("ECE with equal-mass (adaptive) bins.", "lower"),
    "ece_classwise": ("Classwise ECE (Kull et al. 2019), mean over classes.", "lower"),
    "mce": ("Maximum calibration error: largest bin gap, equal-width bins.", "lower"),
    # ood
    "auroc": ("Area under ROC, in-distribution positive, for an OOD score.", "higher"),
    "aupr_in": ("Area under precision-recall with in-distribution as positive.", "higher"),
    "aupr_out": ("Area under precision-recall with OOD as positive.", "higher"),
    "fpr95": ("Fraction of OOD accepted when 95% of in-distribution is accepted (in = positive).", "lower"),
    # adversarial
    "clean_accuracy": ("Accuracy on the unperturbed test examples used for the attack.", "higher"),
    "robust_accuracy": ("Accuracy on adversarial examples (mean over re-evaluations).", "higher"),
    "robust_accuracy_std": ("Standard deviation of robust_accuracy over the R re-evaluations with fresh "
                            "samples (0 for deterministic models).", None),
    "adv_detection_auroc": ("AUROC of separating adversarial from clean inputs by an uncertainty score.",
                            "higher"),
    "sanity_check": ("1 if an adversarial-evaluation sanity check passed, 0 if it failed.", "higher"),
    # membership
    "mia_auc": ("Area under ROC of the membership-inference attack (0.5 = chance).", "lower"),
    "mia_balanced_accuracy": ("Best balanced accuracy of the attack over thresholds.", "lower"),
    "tpr_at_0.1pct_fpr": ("Attack true-positive rate at 0.1% false-positive rate.", "lower"),
    "tpr_at_1pct_fpr": ("Attack true-positive rate at 1% false-positive rate.", "lower"),
    "mia_auc_pooled": ("mia_auc of every target's scores pooled into one ROC (shared design).", "lower"),
    "tpr_at_0.1pct_fpr_pooled": ("tpr_at_0.1pct_fpr of every target's scores pooled into one ROC.", "lower"),
    "tpr_at_1pct_fpr_pooled": ("tpr_at_1pct_fpr of every target's scores pooled into one ROC.", "lower"),
    "dp_audit_epsilon_lb": ("Empirical lower bound on the DP epsilon from the best attack's TPR and FPR "
                            "(Clopper-Pearson; attack and threshold chosen on held-apart examples).", "lower"),
    "generalization_gap": ("Train accuracy minus test accuracy of the target model.", "lower"),
    "dp_epsilon": ("Differential-privacy epsilon spent by DP-SGD (at the recorded delta).", "lower"),
    "mia_reference_seconds": ("Wall seconds the membership suite spent training (or loading) and querying "
                              "its reference models for one model.", None),
    # efficiency
    "trainable_params": ("Parameters optimised in the model's (last) training stage.", "lower"),
    "distribution_params": ("Parameters of variational distributions (mu and rho).", "lower"),
    "total_params": ("All parameters held by the model's networks (trainable or frozen).", "lower"),
    "train_seconds": ("Wall-clock seconds of a training stage (see the stage column).", "lower"),
    "peak_memory_mb": ("Peak memory while training, MiB (CUDA max allocated, or CPU peak RSS growth).", "lower"),
    "latency_ms_per_example": ("Inference latency per example at the evaluation S, milliseconds.", "lower"),
    "forward_passes_per_prediction": ("Network forward passes needed for one prediction.", "lower"),
    "epoch_seconds_median": ("Median seconds of one training epoch of a stage, after the warm-up epochs, at "
                             "the run's thread count (ci: order-statistic interval of the median).", "lower"),
    "train_step_peak_memory_mb": ("Peak memory of one training step measured in isolation (fresh process on "
                                  "CPU, CUDA max allocated on GPU), MiB; the note names the method.", "lower"),
    "svi_vs_full_bnn_epoch_seconds_ratio": ("STF-BNN SVI epoch / full-BNN epoch, measured side by side (interleaved, "
                                    "median of k repetitions) in the stf_bnn cell.", "lower"),
}


def better(metric: str) -> str | None:
    entry = METRICS.get(metric)
    return entry[1] if entry else None


def describe(metric: str) -> str:
    entry = METRICS.get(metric)
    return entry[0] if entry else ""
