"""Merge runs of the same configuration with different seeds into one run directory.

``stf-eval merge RUN... -o DIR``: the records, cells, per-example arrays and figures of every run,
under one config whose ``seeds`` is the union. The merged directory is an ordinary run directory:
its report shows means over seeds, and its verdict resamples seeds then examples (docs/report.md).
It also holds ``over_seeds.csv``: per (suite, model, metric, setting) the mean over seeds, the
sample std, the number of seeds and a 95% Student-t interval of the mean.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..errors import ConfigError
from .load import load_run, records_frame, write_text

#: config keys allowed to differ between merged runs
FREE_KEYS = {"seeds", "output_dir", "cache_dir", "name", "description", "executor", "figures"}


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if not prefix and k in FREE_KEYS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def over_seeds(df):
    """Mean, sample std, n seeds and a 95% t interval of the mean, per record key."""
    import pandas as pd
    from scipy.stats import t

    from .compare import KEY

    keys = [k for k in KEY if k != "other_dataset"]
    per_seed = df.groupby([*keys, "seed"], sort=False, dropna=False)["value"].mean().reset_index()
    rows = []
    for key, g in per_seed.groupby(keys, sort=False, dropna=False):
        vals = g["value"].dropna().to_numpy()
        n = len(vals)
        mean = float(vals.mean()) if n else math.nan
        std = float(vals.std(ddof=1)) if n > 1 else math.nan
        half = float(t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        rows.append({**dict(zip(keys, key)), "mean": mean, "std": std, "n_seeds": n,
                     "ci_low": mean - half if n > 1 else math.nan, "ci_high": mean + half if n > 1 else math.nan})
    return pd.DataFrame(rows)


def merge_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the merged run directory ``out``; ConfigError (one line, exit 2) if the runs do not merge."""
    if len(run_dirs) < 2:
        raise ConfigError("merge: give at least two run directories")
    runs = [load_run(d) for d in run_dirs]
    first = runs[0]
    for r in runs[1:]:
        diff = _config_differences(first.config, r.config)
        if diff:
            raise ConfigError(f"merge: {r.path} has another configuration than {first.path} "
                              f"(differs in {', '.join(diff[:5])}); only seeds may differ")
        if first.splits and r.splits and first.splits != r.splits:
            raise ConfigError(f"merge: {r.path} has other data splits than {first.path} (splits.json differs)")
    seen: dict[int, Path] = {}
    for r in runs:
        for s in r.seeds:
            if s in seen:
                raise ConfigError(f"merge: seed {s} is in both {seen[s]} and {r.path}; merged runs need distinct seeds")
            seen[s] = r.path
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"merge: {target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    records = [row for r in runs for row in r.records]
    cells = [c for r in runs for c in r.cells]
    name = f"{first.name} (merged: {len(runs)} runs)"
    write_text(target / "results.json", json.dumps({**first.results, "name": name, "records": records,
                                                    "cells": cells}, indent=1))
    config = {**first.config, "seeds": sorted(seen)}
    write_text(target / "config.json", json.dumps(config, indent=1))
    env = {**first.environment, "merged_from": [str(r.path) for r in runs]}
    write_text(target / "environment.json", json.dumps(env, indent=1))
    if first.splits:
        write_text(target / "splits.json", json.dumps(first.splits))
    for r in runs:
        for folder in ("examples", "figures"):
            src = r.path / folder
            if src.is_dir():
                (target / folder).mkdir(exist_ok=True)
                for f in src.iterdir():
                    if f.is_file() and not (target / folder / f.name).exists():
                        shutil.copy2(f, target / folder / f.name)
    merged = load_run(target)
    df = records_frame(merged)
    df.to_csv(target / "results.csv", index=False)
    over_seeds(df).to_csv(target / "over_seeds.csv", index=False)
    return target
