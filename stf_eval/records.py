"""Tidy records: one row per (model, suite, dataset, setting, metric, seed)."""

from __future__ import annotations

REQUIRED_COLUMNS = ("model", "suite", "dataset", "metric", "value", "seed")
SETTING_COLUMNS = ("attack", "eps", "ood_set", "score", "shift", "severity", "stage")
EXTRA_COLUMNS = ("ci_low", "ci_high", "n", "group", "note")
COLUMNS = REQUIRED_COLUMNS + SETTING_COLUMNS + EXTRA_COLUMNS


def make_record(model: str, suite: str, dataset: str, metric: str, value, seed: int, **settings) -> dict:
    unknown = [k for k in settings if k not in SETTING_COLUMNS + EXTRA_COLUMNS]
    if unknown:
        raise ValueError(f"unknown record column(s) {unknown}; allowed: {SETTING_COLUMNS + EXTRA_COLUMNS}")
    row = {"model": model, "suite": suite, "dataset": dataset, "metric": metric,
           "value": None if value is None else float(value), "seed": int(seed)}
    for col in SETTING_COLUMNS + EXTRA_COLUMNS:
        v = settings.get(col)
        row[col] = v
    return row


def to_frame(records: list[dict]):
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[list(COLUMNS)]
