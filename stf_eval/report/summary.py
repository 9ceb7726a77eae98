"""Summary (model x headline figure), run metadata and the full records table of one run."""

from __future__ import annotations

import json

from ..metrics.names import describe
from .headline import Headline
from .stats import arrow, best_of, fmt, fmt_setting, seed_stats
from .tables import Cell, Table, value_cell


def summary_table(heads: list[Headline], models: list[str], plugin_of) -> Table | None:
    if not heads:
        return None
    stats = [seed_stats(h.frame, ["model"]) for h in heads]
    present = [m for m in models if any((m,) in s for s in stats)]
    head = [[Cell("model", header=True, cls="rowkey")]
            + [Cell(f"{h.label} {arrow(h.metric)}".strip(), header=True, title=f"{h.title}. {describe(h.metric)}")
               for h in heads]]
    bests = [best_of([s[(m,)].mean for m in present if (m,) in s], h.metric) for h, s in zip(heads, stats)]
    body = []
    for m in present:
        plugin = plugin_of(m)
        row = [Cell(m, header=True, cls="rowkey", sub=plugin if plugin != m else "", title=f"plugin: {plugin}")]
        for h, s, b in zip(heads, stats, bests):
            st = s.get((m,))
            row.append(value_cell(st, h.metric, best=st is not None and b is not None and st.mean == b,
                                   show_ci=False))
        body.append(row)
    return Table("Summary", head, body,
                 caption="Mean over seeds (\u00b1 sample std where several seeds ran); \u2191/\u2193: higher/lower is "
                         "better; shaded: best of the column. Hover a header for exactly what it selects; "
                         "confidence intervals are in the suite tables below.", cls="summary")


def timings_table(run) -> Table | None:
    cells = run.cells
    if not cells:
        return None
    suites = list(dict.fromkeys(s for c in cells for s in (c.get("suite_seconds") or {})))
    stages = list(dict.fromkeys(s for c in cells for s in ((c.get("efficiency") or {}).get("train_seconds") or {})))
    head = [[Cell("model", header=True, cls="rowkey"), Cell("seed", header=True, cls="rowkey"),
             Cell("cell s", header=True, title="whole cell: fit (or load) + every suite")]
            + [Cell(f"{s} s", header=True, title=f"suite {s}") for s in suites]
            + [Cell(f"train: {s} s", header=True, title=f"training stage {s} (* = loaded from the cache, "
                                                         "seconds as first measured)") for s in stages]]
    body = []
    for c in cells:
        eff = c.get("efficiency") or {}
        row = [Cell(str(c.get("model")), header=True, cls="rowkey"), Cell(str(c.get("seed")), header=True),
               Cell(fmt(c.get("cell_seconds")))]
        row += [Cell(fmt((c.get("suite_seconds") or {}).get(s))) for s in suites]
        for s in stages:
            v = (eff.get("train_seconds") or {}).get(s)
            cached = (eff.get("from_cache") or {}).get(s)
            row.append(Cell(fmt(v) + ("*" if cached else ""), title="from cache" if cached else ""))
        body.append(row)
    return Table("Timings", head, body, caption="Wall-clock seconds from results.json (cell_seconds, "
                                                "suite_seconds, efficiency.train_seconds).")


def models_table(run, models: list[str]) -> Table | None:
    head = [[Cell("model", header=True, cls="rowkey"), Cell("plugin", header=True), Cell("stochastic", header=True),
             Cell("S", header=True, title="samples per prediction at evaluation"), Cell("parameters", header=True),
             Cell("notes", header=True)]]
    body = []
    first = {}
    for c in run.cells:
        first.setdefault(c.get("model"), c)
    for m in models:
        c = first.get(m, {})
        caps = c.get("capabilities") or {}
        params = c.get("params") or run.config.get("models", {}).get(m, {})
        params = {k: v for k, v in params.items() if k != "plugin"}
        body.append([Cell(m, header=True, cls="rowkey"), Cell(run.plugin_of(m), cls="l"),
                     Cell({True: "yes", False: "no"}.get(caps.get("stochastic"), "")),
                     Cell(str(caps.get("n_samples", ""))),
                     Cell(", ".join(f"{k}={v}" for k, v in params.items()), cls="l wrap"),
                     Cell(", ".join(f"{k}: {v}" for k, v in (caps.get("notes") or {}).items()), cls="l wrap")])
    return Table("Models", head, body) if body else None


SHOW = ("attack", "eps", "ood_set", "score", "group", "shift", "severity", "stage")


def records_rows(df) -> list[list[str]]:
    rows = []
    for r in df.itertuples(index=False):
        d = r._asdict()
        setting = " ".join(f"{k}={fmt_setting(d[k])}" for k in SHOW if d.get(k) not in ("", None))
        ci = ""
        if d["ci_low"] == d["ci_low"] and d["ci_high"] == d["ci_high"]:  # not NaN
            ci = f"[{fmt(d['ci_low'], d['metric'])}, {fmt(d['ci_high'], d['metric'])}]"
        rows.append([d["model"], d["suite"], str(d["dataset"]), d["metric"], str(d["seed"]), setting,
                     fmt(d["value"], d["metric"]), ci, str(d["note"] or "")])
    return rows


def metadata(run, models: list[str]) -> dict:
    env = run.environment
    packages = env.get("packages") or {}
    splits = run.splits
    split_sizes = {k: len(v) for k, v in splits.items() if isinstance(v, list)}
    cfg = run.config
    facts = [
        ("run", run.name), ("source", cfg.get("source", "")), ("dataset", run.dataset),
        ("split", ", ".join(f"{k} {v}" for k, v in split_sizes.items())
         + (f" (split seed {splits.get('split_seed')})" if "split_seed" in splits else "")),
        ("OOD sets", ", ".join(f"{k} ({v.get('group', '')}, {v.get('size', '')})"
                               for k, v in (splits.get("ood") or cfg.get("ood") or {}).items())),
        ("seeds", ", ".join(map(str, run.seeds))), ("models", ", ".join(models)),
        ("net", json.dumps(cfg.get("net", {}))), ("training recipe", json.dumps(cfg.get("train", {}))),
        ("device", env.get("device", "")), ("git commit", env.get("git_commit", "")),
        ("time (UTC)", env.get("time_utc", "")), ("python", env.get("python", "")),
        ("platform", env.get("platform", "")), ("CPU threads", env.get("cpu_threads", "")),
        ("CUDA", env.get("cuda") or "none"),
        ("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v)),
    ]
    return {"facts": [(k, str(v)) for k, v in facts if v not in ("", None)],
            "config_json": json.dumps(cfg, indent=1), "environment_json": json.dumps(env, indent=1)}
