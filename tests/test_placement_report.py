"""The "Layer placement" report section, on a synthetic run of stf_bnn models differing only in layers."""

from __future__ import annotations

import base64
import re

import pytest

from stf_eval.report.html import render_run, run_context
from stf_eval.report.load import load_run, records_frame
from stf_eval.report.placement import placement_metrics, placement_models
from stf_eval.report.synthetic import write_synthetic_run

PLACED = {"stf_10": ["10"], "stf_1": ["1"], "stf_all": "all", "stf_4": ["4"], "stf_8": ["8"]}


@pytest.fixture(scope="module")
def placement_run(tmp_path_factory):
    models = {"deterministic": "deterministic", **{m: "stf_bnn" for m in PLACED}}
    return write_synthetic_run(tmp_path_factory.mktemp("placement") / "run", models=models, layers=PLACED,
                               seeds=(0,))


def test_placements_are_found_and_ordered_by_layer(placement_run):
    run = load_run(placement_run)
    assert placement_models(run) == [("stf_1", "1"), ("stf_4", "4"), ("stf_8", "8"), ("stf_10", "10"),
                                     ("stf_all", "all")]


def test_metrics_have_the_records_intervals_and_the_strongest_attack(placement_run):
    run = load_run(placement_run)
    df = records_frame(run)
    panels = {title: (metric, stats) for title, metric, stats in placement_metrics(df, run)}
    assert {"accuracy", "NLL", "ECE"} <= set(panels)
    assert any(t.startswith("OOD AUROC near") for t in panels) and any(t.startswith("OOD AUROC far") for t in panels)
    assert any(t.startswith("robust acc.") for t in panels) and "MIA AUC (strongest attack)" in panels
    # accuracy: one seed, its record's CI is the interval
    acc = df[(df["metric"] == "accuracy") & (df["model"] == "stf_4") & (df["shift"] == "")]
    mean, low, high = panels["accuracy"][1]["stf_4"]
    assert (mean, low, high) == pytest.approx((acc["value"].iloc[0], acc["ci_low"].iloc[0], acc["ci_high"].iloc[0]))
    # MIA: the maximum over attacks, independently
    mia = df[(df["metric"] == "mia_auc") & (df["model"] == "stf_8")]
    assert panels["MIA AUC (strongest attack)"][1]["stf_8"][0] == pytest.approx(mia["value"].astype(float).max())
    # near OOD: mean over the near sets (two in the synthetic run) of the headline score
    near_title = next(t for t in panels if t.startswith("OOD AUROC near"))
    score = re.search(r"\((\w+)\)", near_title).group(1)
    near = df[(df["metric"] == "auroc") & (df["score"] == score) & df["ood_set"].isin(["fashion", "kmnist"])
              & (df["model"] == "stf_1")]
    assert len(near) == 2
    assert panels[near_title][1]["stf_1"][0] == pytest.approx(near["value"].astype(float).mean())


def test_section_is_rendered_with_its_figure(placement_run):
    ctx = run_context(placement_run)
    sec = next(s for s in ctx["sections"] if s.title == "Layer placement")
    assert len(sec.figures) == 1 and sec.figures[0].uri.startswith("data:image/svg+xml;base64,")
    svg = base64.b64decode(sec.figures[0].uri.split(",", 1)[1]).decode()
    for label in ("accuracy", "MIA AUC", "all", "deterministic (reference)"):
        assert label in svg
    html = render_run(placement_run).read_text()
    assert 'id="s-layer-placement"' in html and "Headline metrics by layer placed" in html


def test_no_section_without_a_placement_experiment(tmp_path):
    run_dir = write_synthetic_run(tmp_path / "run", models={"deterministic": "deterministic", "stf_bnn": "stf_bnn"},
                                  seeds=(0,))
    assert placement_models(load_run(run_dir)) == []
    assert all(s.title != "Layer placement" for s in run_context(run_dir)["sections"])
