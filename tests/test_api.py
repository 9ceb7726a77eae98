"""The Python API: evaluate() with each adapter, load_run round trip, per-example arrays, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import stf_eval
from stf_eval.errors import ConfigError, DataError, StfEvalError

ROOT = Path(__file__).resolve().parent.parent
TINY_SPLIT = {"max_train": 300, "max_test": 200}
NO_SHIFT = {"severities": [], "shifts": [], "bootstrap": 0}


def _mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def digits_bundle():
    return stf_eval.load_data("digits", split=TINY_SPLIT)


@pytest.fixture(scope="module")
def trained(digits_bundle):
    return _fit(_mlp(0), digits_bundle.train.x, digits_bundle.train.y)


def test_import_is_cheap():
    code = "import sys, stf_eval; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; " \
           "assert callable(stf_eval.evaluate)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_module_sampler_ensemble_through_the_runner(tmp_path, cache_dir, digits_bundle, trained):
    net = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def sampler(x, n):  # logits + Gaussian noise: stochastic and differentiable in x
        out = net(x)
        return out.unsqueeze(0) + 0.5 * torch.randn(n, *out.shape)

    run = stf_eval.evaluate(
        models={"mine": net, "noisy": stf_eval.sampler(sampler, samples=5, modules=[net]),
                "ens": [net, _fit(_mlp(1), digits_bundle.train.x, digits_bundle.train.y)]},
        data=digits_bundle, suites={"calibration": NO_SHIFT, "membership": {"num_references": 3}},
        out=tmp_path / "run", render=False, cache_dir=str(cache_dir))
    df = run.results
    acc = df[(df.metric == "accuracy") & (df["shift"] == "")].set_index("model")["value"]
    # the module adapter's accuracy is the network's own accuracy on the run's test split
    own = float((net(digits_bundle.test.x).argmax(1) == digits_bundle.test.y).double().mean())
    assert acc["mine"] == pytest.approx(own, abs=1e-9)
    assert set(acc.index) == {"mine", "noisy", "ens"}
    caps = {c["model"]: c["capabilities"] for c in run.cells}
    assert caps["noisy"]["n_samples"] == 5 and caps["noisy"]["stochastic"]
    assert caps["ens"]["n_samples"] == 2 and caps["noisy"]["differentiable"]
    # not retrainable: threshold attacks run, LiRA/RMIA are skipped with a note, nothing fails
    mia = df[df.suite == "membership"]
    assert set(mia.attack) - {""} == {"gap", "loss", "confidence", "entropy", "modified_entropy"}
    assert all(any("LiRA and RMIA not run" in t for t in run.notes.query("model == @m").text)
               for m in ("mine", "noisy", "ens"))
    # the user's object was not modified (the adapters copy it before .to()/.eval())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training is False
    assert run.verdicts.shape[0] >= 1 and set(run.verdicts.columns) >= {"claim", "verdict"}


def test_pretrained_weights_file_matches_the_module(tmp_path, cache_dir, digits_bundle):
    from stf_eval.config import NetConfig
    from stf_eval.nets.common import build_net

    b = digits_bundle
    opts = {"channels": [4, 8], "hidden": 16}
    net = build_net(NetConfig("lenet", opts), b.input_shape, b.num_classes, b.mean, b.std)
    _fit(net, b.train.x, b.train.y, steps=30)
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    run = stf_eval.evaluate(
        models={"file": stf_eval.pretrained(path, arch="lenet", options=opts), "obj": net},
        data=b, suites={"calibration": NO_SHIFT}, out=tmp_path / "run", render=False, cache_dir=str(cache_dir))
    df = run.results
    rows = df[(df["shift"] == "") & df.metric.isin(["accuracy", "nll", "ece"])].pivot_table(
        index="metric", columns="model", values="value")
    assert np.allclose(rows["file"], rows["obj"], atol=1e-6)
    # a file that does not fit the net: one line naming the model
    with pytest.raises(ConfigError, match=r"models\.bad .*does not fit net 'lenet'"):
        stf_eval.evaluate(models={"bad": stf_eval.pretrained(path, arch="lenet", options={"hidden": 8,
                                                                                           "channels": [4, 8]})},
                          data=b, suites={"calibration": NO_SHIFT}, out=tmp_path / "bad", render=False,
                          cache_dir=str(cache_dir))


def _register_example_suite():
    """A tiny suite saving per-example arrays through ctx.save_examples (the suites' own come later)."""
    from stf_eval.metrics.predictive import log_mean_probs
    from stf_eval.registry import SUITES
    from stf_eval.suites.base import SuitePlugin

    if "api_test_examples" in SUITES:
        return

    @SUITES.register("api_test_examples")
    class Saver(SuitePlugin):
        def run(self, model, data, ctx):
            lp = log_mean_probs(ctx.samples("test"))
            ctx.save_examples({"test/index": np.arange(len(data.test), dtype=np.int32),
                               "test/label": data.test.y.numpy().astype(np.int16),
                               "test/log_probs": np.asarray(lp, dtype=np.float32)})
            ctx.record("accuracy", float((np.asarray(lp).argmax(1) == data.test.y.numpy()).mean()),
                       n=len(data.test))
            if ctx.wants_figures:
                from matplotlib.figure import Figure

                fig = Figure(figsize=(1, 1))
                fig.subplots().plot(np.exp(lp).max(1))
                ctx.save_figure(fig, "confidence")


def test_load_run_round_trip_and_examples(tmp_path, cache_dir, digits_bundle, trained):
    _register_example_suite()
    first = stf_eval.evaluate(models={"mine": trained}, data=digits_bundle, suites=["api_test_examples"],
                              seeds=[0, 1], out=tmp_path / "run", cache_dir=str(cache_dir))
    again = stf_eval.load_run(tmp_path / "run")
    assert again.models == ["mine"] and again.seeds == [0, 1]
    assert again.results.equals(first.results)
    # figures = "first-seed" (default): only seed 0's cell drew its figure; "all": every seed's, and the
    # numbers do not depend on it
    assert [(f["seed"], f["name"]) for f in json.loads((tmp_path / "run" / "results.json").read_text())["figures"]] == [(0, "confidence")]
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == [
        "api_test_examples--mine--seed0--confidence.png", "api_test_examples--mine--seed0--confidence.svg"]
    every = stf_eval.evaluate(models={"mine": trained}, data=digits_bundle, suites=["api_test_examples"],
                              seeds=[0, 1], out=tmp_path / "all", cache_dir=str(cache_dir), render=False,
                              overrides=["figures=all"])
    assert sorted(f["seed"] for f in json.loads((tmp_path / "all" / "results.json").read_text())["figures"]) == [0, 1]
    assert every.results.equals(first.results)
    assert again.report_path.is_file() and again.report().is_file()
    arrays = again.examples("api_test_examples", "mine", seed=1)
    assert arrays["test/log_probs"].shape == (len(digits_bundle.test), 10)
    acc = float((arrays["test/log_probs"].argmax(1) == arrays["test/label"]).mean())
    rec = again.results.query("suite == 'api_test_examples' and seed == 1")["value"].item()
    assert acc == pytest.approx(rec)
    frame = again.example_frame("api_test_examples", "mine", seed=0, prefix="test/")
    assert list(frame.columns[:2]) == ["index", "label"] and frame.shape == (len(digits_bundle.test), 12)
    files = again.example_files()
    assert len(files) == 2 and (files.bytes > 0).all()
    with pytest.raises(ConfigError, match="pass seed="):
        again.examples("api_test_examples", "mine")
    with pytest.raises(StfEvalError, match="no per-example arrays for suite 'calibration'"):
        again.examples("calibration", "mine", seed=0)
    with pytest.raises(StfEvalError, match="not a directory"):
        stf_eval.load_run(tmp_path / "nowhere")


def test_data_tuple_is_split_with_a_seed(tmp_path, cache_dir):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images[:, None].astype(np.float32) / 16.0, d.target
    a = stf_eval.load_data((x, y), split={"split_seed": 3, "max_train": 200})
    b = stf_eval.load_data((torch.tensor(x), torch.tensor(y)), split={"split_seed": 3, "max_train": 200})
    assert len(a.train) == 200 and np.array_equal(a.test.indices, b.test.indices)
    run = stf_eval.evaluate(models={"m": _mlp()}, data=(x[:, 0], y), split={"max_train": 200, "max_test": 100},
                            suites={"calibration": NO_SHIFT}, out=tmp_path / "run", render=False,
                            cache_dir=str(cache_dir))
    assert run.config["data"]["dataset"] == "in_memory"
    assert len(run.splits["test"]) == 100


@pytest.mark.parametrize("data, message", [
    ("nan", "contains NaN"),
    ("range", r"pixel values must lie in \[0, 1\]"),
    ("labels", "y must be a 1-D vector"),
    ("ints", "floating-point images"),
])
def test_bad_data_tuples_are_one_line_errors(data, message):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 10
    if data == "nan":
        x[3, 0, 2, 2] = np.nan
    elif data == "range":
        x = x * 255
    elif data == "labels":
        y = y[:-1]
    else:
        x = (x * 255).astype(np.uint8)
    with pytest.raises(DataError, match=message) as err:
        stf_eval.evaluate(models={"m": _mlp()}, data=(x, y), suites={"calibration": {}})
    assert "\n" not in str(err.value)


def test_sampler_with_wrong_logits_shape_is_a_one_line_error(tmp_path, cache_dir, digits_bundle):
    net = _mlp()
    with pytest.raises(ConfigError, match=r"models\.bad \(sampler\): returned logits of shape \[2, 10\], "
                                          r"expected \[S, B, C\] = \[2, 2, 10\]") as err:
        stf_eval.evaluate(models={"bad": stf_eval.sampler(lambda x, s: net(x))}, data=digits_bundle,
                          suites={"calibration": NO_SHIFT}, out=tmp_path / "run", render=False,
                          cache_dir=str(cache_dir))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"models\.m \(nn\.Module\): returned logits of shape \[2, 3\]"):
        stf_eval.evaluate(models={"m": nn.Sequential(nn.Flatten(), nn.Linear(64, 3))}, data=digits_bundle,
                          suites={"calibration": NO_SHIFT}, out=tmp_path / "run2", render=False,
                          cache_dir=str(cache_dir))


