"""Render a run directory's results into one self-contained HTML file (Jinja2, autoescape on)."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..cache import atomic_write_text
from ..errors import StfEvalError
from ..metrics.names import better, describe

HEADLINE = ("accuracy", "nll", "brier", "ece")


def _env() -> Environment:
    return Environment(loader=PackageLoader("stf_eval", "report/templates"),
                       autoescape=select_autoescape(["html"]))


def load_run(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise StfEvalError(f"{run_dir}: no results.json (is this a finished stf-eval run directory?)")
    results = json.loads(path.read_text())
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    env = (json.loads((run_dir / "environment.json").read_text())
           if (run_dir / "environment.json").is_file() else {})
    return {"results": results, "config": config, "environment": env}


def summary_table(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Model x headline calibration metric (mean over seeds), with the best per column marked."""
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    if df.empty:
        return [], []
    df = df[(df["suite"] == "calibration") & df["metric"].isin(HEADLINE)]
    if df.empty:
        return [], []
    pivot = df.groupby(["model", "metric"], sort=False)["value"].mean().unstack("metric")
    cols = [m for m in HEADLINE if m in pivot.columns]
    rows = []
    for model, row in pivot.iterrows():
        cells = []
        for m in cols:
            col = pivot[m]
            b = better(m)
            best = (b == "higher" and row[m] == col.max()) or (b == "lower" and row[m] == col.min())
            cells.append({"value": f"{row[m]:.4f}", "best": bool(best)})
        rows.append({"model": model, "cells": cells})
    return cols, rows


def render_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    records = run["results"]["records"]
    cols, rows = summary_table(records)
    figures = []
    for fig in run["results"].get("figures", []):
        path = run_dir / fig["path"]
        if path.is_file():
            figures.append({**fig, "svg": path.read_text(encoding="utf-8")})
    html = _env().get_template("run.html").render(
        run=run, records=records, headline=cols, summary=rows, figures=figures,
        arrows={m: {"higher": "\u2191", "lower": "\u2193"}.get(better(m) or "", "") for m in cols},
        descriptions={m: describe(m) for m in cols},
    )
    target = Path(out) if out else run_dir / "report.html"
    atomic_write_text(target, html)
    return target
