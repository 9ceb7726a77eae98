"""Several runs side by side: the same (suite, model, metric, setting) across runs, differences marked.

A value differs from the reference (the first run that has it), on the means over seeds, when
``|a - b| > abs_tol`` for rates and scores bounded by 1 (accuracy, ECE, AUROC, TPR, ...), and when
``|a - b| > rel_tol * max(|a|, |b|)`` for unbounded figures (NLL, seconds, parameters, memory,
latency, epsilon). A row that exists in some runs only is marked as such.

Beside each value that is not the reference, the signed difference from the reference and, where
the records allow (several seeds on both sides, or recorded intervals, or an accuracy with its n),
its interval and a judgment by the verdict's machinery (docs/report.md): the runs are independent,
so the difference is unpaired; Holm's correction runs over every judged cell of the page; the cell
reads better / worse (in the metric's direction), equivalent (inside the verdict's margin) or
inconclusive. The in-distribution dataset is not part of the key, so runs on two
datasets line up; any other dataset named in a record is.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..errors import ConfigError
from ..metrics.names import better
from .headline import headlines
from .load import RunData, load_run, records_frame, write_text
from .stats import Stat, fmt, fmt_pm, fmt_setting, seed_stats
from .tables import Cell, Table, metric_label

KEY = ["suite", "model", "metric", "attack", "eps", "ood_set", "score", "shift", "severity", "stage", "other_dataset"]
SETTINGS = KEY[3:]
IGNORED_CONFIG = {"output_dir", "cache_dir"}  # always differ, say nothing about the results


def labels_for(runs: list[RunData]) -> list[str]:
    """Short unique run labels: the run name, else the directory name, else numbered."""
    labels = [r.name for r in runs]
    labels = [r.path.name if labels.count(lab) > 1 else lab for r, lab in zip(runs, labels)]
    return [f"{lab} [{i + 1}]" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


# unbounded figures compared relatively; every other metric whose values lie in [-1, 1] absolutely
RELATIVE = {"nll", "train_seconds", "peak_memory_mb", "latency_ms_per_example", "trainable_params",
            "distribution_params", "total_params", "forward_passes_per_prediction", "dp_epsilon"}


def differs(a: float, b: float, rel_tol: float, abs_tol: float, metric: str = "") -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) != math.isnan(b)
    if metric in RELATIVE or max(abs(a), abs(b)) > 1:
        return abs(a - b) > rel_tol * max(abs(a), abs(b))
    return abs(a - b) > abs_tol


def run_stats(run: RunData) -> dict[tuple, Stat]:
    df = records_frame(run)
    df["other_dataset"] = df["dataset"].map(lambda d: "" if d in ("", run.dataset) else d)
    return seed_stats(df, KEY)


def _setting_text(key: tuple) -> str:
    d = dict(zip(KEY, key))
    return " ".join(f"{k.replace('other_', '')}={fmt_setting(d[k])}" for k in SETTINGS if d[k] != "")


def judge_deltas(keys: list[tuple], stats: list[dict], alpha: float = 0.05) -> dict[tuple, list[str]]:
    """{key: [sub text per run]}: the signed difference from the reference run, with an interval and
    a Holm-corrected judgment where the records allow one."""
    from .. import stats as st
    from .verdict import BETTER, EQUIVALENT, INCONCLUSIVE, MARGINS, WORSE, _from_records, oriented

    cells = []  # (key, run index, metric, delta, test)
    for key in keys:
        values = [s.get(key) for s in stats]
        ref = next((v for v in values if v is not None), None)
        metric = dict(zip(KEY, key))["metric"]
        for i, v in enumerate(values):
            if v is None or v is ref or ref is None or math.isnan(v.mean) or math.isnan(ref.mean):
                continue
            test, _ = _from_records(v, ref, metric)
            cells.append((key, i, metric, v.mean - ref.mean, test))
    tested = [c for c in cells if c[4] is not None]
    _, rejected, levels = st.holm_levels([c[4].pvalue for c in tested], alpha)
    verdicts = {}
    for (key, i, metric, d, test), rej, level in zip(tested, rejected, levels):
        lo, hi = test.interval(level)
        margin = MARGINS.get(metric, math.nan)
        if rej and (lo > 0 or hi < 0):
            word = (BETTER if oriented(metric) * d > 0 else WORSE) if better(metric) else "differs"
        elif math.isfinite(margin) and -margin <= lo and hi <= margin:
            word = EQUIVALENT
        else:
            word = INCONCLUSIVE
        verdicts[key, i] = f" [{fmt(lo, metric)}, {fmt(hi, metric)}] {word}"
    out: dict[tuple, list[str]] = {}
    for key, i, metric, d, _ in cells:
        sign = "+" if d > 0 else ""
        out.setdefault(key, [""] * len(stats))[i] = f"\u0394 {sign}{fmt(d, metric)}" + verdicts.get((key, i), "")
    return out


def _cells(values: list[Stat | None], metric: str, rel_tol: float, abs_tol: float,
           subs: list[str] | None = None) -> tuple[list[Cell], str, float]:
    present = [v for v in values if v is not None]
    ref = present[0] if present else None
    cells, status, spread = [], "same", 0.0
    partial = len(present) < len(values)
    for v in values:
        if v is None:
            cells.append(Cell("absent", cls="missing", title="not in this run"))
            continue
        text = fmt_pm(v.mean, v.std, metric) if v.has_std else fmt(v.mean, metric)
        cls = "only" if partial else ""
        if ref is not None and v is not ref and differs(v.mean, ref.mean, rel_tol, abs_tol, metric):
            cls, status = "diff", "differs"
        if ref is not None and not (math.isnan(v.mean) or math.isnan(ref.mean)):
            spread = max(spread, abs(v.mean - ref.mean))
        cells.append(Cell(text, cls=cls, title=f"mean over {v.n} seed(s)",
                          sub=(subs[len(cells)] if subs else "")))
    if partial:
        status = "partial"
    return cells, status, spread


def key_table(title: str, keys: list[tuple], stats: list[dict], labels: list[str], rel_tol: float,
              abs_tol: float, caption: str = "", deltas: dict | None = None) -> tuple[Table, int]:
    head = [[Cell("suite", header=True, cls="rowkey"), Cell("model", header=True, cls="rowkey"),
             Cell("metric", header=True, cls="rowkey"), Cell("setting", header=True, cls="rowkey")]
            + [Cell(lab, header=True) for lab in labels] + [Cell("max |\u0394|", header=True,
                                                               title="largest difference from the reference run")]]
    body, n_diff = [], 0
    for key in keys:
        d = dict(zip(KEY, key))
        cells, status, spread = _cells([s.get(key) for s in stats], d["metric"], rel_tol, abs_tol,
                                       (deltas or {}).get(key))
        n_diff += status != "same"
        body.append([Cell(str(d["suite"]), header=True, cls="rowkey"), Cell(str(d["model"]), cls="l"),
                     Cell(metric_label(d["metric"]), cls="l"), Cell(_setting_text(key), cls="l")]
                    + cells + [Cell(fmt(spread, d["metric"]) if status != "partial" else status,
                                    cls="diff" if status == "differs" else "")])
    return Table(title, head, body, caption=caption), n_diff


def _flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


def diff_table(title: str, dicts: list[dict], labels: list[str], ignore=()) -> Table | None:
    flats = [_flatten(d) for d in dicts]
    keys = list(dict.fromkeys(k for f in flats for k in f if k.split(".")[0] not in ignore))
    rows = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    if not rows:
        return None
    head = [[Cell("key", header=True, cls="rowkey")] + [Cell(lab, header=True) for lab in labels]]
    body = [[Cell(k, header=True, cls="rowkey")] + [Cell(f.get(k, "absent"), cls="l wrap" if k in f else "missing")
                                                    for f in flats] for k in rows]
    return Table(title, head, body)


def summary_compare(runs, frames, labels, rel_tol, abs_tol) -> Table | None:
    heads = [{h.key: h for h in headlines(df, run)} for run, df in zip(runs, frames)]
    keys = list(dict.fromkeys(k for hs in heads for k in hs))
    if not keys:
        return None
    models = list(dict.fromkeys(m for run in runs for m in run.models()))
    stats = [{k: seed_stats(h.frame, ["model"]) for k, h in hs.items()} for hs in heads]
    first = {k: next(hs[k] for hs in heads if k in hs) for k in keys}
    head = [[Cell("", header=True, cls="lvl")] + [Cell(first[k].label, header=True, colspan=len(runs),
                                                       title=" | ".join(f"{lab}: {hs[k].title}" for lab, hs in
                                                                        zip(labels, heads) if k in hs))
                                                  for k in keys],
            [Cell("model", header=True, cls="rowkey")] + [Cell(lab, header=True) for _ in keys for lab in labels]]
    body = []
    for m in models:
        row = [Cell(m, header=True, cls="rowkey")]
        for k in keys:
            vals = [s.get(k, {}).get((m,)) for s in stats]
            cells, _, _ = _cells(vals, first[k].metric, rel_tol, abs_tol)
            # a headline whose selection differs between runs (other eps, other score) says so
            titles = {hs[k].label for hs in heads if k in hs}
            if len(titles) > 1:
                for c, hs in zip(cells, heads):
                    if k in hs:
                        c.sub = hs[k].label
            row += cells
        body.append(row)
    return Table("Headline figures side by side", head, body, cls="summary",
                 caption="Each run's headline selection (hover the headers); yellow: differs from the first run "
                         "beyond the tolerance; blue: the model or figure is missing from some run.")


def compare_context(run_dirs: list[str | Path], rel_tol: float = 0.05, abs_tol: float = 0.01) -> dict:
    if len(run_dirs) < 2:
        raise ConfigError("compare: give at least two run directories")
    if rel_tol < 0 or abs_tol < 0:
        raise ConfigError("compare: tolerances must be >= 0")
    runs = [load_run(d) for d in run_dirs]
    labels = labels_for(runs)
    frames = [records_frame(r) for r in runs]
    stats = [run_stats(r) for r in runs]
    keys = list(dict.fromkeys(k for s in stats for k in s))
    suites = list(dict.fromkeys(k[0] for k in keys))
    deltas = judge_deltas(keys, stats)
    diff_keys = []
    per_suite = []
    for suite in suites:
        ks = [k for k in keys if k[0] == suite]
        table, n_diff = key_table(suite, ks, stats, labels, rel_tol, abs_tol, deltas=deltas)
        per_suite.append((table, n_diff))
    for k in keys:
        _, status, _ = _cells([s.get(k) for s in stats], k[2], rel_tol, abs_tol)
        if status != "same":
            diff_keys.append(k)
    differences, _ = key_table("Differences", diff_keys, stats, labels, rel_tol, abs_tol,
                               caption="Rows whose value differs beyond the tolerance in some run, or that "
                                       "exist in some runs only. Under each value: the signed difference from "
                                       "the reference run (\u0394) and, where the records allow, its "
                                       "Holm-corrected interval and judgment (unpaired: the runs are "
                                       "independent; docs/report.md).", deltas=deltas)
    runs_head = [[Cell("run", header=True, cls="rowkey")] + [Cell(x, header=True) for x in
                                                              ("directory", "dataset", "seeds", "models", "records",
                                                               "device", "git commit", "time (UTC)")]]
    runs_body = [[Cell(lab, header=True, cls="rowkey"), Cell(str(r.path), cls="l"), Cell(r.dataset, cls="l"),
                  Cell(", ".join(map(str, r.seeds)), cls="l"), Cell(", ".join(r.models()), cls="l wrap"),
                  Cell(str(len(r.records))), Cell(str(r.environment.get("device", "")), cls="l"),
                  Cell(str(r.environment.get("git_commit", "")), cls="l"),
                  Cell(str(r.environment.get("time_utc", "")), cls="l")] for lab, r in zip(labels, runs)]
    from .. import __version__

    return {
        "title": "stf-eval comparison: " + " vs ".join(labels),
        "labels": labels,
        "runs_table": Table("Runs", runs_head, runs_body),
        "summary": summary_compare(runs, frames, labels, rel_tol, abs_tol),
        "differences": differences,
        "n_keys": len(keys),
        "n_diff": len(diff_keys),
        "per_suite": per_suite,
        "config_diff": diff_table("Configuration differences (config.json)", [r.config for r in runs], labels,
                                  ignore=IGNORED_CONFIG),
        "env_diff": diff_table("Environment differences (environment.json)", [r.environment for r in runs],
                               labels, ignore={"time_utc"}),
        "rel_tol": rel_tol, "abs_tol": abs_tol, "version": __version__,
    }


def render_compare(run_dirs: list[str | Path], out: str | Path, rel_tol: float = 0.05,
                   abs_tol: float = 0.01) -> Path:
    from .html import environment

    start = time.perf_counter()
    ctx = compare_context(run_dirs, rel_tol, abs_tol)
    html = environment().get_template("compare.html").render(**ctx)
    target = Path(out)
    write_text(target, html)
    import logging

    logging.getLogger("stf_eval").info("comparison %s (%.1f KB) rendered in %.2f s", target, len(html) / 1024,
                                       time.perf_counter() - start)
    return target
