"""Read a finished run directory: results.json and the files beside it (never models)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StfEvalError
from ..records import COLUMNS, SETTING_COLUMNS


def write_text(path: Path, text: str) -> None:
    """Atomic write (temp file + rename), without importing torch as stf_eval.cache would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDirError(StfEvalError):
    """A path that is not a readable, finished stf-eval run directory."""

    exit_code = 2


@dataclass
class RunData:
    path: Path
    results: dict
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.results.get("name") or self.config.get("name") or self.path.name)

    @property
    def records(self) -> list[dict]:
        return self.results.get("records", [])

    @property
    def cells(self) -> list[dict]:
        return self.results.get("cells", [])

    @property
    def seeds(self) -> list[int]:
        seen = sorted({int(c["seed"]) for c in self.cells} | {int(r["seed"]) for r in self.records})
        return seen or list(self.config.get("seeds", []))

    @property
    def dataset(self) -> str:
        return str(self.splits.get("dataset") or self.config.get("data", {}).get("dataset") or "")

    def models(self) -> list[str]:
        """Model entry names: the config's order first, then any others found in cells or records."""
        names = list(self.config.get("models", {}))
        for source in (self.cells, self.records):
            for row in source:
                if row.get("model") is not None and str(row["model"]) not in names:
                    names.append(str(row["model"]))
        return names

    def plugin_of(self, model: str) -> str:
        """The plugin behind a model entry (entries can be renamed; plugins cannot)."""
        for cell in self.cells:
            if cell.get("model") == model and cell.get("plugin"):
                return str(cell["plugin"])
        entry = self.config.get("models", {}).get(model, {})
        return str(entry.get("plugin", model))

    def suite_params(self, suite: str) -> dict:
        return dict(self.config.get("suites", {}).get(suite, {}))

    def ood_groups(self) -> dict[str, str]:
        """OOD set name -> 'near' / 'far', from the config (or splits.json)."""
        sets = self.config.get("ood") or self.splits.get("ood") or {}
        return {name: str(spec.get("group", "")) for name, spec in sets.items() if isinstance(spec, dict)}


def _read_json(path: Path, required: bool = False) -> dict:
    if not path.is_file():
        if required:
            raise RunDirError(f"{path.parent}: no {path.name} (is this a finished stf-eval run directory?)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> RunData:
    """Load a run directory; raise RunDirError (one line, exit 2) if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory (expected a finished stf-eval run directory)")
    if not (path / "results.json").is_file() and (path / "results.csv").is_file():
        results = _results_from_csv(path / "results.csv")  # a published run may ship the CSV only
    else:
        results = _read_json(path / "results.json", required=True)
    records = results.get("records")
    if not isinstance(records, list):
        raise RunDirError(f"{path / 'results.json'}: no 'records' list (not an stf-eval results file)")
    for i, row in enumerate(records):
        missing = [c for c in ("model", "suite", "metric", "value", "seed") if not isinstance(row, dict) or c not in row]
        if missing:
            raise RunDirError(f"{path / 'results.json'}: record {i} lacks {', '.join(missing)}")
    return RunData(path=path, results=results, config=_read_json(path / "config.json"),
                   environment=_read_json(path / "environment.json"),
                   splits=_read_json(path / "splits.json"))


def _results_from_csv(path: Path) -> dict:
    """results.json's records rebuilt from results.csv (cells and run metadata are not in the CSV)."""
    import csv

    def value(col, text):
        if text == "":
            return None
        if col in ("value", "ci_low", "ci_high", "eps"):
            return float(text)
        if col in ("seed", "severity", "n"):
            return int(float(text))
        return text

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")) from exc
    return {"records": rows, "cells": []}


def records_frame(run: RunData):
    """The records as a DataFrame: every standard column present, empty settings as ''."""
    import pandas as pd

    df = pd.DataFrame.from_records(run.records)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    for col in ("ci_low", "ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in (*SETTING_COLUMNS, "dataset", "group", "note"):
        df[col] = df[col].map(_setting)
    df["model"] = df["model"].astype(str)
    df["suite"] = df["suite"].astype(str)
    df["metric"] = df["metric"].astype(str)
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(-1).astype(int)
    return df


def _setting(value):
    """Empty settings become '' (groupable); numbers stay numbers so they sort numerically."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        return int(value) if value.is_integer() and abs(value) >= 1 else value
    return value
