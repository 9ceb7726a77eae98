"""Seed aggregation and number formatting shared by the report's tables, verdicts and comparisons."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..metrics.names import better

# metrics that count things: shown as integers with thousands separators
COUNT_METRICS = {"trainable_params", "distribution_params", "total_params", "forward_passes_per_prediction"}


@dataclass(frozen=True)
class Stat:
    """One figure aggregated over seeds: mean, sample std (n >= 2), and the 95% CI envelope."""

    mean: float
    std: float = float("nan")
    n: int = 1
    ci_low: float = float("nan")
    ci_high: float = float("nan")

    @property
    def has_std(self) -> bool:
        return self.n >= 2 and not math.isnan(self.std)

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))


def seed_stats(df, keys: list[str]) -> dict[tuple, Stat]:
    """Group ``df`` by ``keys``: average within each seed first (a seed may hold several rows),
    then mean and sample std over seeds; the CI shown is the envelope of the per-seed CIs."""
    if df.empty:
        return {}
    per_seed = (df.groupby([*keys, "seed"], sort=False, dropna=False)
                .agg(value=("value", "mean"), ci_low=("ci_low", "min"), ci_high=("ci_high", "max"))
                .reset_index())
    agg = (per_seed.groupby(keys, sort=False, dropna=False)
           .agg(mean=("value", "mean"), std=("value", "std"), n=("value", "count"), ci_low=("ci_low", "min"),
                ci_high=("ci_high", "max"))
           .reset_index())
    out = {}
    for row in agg.itertuples(index=False, name=None):
        key, (mean, std, n, lo, hi) = tuple(row[:len(keys)]), row[len(keys):]
        if n == 0:
            continue
        out[key] = Stat(mean=float(mean), std=float(std) if n > 1 else float("nan"), n=int(n),
                        ci_low=float(lo), ci_high=float(hi))
    return out


def stat_of(values) -> Stat:
    """A Stat from plain per-seed values (no CI)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return Stat(mean=float("nan"), n=0)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
    return Stat(mean=mean, std=std, n=len(vals))


def fmt(value, metric: str = "") -> str:
    """A number for a table cell: counts as integers, others with 3-4 significant decimals."""
    if value is None:
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if metric in COUNT_METRICS or (abs(v) >= 1000):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 10:
        return f"{v:.2f}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}"


def fmt_pm(mean: float, std: float, metric: str = "") -> str:
    """'mean ± std' with the std at the mean's precision (a zero std of a count is left out)."""
    text = fmt(mean, metric)
    if std is None or math.isnan(std) or (std == 0 and metric in COUNT_METRICS):
        return text
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    return f"{text} \u00b1 {std:,.{decimals}f}" if decimals or abs(std) >= 1 or std == 0 else \
        f"{text} \u00b1 {fmt(std, metric)}"


def fmt_setting(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def arrow(metric: str) -> str:
    return {"higher": "\u2191", "lower": "\u2193"}.get(better(metric) or "", "")


def best_of(values: list[float], metric: str) -> float | None:
    """The best of ``values`` in the metric's better direction (None if it has none)."""
    direction = better(metric)
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals or direction is None or len(vals) < 2:
        return None
    return max(vals) if direction == "higher" else min(vals)


def sort_key(value):
    """Sort settings: empty first, numbers numerically, then strings."""
    if value == "" or value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))
