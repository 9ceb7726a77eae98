"""Calibration suite: proper scoring rules and calibration errors of the predictive mean on test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import calibration as cal
from ..metrics.predictive import log_mean_probs, mean_probs
from ..params import require
from ..registry import SUITES
from .base import SuitePlugin


@dataclass(frozen=True)
class CalibrationParams:
    bins: int = 15  # equal-width confidence bins for ECE

    def check(self) -> None:
        require(self.bins >= 2, "bins", "an integer >= 2", self.bins)


@SUITES.register("calibration")
class Calibration(SuitePlugin):
    """accuracy, NLL, Brier and ECE of the predictive mean (softmax averaged over S samples) on test."""

    Params = CalibrationParams
    metrics = ("accuracy", "nll", "brier", "ece")

    def run(self, model, data, ctx) -> None:
        logits = ctx.samples("test")
        labels = data.test.y.numpy()
        probs, logp = mean_probs(logits), log_mean_probs(logits)
        ctx.record("accuracy", cal.accuracy(probs, labels), n=len(labels))
        ctx.record("nll", cal.nll(probs, labels, logp), n=len(labels))
        ctx.record("brier", cal.brier(probs, labels), n=len(labels))
        ctx.record("ece", cal.ece(probs.astype(np.float64), labels, bins=self.params.bins), n=len(labels))
