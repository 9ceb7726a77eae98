"""The HTML report: self-contained, escaped, right numbers, verdict rules, comparisons, CLI errors."""

from __future__ import annotations

import json
import math
import re
import statistics
import time

import pytest

from stf_eval.cli import main
from stf_eval.report.compare import compare_context, differs, render_compare
from stf_eval.report.html import render_run, run_context
from stf_eval.report.stats import fmt, fmt_pm
from stf_eval.report.synthetic import MODELS, write_synthetic_run
from stf_eval.report.verdict import (
    MIXED,
    NOT_ENOUGH,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Comparison,
    Estimate,
    decide,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("synthetic") / "run")


@pytest.fixture(scope="module")
def rendered(synthetic):
    start = time.perf_counter()
    path = render_run(synthetic)
    seconds = time.perf_counter() - start
    print(f"synthetic report: {path} {path.stat().st_size / 1024:.0f} KB in {seconds:.2f} s")
    return path, path.read_text(encoding="utf-8"), seconds


def records(run_dir):
    return json.loads((run_dir / "results.json").read_text())["records"]


def values(run_dir, **match):
    return [r["value"] for r in records(run_dir) if all(r.get(k) == v for k, v in match.items())]


def test_report_is_self_contained_and_script_free(rendered, synthetic):
    path, html, seconds = rendered
    assert seconds < 30, f"rendering took {seconds:.1f} s"
    assert not re.search(r"<script", html, re.I), "the report must need no JavaScript"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I), "nothing may be fetched"
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    saved = json.loads((synthetic / "results.json").read_text())["figures"]
    first_seed = [f for f in saved if f["seed"] == 0]
    # by default each model's first seed's saved figures, plus the report's own (at least 4 here)
    assert html.count('src="data:image/svg+xml;base64,') >= len(first_seed) + 4
    later = sum(f["seed"] != 0 and f["suite"] == "calibration" for f in saved)
    assert f"{later} more figure(s) of further seeds" in html
    every = render_run(synthetic, synthetic / "all-figures.html", figures="all").read_text()
    assert every.count('src="data:image/svg+xml;base64,') >= len(saved) + 4 and "more figure(s)" not in every
    for needle in ("Summary", "Verdict on the STF-BNN paper", "Calibration on the test split", "accuracy under shift",
                   "OOD auroc", "Robust accuracy", "Adversarial sanity checks", "Membership inference",
                   "Training seconds per stage", "Run metadata", "Protocol", "All records",
                   "15 equal-width", "in-distribution is the positive class", "reference_models = 4"):
        assert needle in html, needle
    assert "\u2717 fail" in html and "\u2713 pass" in html
    assert "could not be rendered" not in html


def test_summary_numbers_and_best_marks_match_the_records(synthetic):
    ctx = run_context(synthetic)
    table = ctx["summary"]
    header = [c.text for c in table.head[0]]
    acc_col = next(i for i, t in enumerate(header) if t.startswith("accuracy"))
    rows = {r[0].text: r for r in table.body}
    # mean ± sample std over the two seeds, computed independently from results.json
    for model in MODELS:
        vals = values(synthetic, model=model, metric="accuracy", shift=None)
        assert rows[model][acc_col].text == fmt_pm(statistics.mean(vals), statistics.stdev(vals), "accuracy")
    means = {m: statistics.mean(values(synthetic, model=m, metric="accuracy", shift=None)) for m in MODELS}
    best = max(means, key=means.get)
    marked = [m for m, r in rows.items() if "best" in r[acc_col].cls]
    assert marked == [best]
    # lower-is-better column: ECE
    ece_col = next(i for i, t in enumerate(header) if t.startswith("ECE"))
    eces = {m: statistics.mean(values(synthetic, model=m, metric="ece", shift=None)) for m in MODELS}
    assert [m for m, r in rows.items() if "best" in r[ece_col].cls] == [min(eces, key=eces.get)]
    assert header[ece_col].endswith("\u2193") and header[acc_col].endswith("\u2191")


