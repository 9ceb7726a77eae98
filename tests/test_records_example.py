"""docs/records.md's worked example, run verbatim on a tiny run: its numbers equal results.csv.

The suites save their per-example arrays under the keys of docs/records.md; a key the example reads
and the run lacks fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stf_eval

ROOT = Path(__file__).resolve().parent.parent
MODEL = "deterministic"


def _example() -> str:
    text = (ROOT / "docs" / "records.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next((b for b in blocks if "lira_auc" in b), None)
    assert code, "docs/records.md lost its recomputation example"
    return code


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from stf_eval.registry import SUITES

    suites = {name: dict(SUITES.get(name).tiny) for name in ("calibration", "ood", "adversarial", "membership")}
    suites["calibration"].update(bootstrap=0)
    out = tmp_path_factory.mktemp("records") / "run"
    return stf_eval.evaluate(
        models={MODEL: "deterministic"}, data="digits", suites=suites, seeds=0, out=out, render=False,
        split={"max_train": 600, "max_test": 300, "val_fraction": 0.15},
        ood={"uniform_noise": {"dataset": "uniform_noise", "group": "far", "size": 100}},
        net={"arch": "lenet", "options": {"channels": [6, 12], "hidden": 32}},
        train={"epochs": 4, "batch_size": 64, "lr": 0.005}, cache_dir=str(cache_dir))


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_records_example_recomputes_results_csv(tiny_run):
    code = _example().replace('"runs/quick"', repr(str(tiny_run.path))).replace('"stf_bnn"', repr(MODEL))
    scope: dict = {}
    exec(compile(code, "docs/records.md", "exec"), scope)  # a missing key is a failure: the docs drifted
    df = tiny_run.results
    one = df[(df.model == MODEL) & (df.seed == 0)]

    def record(suite, metric, **settings):
        rows = one[(one.suite == suite) & (one.metric == metric)]
        for col in ("shift", "severity", "attack", "eps", "ood_set", "score"):
            want = settings.get(col, "")
            rows = rows[rows[col].astype(str) == str(want)]
        assert len(rows) == 1, (suite, metric, settings, rows)
        return float(rows["value"].iloc[0])

    assert scope["ece"] == pytest.approx(record("calibration", "ece"), abs=1e-4)
    assert scope["auroc"] == pytest.approx(record("ood", "auroc", ood_set="uniform_noise", score="msp"), abs=1e-6)
    assert scope["robust"] == pytest.approx(record("adversarial", "robust_accuracy", attack="pgd", eps=0.1),
                                            abs=1e-9)
    assert scope["worst_case"] == pytest.approx(record("adversarial", "robust_accuracy", attack="union",
                                                       eps=0.1), abs=1e-9)
    assert scope["lira_auc"] == pytest.approx(record("membership", "mia_auc", attack="lira_offline"), abs=1e-6)
