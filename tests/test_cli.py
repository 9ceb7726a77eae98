"""The command line: bad input exits non-zero with one line and writes nothing; a tiny run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import tiny_toml


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stf_eval", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("content, overrides, needle", [
    ("name = [", [], "malformed TOML"),
    (tiny_toml(models="[models.nope]"), [], "unknown model 'nope'"),
    (tiny_toml(), ["--set", "train.epochs=-3"], "train.epochs"),
    (tiny_toml(), ["--set", "data.dataset=mnist"], "dataset 'mnist' not found under"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, content, overrides, needle):
    suite = tmp_path / "bad.toml"
    suite.write_text(content)
    out_dir = tmp_path / "out"
    no_data = tmp_path / "no-data"
    root = f'data.options.root="{no_data}"'
    extra = ["--set", root] if "data.dataset=mnist" in overrides else []
    res = cli("run", str(suite), "--out", str(out_dir), *extra, *overrides)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert err and err[-1].startswith("stf-eval: error:") and needle in err[-1]
    assert "Traceback" not in res.stderr
    assert not out_dir.exists()


def test_missing_suite_file(tmp_path):
    res = cli("run", str(tmp_path / "missing.toml"))
    assert res.returncode == 2 and "suite file not found" in res.stderr and "Traceback" not in res.stderr


def test_list_and_help():
    res = cli("list")
    assert res.returncode == 0 and "deterministic" in res.stdout and "mnist5k" in res.stdout
    assert cli("run", "--help").returncode == 0
    assert "--resume" in cli("run", "--help").stdout


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_tiny_run_writes_results_and_resumes(tmp_path, cache_dir):
    suite = tmp_path / "tiny.toml"
    suite.write_text(tiny_toml())
    out_dir = tmp_path / "run"
    res = cli("run", str(suite), "--out", str(out_dir), "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out_dir / "results.csv")
    assert {"model", "suite", "dataset", "metric", "value", "seed"} <= set(df.columns)
    assert set(df.metric) >= {"accuracy", "nll", "brier", "ece"}
    assert (out_dir / "report.html").stat().st_size > 0
    env = json.loads((out_dir / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"].startswith("cpu")
    splits = json.loads((out_dir / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"]), "members and non-members overlap"
    cell = out_dir / "cells" / "deterministic--seed0.json"
    stamp = cell.stat().st_mtime_ns
    res2 = cli("run", str(suite), "--out", str(out_dir), "--cache-dir", str(cache_dir), "--resume")
    assert res2.returncode == 0 and "done already" in res2.stderr
    assert cell.stat().st_mtime_ns == stamp
    res3 = cli("report", str(out_dir), "-o", str(tmp_path / "again.html"))
    assert res3.returncode == 0 and (tmp_path / "again.html").is_file()