def test_headline_selections(synthetic):
    ctx = run_context(synthetic)
    header = [c.text for c in ctx["summary"].head[0]]
    rows = {r[0].text: r for r in ctx["summary"].body}
    # robust accuracy: PGD at the middle eps of the sweep (0.05, 0.1, 0.2) -> 0.1
    rob = next(i for i, t in enumerate(header) if t.startswith("robust acc. (pgd, eps 0.1)"))
    vals = values(synthetic, model="stf_bnn", metric="robust_accuracy", attack="pgd", eps=0.1)
    assert rows["stf_bnn"][rob].text.startswith(fmt(statistics.mean(vals), "robust_accuracy"))
    # MIA AUC: the strongest attack per seed, then the mean over seeds
    mia = next(i for i, t in enumerate(header) if t.startswith("MIA AUC"))
    per_seed = [max(r["value"] for r in records(synthetic) if r["model"] == "deterministic"
                    and r["metric"] == "mia_auc" and r["seed"] == s) for s in (0, 1)]
    assert rows["deterministic"][mia].text.startswith(fmt(statistics.mean(per_seed), "mia_auc"))
    # OOD AUROC: the entropy score, mean over the three sets
    ood = next(i for i, t in enumerate(header) if t.startswith("OOD AUROC (entropy)"))
    per_seed = [statistics.mean(r["value"] for r in records(synthetic) if r["model"] == "mc_dropout"
                                and r["metric"] == "auroc" and r["score"] == "entropy" and r["seed"] == s)
                for s in (0, 1)]
    assert rows["mc_dropout"][ood].text.startswith(fmt(statistics.mean(per_seed), "auroc"))


def test_claim_rules():
    def claim(*outcomes, number=2):
        c = Claim(number, "t", "s", "stf")
        c.comparisons = [Comparison("b", "accuracy", "", Estimate(0), Estimate(0), 0.0, outcome=o) for o in outcomes]
        decide(c)
        return c.verdict

    assert claim("better", "inconclusive") == SUPPORTED
    assert claim("inconclusive", "inconclusive") == NOT_ENOUGH
    assert claim("worse") == NOT_SUPPORTED
    assert claim("better", "worse") == MIXED
    assert claim("equivalent") == NOT_SUPPORTED  # no advantage ...
    assert claim("equivalent", number=1) == SUPPORTED  # ... but "matches"
    assert claim() == NOT_MEASURED


def test_verdicts_on_the_synthetic_run(synthetic):
    claims = {c.number: c for c in run_context(synthetic)["claims"]}
    # records only (no per-example arrays), two seeds: unpaired Welch intervals over seeds
    assert all("unpaired" in c.method for c in claims[2].comparisons)
    # STF-BNN failed a sanity check in one seed: said, and never "supported"
    assert claims[2].verdict != SUPPORTED and "gradient_free" in " ".join(claims[2].caveats)
    # single wall-clock timings do not decide the cost claim
    assert claims[4].verdict == NOT_ENOUGH and "single wall-clock timings" in claims[4].reason
    assert {c.baseline for c in claims[3].comparisons} == {"deterministic"}
    assert all(c.baseline != "dp_sgd" for c in claims[1].comparisons)
    # every comparison reports both numbers, and a verdict of not enough evidence says what would settle it
    assert all(not math.isnan(c.stf.value) and not math.isnan(c.base.value) for c in claims[1].comparisons)
    assert all(c.settle for c in claims.values() if c.verdict == NOT_ENOUGH)


def test_models_found_by_plugin_and_missing_baselines(tmp_path):
    run = write_synthetic_run(tmp_path / "renamed", models={"ours": "stf_bnn", "plain net": "deterministic"},
                              seeds=(0,))
    claims = {c.number: c for c in run_context(run)["claims"]}
    assert claims[1].stf_model == "ours" and claims[1].verdict != NOT_MEASURED
    assert {c.baseline for c in claims[3].comparisons} == {"plain net"}
    assert claims[4].verdict == NOT_MEASURED and "full_bnn" in claims[4].reason
    no_stf = write_synthetic_run(tmp_path / "nostf", models={"deterministic": "deterministic"}, seeds=(0,))
    assert {c.verdict for c in run_context(no_stf)["claims"]} == {NOT_MEASURED}