def test_bad_arguments_are_one_line_errors(digits_bundle):
    with pytest.raises(ConfigError, match="models.x: expected a plugin name, a table, an nn.Module"):
        stf_eval.evaluate(models={"x": 3}, data="digits", suites={"calibration": {}})
    with pytest.raises(ConfigError, match="neither a suite file nor a shipped suite .*quick"):
        stf_eval.evaluate(models={"m": _mlp()}, suites="quikc")
    with pytest.raises(ConfigError, match="unknown model 'determinstic'; did you mean 'deterministic'"):
        stf_eval.evaluate(models={"d": "determinstic"}, data="digits", suites={"calibration": {}})
    with pytest.raises(ConfigError, match="already split"):
        stf_eval.evaluate(models={"m": _mlp()}, data=digits_bundle, split={"max_train": 10})
    with pytest.raises(ConfigError, match=r"models\.p\.path: expected an existing file"):
        stf_eval.evaluate(models={"p": stf_eval.pretrained("/nonexistent/w.pt")}, data="digits",
                          suites={"calibration": {}})
    # an in-process model named in a suite file cannot find its object: one line, not a KeyError
    from stf_eval.config import load_config

    with pytest.raises(ConfigError, match="ref: expected an in-process object reference"):
        load_config(text="[models.m]\nplugin = 'torch_module'\n")


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its api-example block"
    return m.group(1)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_readme_example_runs(tmp_path, cache_dir, monkeypatch, capsys):
    """The README's notebook example, verbatim (so the two cannot drift)."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md:api-example", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "mine_ensemble" in out and "report.html" in out
    run = stf_eval.load_run(tmp_path / "runs" / "my-model")
    assert set(run.models) == {"mine", "mine_mc", "mine_ensemble"}
    acc = run.results.query("metric == 'accuracy' and shift == ''").set_index("model")["value"]
    assert (acc > 0.85).all(), acc
    assert set(run.results.suite) == {"calibration", "ood"}
