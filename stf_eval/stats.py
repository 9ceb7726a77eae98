"""Intervals and paired comparisons: one module used by suites, the verdict and the compare page.

Formatting stays in the report; this module imports nothing from ``stf_eval.report``.
"""

from __future__ import annotations

import math


def proportion_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Confidence interval of a proportion k / n: ``wilson`` (default) or ``exact`` (Clopper-Pearson).

    (nan, nan) when n == 0.
    """
    if n <= 0:
        return math.nan, math.nan
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(int(k), int(n), alpha=1.0 - confidence,
                                method={"wilson": "wilson", "exact": "beta"}[method])
    return float(lo), float(hi)
