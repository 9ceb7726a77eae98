"""Tables as plain data (cells with text, classes and tooltips) for the templates to render.

``pivot`` turns tidy records into a table: rows and columns are combinations of record columns
(model, metric, attack, eps ...), each cell the mean (± std over seeds) with its 95% CI when recorded,
and the best value of each column (or row) marked in the metric's better direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..metrics.names import describe
from .stats import Stat, arrow, best_of, fmt, fmt_pm, fmt_setting, seed_stats

LABELS = {"ood_set": "OOD set", "eps": "eps", "attack": "attack", "score": "score", "shift": "shift",
          "severity": "severity", "stage": "stage", "metric": "metric", "model": "model", "seed": "seed",
          "dataset": "dataset", "suite": "suite"}


@dataclass
class Cell:
    text: str = ""
    cls: str = ""
    title: str = ""
    sub: str = ""  # a second, smaller line (a CI, a note)
    header: bool = False
    rowspan: int = 1
    colspan: int = 1


@dataclass
class Table:
    title: str
    head: list[list[Cell]]
    body: list[list[Cell]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    cls: str = ""

    @property
    def n_rows(self) -> int:
        return len(self.body)


def metric_label(metric: str) -> str:
    a = arrow(metric)
    return f"{metric} {a}" if a else metric


def value_cell(stat: Stat | None, metric: str, best: bool = False, extra_cls: str = "",
               show_ci: bool = True) -> Cell:
    if stat is None or math.isnan(stat.mean):
        return Cell("\u2013", cls="na", title="not recorded")
    text = fmt_pm(stat.mean, stat.std, metric) if stat.has_std else fmt(stat.mean, metric)
    title = [f"{metric}: mean over {stat.n} seed(s)"]
    if stat.has_std:
        title.append(f"\u00b1 sample std over seeds ({stat.std:.3g})")
    sub = ""
    if stat.has_ci and show_ci:
        sub = f"[{fmt(stat.ci_low, metric)}, {fmt(stat.ci_high, metric)}]"
        title.append("[95% CI" + (" envelope over seeds]" if stat.n > 1 else "]"))
    cls = " ".join(c for c in ("best" if best else "", extra_cls) if c)
    return Cell(text, cls=cls, title="; ".join(title), sub=sub)


def level_order(values) -> list:
    """Numbers ascending, then strings in order of first appearance ('' and 'total' first)."""
    seen = list(dict.fromkeys(values))
    nums = sorted(v for v in seen if isinstance(v, (int, float)) and not isinstance(v, bool))
    strs = [v for v in seen if not (isinstance(v, (int, float)) and not isinstance(v, bool))]
    specials = [s for s in ("", "total") if s in strs]
    return specials + nums + [s for s in strs if s not in specials]


def combos(df, keys: list[str], orders: dict[str, list] | None = None) -> list[tuple]:
    """Distinct combinations of ``keys`` in ``df``, ordered level by level."""
    if not keys:
        return [()]
    orders = dict(orders or {})
    ranks = {}
    for k in keys:
        order = orders.get(k) or level_order(df[k].tolist())
        extra = [v for v in level_order(df[k].tolist()) if v not in order]
        ranks[k] = {v: i for i, v in enumerate(list(order) + extra)}
    found = list(dict.fromkeys(tuple(r) for r in df[keys].itertuples(index=False, name=None)))
    return sorted(found, key=lambda c: tuple(ranks[k].get(v, 1e9) for k, v in zip(keys, c)))


def _header_text(key: str, value) -> tuple[str, str]:
    if key == "metric":
        return metric_label(value), describe(value)
    if value == "":
        return "\u2013", f"no {LABELS.get(key, key)}"
    return fmt_setting(value), f"{LABELS.get(key, key)} = {fmt_setting(value)}"


def pivot(df, rows: list[str], cols: list[str], title: str, metric: str | None = None, caption: str = "",
          best: str = "column", best_within: str | None = None, orders: dict | None = None,
          col_labels: dict | None = None) -> Table | None:
    """Rows x columns of seed-aggregated values; ``best``: 'column', 'row' or 'none'.

    ``metric`` names the metric when it is not one of the row/column keys. ``best_within``: a row key
    whose blocks are compared separately (e.g. each OOD score on its own).
    """
    if df.empty:
        return None
    stats = seed_stats(df, rows + cols)
    row_combos, col_combos = combos(df, rows, orders), combos(df, cols, orders)
    col_labels = col_labels or {}

    def metric_of(r, c):
        if metric:
            return metric
        return dict(zip(rows + cols, r + c)).get("metric", "")

    # best marks
    best_cells = set()
    if best == "column":
        for c in col_combos:
            blocks: dict = {}
            for r in row_combos:
                block = r[rows.index(best_within)] if best_within in rows else None
                blocks.setdefault(block, []).append(r)
            for block_rows in blocks.values():
                vals = {r: stats[r + c].mean for r in block_rows if (r + c) in stats}
                b = best_of(list(vals.values()), metric_of(block_rows[0], c))
                best_cells |= {(r, c) for r, v in vals.items() if b is not None and v == b}
    elif best == "row":
        for r in row_combos:
            vals = {c: stats[r + c].mean for c in col_combos if (r + c) in stats}
            b = best_of(list(vals.values()), metric_of(r, col_combos[0]))
            best_cells |= {(r, c) for c, v in vals.items() if b is not None and v == b}

    head = []
    for level, key in enumerate(cols):
        row = [Cell(LABELS.get(key, key), header=True, colspan=len(rows), cls="lvl")]
        i = 0
        while i < len(col_combos):
            prefix = col_combos[i][:level + 1]
            span = 1
            while i + span < len(col_combos) and col_combos[i + span][:level + 1] == prefix:
                span += 1
            text, tip = col_labels.get((key, prefix[-1])) or _header_text(key, prefix[-1])
            row.append(Cell(text, header=True, colspan=span, title=tip))
            i += span
        head.append(row)
    names = [Cell(LABELS.get(k, k), header=True, cls="rowkey") for k in rows]
    if not cols:
        head.append(names + [Cell(metric_label(metric or ""), header=True, title=describe(metric or ""))])
    else:
        head[-1] = names + head[-1][1:]

    body = []
    for i, r in enumerate(row_combos):
        line = []
        for j, key in enumerate(rows):
            if i > 0 and row_combos[i - 1][:j + 1] == r[:j + 1]:
                continue  # covered by a rowspan above
            span = 1
            while i + span < len(row_combos) and row_combos[i + span][:j + 1] == r[:j + 1]:
                span += 1
            text, tip = col_labels.get((key, r[j])) or _header_text(key, r[j])
            line.append(Cell(text if key != "model" else str(r[j]), header=True, rowspan=span, title=tip,
                             cls="rowkey"))
        for c in col_combos:
            line.append(value_cell(stats.get(r + c), metric_of(r, c), best=(r, c) in best_cells))
        body.append(line)
    return Table(title=title, head=head, body=body, caption=caption)


def varying(df, candidates) -> list[str]:
    """Setting columns that hold any value in ``df`` (in the given order)."""
    return [c for c in candidates if (df[c] != "").any()]
