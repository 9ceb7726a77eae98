"""Render a run directory's saved records into one self-contained HTML file (Jinja2, autoescape on).

Reads results.json, config.json, environment.json, splits.json and figures/ only (never models), so
``stf-eval report RUN_DIR`` re-renders in seconds without recomputing anything.
"""

from __future__ import annotations

import time
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .. import __version__
from ..errors import ConfigError
from .headline import headlines
from .load import load_run, records_frame, write_text
from .sections import FIGURE_CHOICES, build_sections
from .stats import fmt
from .summary import metadata, models_table, records_rows, summary_table, timings_table
from .verdict import ALPHA, MARGINS, claims_for, guards_for

VERDICT_CLASS = {"supported": "v-yes", "not supported": "v-no", "mixed": "v-mixed",
                 "not enough evidence": "v-na", "not measured in this run": "v-na"}
OUTCOME_CLASS = {"better": "best", "worse": "fail", "equivalent": "", "inconclusive": "missing"}


def environment() -> Environment:
    env = Environment(loader=PackageLoader("stf_eval", "report/templates"),
                      autoescape=select_autoescape(["html"], default_for_string=True, default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda value, metric="": fmt(value, metric)
    return env


def run_context(run_dir: str | Path, figures: str = "first-seed") -> dict:
    """Everything the run template shows, computed from the saved files.

    ``figures``: which figures the suites saved are embedded: those of each model's first seed
    (default: per-seed figures mostly repeat each other and dominate the file size), all, or none.
    """
    if figures not in FIGURE_CHOICES:
        raise ConfigError(f"figures: expected one of {', '.join(FIGURE_CHOICES)}, got {figures!r}")
    run = load_run(run_dir)
    df = records_frame(run)
    models = run.models()
    heads = headlines(df, run)
    return {
        "run": run,
        "title": f"stf-eval report: {run.name}",
        "description": run.config.get("description", ""),
        "models": models,
        "n_seeds": len(run.seeds),
        "summary": summary_table(heads, models, run.plugin_of),
        "claims": claims_for(run, df, heads, models),
        "verdict_class": VERDICT_CLASS,
        "outcome_class": OUTCOME_CLASS,
        "guards": guards_for(run, df, models),
        "alpha": ALPHA,
        "margins": MARGINS,
        "sections": build_sections(run, df, models, figures),
        "figures_choice": figures,
        "models_table": models_table(run, models),
        "timings": timings_table(run),
        "meta": metadata(run, models),
        "records": records_rows(df),
        "version": __version__,
    }


def render_run(run_dir: str | Path, out: str | Path | None = None, figures: str = "first-seed") -> Path:
    """Write RUN_DIR/report.html (or ``out``); return its path."""
    start = time.perf_counter()
    ctx = run_context(run_dir, figures)
    html = environment().get_template("run.html").render(**ctx, render_seconds=None)
    target = Path(out) if out else Path(run_dir) / "report.html"
    write_text(target, html)
    import logging

    logging.getLogger("stf_eval").info("report %s (%.1f KB) rendered in %.2f s", target, len(html) / 1024,
                                       time.perf_counter() - start)
    return target