def test_untrusted_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    run = write_synthetic_run(tmp_path / "evil", models={evil: "stf_bnn", "d": "deterministic"}, seeds=(0,))
    results = json.loads((run / "results.json").read_text())
    results["notes"].append({"model": evil, "suite": "calibration", "seed": 0, "text": "<img src=x onerror=alert(1)>"})
    results["figures"][0]["caption"] = '"><script>alert(2)</script>'
    (run / "results.json").write_text(json.dumps(results))
    html = render_run(run).read_text()
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_minimal_run_dir_and_missing_figure(tmp_path):
    """Only results.json: still renders; a missing or escaping figure path is reported, not read."""
    run = tmp_path / "bare"
    run.mkdir()
    rec = {"model": "m", "suite": "calibration", "dataset": "d", "metric": "accuracy", "value": 0.5, "seed": 0}
    figs = [{"model": "m", "suite": "calibration", "seed": 0, "name": "x", "path": "figures/none.svg", "caption": "c"},
            {"model": "m", "suite": "calibration", "seed": 0, "name": "x", "path": "../../etc/passwd", "caption": "c"}]
    (run / "results.json").write_text(json.dumps({"name": "bare", "records": [rec], "figures": figs}))
    html = render_run(run).read_text()
    assert html.count("figure file missing") == 2 and "root:" not in html


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "results.json").write_text("{oops")
    assert main(["report", str(tmp_path / "notjson")]) == 2
    assert main(["compare", str(tmp_path / "notjson")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("stf-eval: error:") for line in err)
    assert "Traceback" not in "".join(err)


def test_compare_marks_differences_and_missing_rows(synthetic, tmp_path, capsys):
    models = {m: spec[0] for m, spec in MODELS.items() if m != "dp_sgd"}
    other = write_synthetic_run(tmp_path / "gpu", models=models, seeds=(0, 1, 2), name="gpu-run", rng_seed=1,
                                offset=0.03, device="cuda:0")
    ctx = compare_context([synthetic, other])
    assert ctx["labels"] == ["synthetic", "gpu-run"]
    rows = {(r[0].text, r[1].text, r[2].text.split(" ")[0], r[3].text): r for r in ctx["differences"].body}
    # accuracy moved by +0.03 > 0.01: marked; dp_sgd only in the first run: partial
    acc = rows[("calibration", "deterministic", "accuracy", "")]
    assert acc[5].cls == "diff"
    dp = rows[("calibration", "dp_sgd", "accuracy", "")]
    assert dp[4].cls == "only" and dp[5].cls == "missing"
    # parameter counts are equal in both runs: not a difference
    assert ("efficiency", "stf_bnn", "trainable_params", "") not in rows
    assert differs(100.0, 104.0, 0.05, 0.01, "train_seconds") is False
    assert differs(0.90, 0.92, 0.05, 0.01, "accuracy") is True
    out = tmp_path / "cmp.html"
    assert main(["compare", str(synthetic), str(other), "-o", str(out)]) == 0
    html = out.read_text()
    assert 'class="diff"' in html and "absent" in html and "<script" not in html.lower()
    assert "cuda:0" in html  # environment differences listed
    assert render_compare([synthetic, synthetic], tmp_path / "same.html").read_text().count('class="diff"') == 0


def test_real_tiny_run_report(tmp_path, cache_dir):
    """A real run (deterministic net, calibration + efficiency) renders; re-rendering reads only files."""
    from conftest import tiny_toml

    from stf_eval.config import load_config
    from stf_eval.registry import SUITES
    from stf_eval.runner import run

    suites = "\n".join(f"[suites.{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in SUITES.get(name).tiny.items())
                       for name in ("calibration", "efficiency"))  # each suite's cheap test setting
    cfg = load_config(text=tiny_toml(suites=suites), overrides=[f'cache_dir="{cache_dir}"'])
    run_dir = run(cfg, out_dir=str(tmp_path / "run"))
    html = (run_dir / "report.html").read_text()
    assert "deterministic" in html and "Calibration on the test split" in html and "not measured in this run" in html
    assert "could not be rendered" not in html
    start = time.perf_counter()
    assert main(["report", str(run_dir), "-o", str(tmp_path / "again.html")]) == 0
    seconds = time.perf_counter() - start
    print(f"tiny real report re-rendered in {seconds:.2f} s")
    assert (tmp_path / "again.html").read_text().count("data:image/svg+xml") >= 1


@pytest.mark.parametrize("dropped", ["adversarial", "membership", "ood", "efficiency"])
def test_report_renders_when_a_suite_is_absent(tmp_path, dropped):
    """A run without some suite (e.g. calibration + OOD only) renders, its verdict 'not measured'."""
    import json

    run_dir = write_synthetic_run(tmp_path / "run")
    results = json.loads((run_dir / "results.json").read_text())
    results["records"] = [r for r in results["records"] if r["suite"] != dropped]
    (run_dir / "results.json").write_text(json.dumps(results))
    html = render_run(run_dir).read_text()
    assert "Verdict" in html
