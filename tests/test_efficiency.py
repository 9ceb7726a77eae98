"""Efficiency suite: its records are complete and agree with counts made independently here.

No timing assertions beyond "positive": timings are benchmarks (benchmarks/), not tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stf_eval.config import PluginSpec
from stf_eval.context import EvalContext
from stf_eval.params import parse_params
from stf_eval.registry import MODELS, SUITES
from stf_eval.suites.efficiency import CACHED_NOTE


def _run_suite(model, data, tmp_path, name="m", run_models=(), **overrides):
    cls = SUITES.get("efficiency")
    params = parse_params(cls.Params, {**cls.tiny, **overrides}, "efficiency")
    ctx = EvalContext(model_name=name, model=model, data=data, seed=0, run_dir=tmp_path, device=model.device,
                      run_models=run_models)
    ctx.suite = "efficiency"
    cls(params, "efficiency").run(model, data, ctx)
    return ctx


def _values(ctx, metric):
    return {r["stage"]: r for r in ctx.records if r["metric"] == metric}


def _one(ctx, metric):
    rows = [r for r in ctx.records if r["metric"] == metric]
    assert len(rows) == 1, rows
    return rows[0]["value"]


def test_deterministic_records_are_complete_and_sane(fitted_models, tiny_data, tmp_path):
    model = fitted_models("deterministic")
    ctx = _run_suite(model, tiny_data, tmp_path)
    n_weights = sum(p.numel() for p in model.net.parameters())
    assert _one(ctx, "trainable_params") == n_weights
    assert _one(ctx, "total_params") == n_weights
    assert _one(ctx, "distribution_params") == 0
    assert _one(ctx, "forward_passes_per_prediction") == 1
    latency = [r for r in ctx.records if r["metric"] == "latency_ms_per_example"]
    assert len(latency) == 1 and latency[0]["value"] > 0 and latency[0]["n"] == 16
    assert "S=1" in latency[0]["note"]

    seconds = _values(ctx, "train_seconds")
    assert set(seconds) == {"train", "total"}
    assert seconds["train"]["value"] > 0
    assert seconds["total"]["value"] == pytest.approx(sum(v["value"] for s, v in seconds.items() if s != "total"))
    memory = _values(ctx, "peak_memory_mb")
    assert set(memory) == {"train", "total"}
    assert all(r["value"] >= 0 and r["note"].startswith("cpu_peak_rss_growth") for r in memory.values())
    for row in ctx.records:
        assert row["suite"] == "efficiency" and math.isfinite(row["value"])
    assert [f["name"] for f in ctx.figures] == ["efficiency"]
    assert (tmp_path / ctx.figures[0]["path"]).read_text().lstrip().startswith("<?xml")


def test_stage_figures_from_the_cache_are_marked(fitted_models, tiny_cfg, tiny_data, tmp_path):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    first = fitted_models("deterministic")  # trained (or loaded) once per session
    spec = PluginSpec(name="deterministic", plugin="deterministic", params=MODELS.get("deterministic").Params())
    again = build_model(spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(tiny_cfg.cache_dir))
    assert again.from_cache == {"train": True}
    ctx = _run_suite(again, tiny_data, tmp_path, figure=False)
    row = _values(ctx, "train_seconds")["train"]
    assert row["note"] == CACHED_NOTE
    assert row["value"] == pytest.approx(first.train_seconds["train"])  # the originally measured seconds
    assert CACHED_NOTE in _values(ctx, "peak_memory_mb")["train"]["note"]
    assert any("checkpoint cache" in n["text"] for n in ctx.notes)
    assert not ctx.figures


def test_latency_uses_the_evaluation_samples(fitted_models, tiny_data, monkeypatch):
    """Latency times predict_samples at the evaluation S on a fixed batch (extra passes, not memoised)."""
    from stf_eval.suites.efficiency import measure_latency

    model = fitted_models("deterministic")
    calls = []
    original = model.predict_samples

    def spy(x, n_samples=None, batch_size=None):
        calls.append((x.shape[0], n_samples))
        return original(x, n_samples, batch_size)

    monkeypatch.setattr(model, "predict_samples", spy)
    times = measure_latency(model, tiny_data.test.x[:10], repeats=3, warmup=2)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert calls == [(10, None)] * 5


def test_bad_params_are_refused():
    from stf_eval.errors import ConfigError

    cls = SUITES.get("efficiency")
    with pytest.raises(ConfigError, match="latency_repeats"):
        parse_params(cls.Params, {"latency_repeats": 0}, "suites.efficiency")


STOCHASTIC = [name for name in ("stf_bnn", "full_bnn", "mc_dropout", "deep_ensemble", "last_layer_bnn")
              if name in MODELS.names()]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_models_count_their_forward_passes(name, fitted_models, tiny_data, tmp_path):
    model = fitted_models(name)
    ctx = _run_suite(model, tiny_data, tmp_path, name=name, figure=False)
    assert _one(ctx, "forward_passes_per_prediction") == model.n_samples
    assert model.n_samples > 1
    latency = [r for r in ctx.records if r["metric"] == "latency_ms_per_example"][0]
    assert latency["value"] > 0 and f"S={model.n_samples}" in latency["note"]
    assert "total" in _values(ctx, "train_seconds")


@pytest.mark.skipif("stf_bnn" not in MODELS.names(), reason="stf_bnn is not registered")
def test_stf_bnn_counts_only_its_variational_first_layer(fitted_models, tiny_data, tmp_path):
    from stf_eval.bayes import variational_layers

    model = fitted_models("stf_bnn")
    ctx = _run_suite(model, tiny_data, tmp_path, name="stf_bnn", figure=False)
    (layer,) = variational_layers(model.net)
    weights = layer.weight_mu.numel() + (layer.bias_mu.numel() if layer.bias_mu is not None else 0)
    assert _one(ctx, "distribution_params") == 2 * weights  # one mu and one rho per weight
    assert _one(ctx, "trainable_params") == 2 * weights  # stage 2 optimises q only, the rest is frozen
    assert _one(ctx, "total_params") == sum(p.numel() for p in model.net.parameters())
    seconds = _values(ctx, "train_seconds")
    assert {"pretrain", "svi", "total"} <= set(seconds)
    assert seconds["total"]["value"] == pytest.approx(seconds["pretrain"]["value"] + seconds["svi"]["value"])


def test_epoch_medians_and_per_example_arrays_come_back_the_same_from_a_warm_cache(fitted_models, tiny_cfg,
                                                                                     tiny_data, tmp_path):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    first = fitted_models("deterministic")
    spec = PluginSpec(name="deterministic", plugin="deterministic", params=MODELS.get("deterministic").Params())
    again = build_model(spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(tiny_cfg.cache_dir))
    assert again.from_cache["train"]
    rows = []
    for i, model in enumerate((first, again)):
        ctx = _run_suite(model, tiny_data, tmp_path / str(i), figure=False)
        row = _values(ctx, "epoch_seconds_median")["train"]
        epochs = ctx.examples["efficiency"]["train/train/epoch_seconds"]
        assert epochs.dtype == np.float64 and len(epochs) == tiny_cfg.train.epochs
        assert row["value"] == pytest.approx(float(np.median(epochs[1:])))  # after one warm-up epoch
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == len(epochs) - 1
        assert "thread" in row["note"] and "device cpu" in row["note"]
        lat = ctx.examples["efficiency"]["latency/seconds"]
        assert lat.dtype == np.float64 and len(lat) == 2
        rows.append(row)
    assert rows[0]["value"] == rows[1]["value"] and CACHED_NOTE in rows[1]["note"]


@pytest.mark.skipif("stf_bnn" not in MODELS.names(), reason="stf_bnn is not registered")
def test_svi_comparison_trains_the_full_bnn_recipe_of_the_run(fitted_models, tiny_data, tmp_path, monkeypatch):
    """The cost comparison times the full BNN the run evaluates (here weight sampling, its own batch
    size), not the plugin's defaults; without a full_bnn in the run it says it used the defaults."""
    full_cls = MODELS.get("full_bnn")
    trained = []
    original_fit = full_cls.fit

    def spy(self, data):
        trained.append((self.params, len(data.train)))
        return original_fit(self, data)

    monkeypatch.setattr(full_cls, "fit", spy)
    spec = PluginSpec(name="vanilla", plugin="full_bnn", params=parse_params(
        full_cls.Params, {"train_estimator": "weight_sample", "batch_size": 16, "epochs": 7}, "models.vanilla"))
    model = fitted_models("stf_bnn")
    ctx = _run_suite(model, tiny_data, tmp_path, name="stf_bnn", figure=False, run_models=[spec])
    (row,) = [r for r in ctx.records if r["metric"] == "svi_vs_full_bnn_epoch_seconds_ratio"]
    assert "full_bnn at the run's recipe [models.vanilla]" in row["note"]
    assert len(trained) == 3  # one warm-up round and two timed repetitions
    for params, n_train in trained:
        assert params.train_estimator == "weight_sample" and params.batch_size == 16 and params.epochs == 1
        assert n_train == 2 * model.ctx.train.batch_size  # comparison_batches (tiny: 2) of the recipe's batches
    trained.clear()
    ctx = _run_suite(model, tiny_data, tmp_path / "defaults", name="stf_bnn", figure=False)
    (row,) = [r for r in ctx.records if r["metric"] == "svi_vs_full_bnn_epoch_seconds_ratio"]
    assert "full_bnn at its default parameters (the run has none)" in row["note"]
    assert trained and all(p == parse_params(full_cls.Params, {"epochs": 1}, "models.full_bnn") for p, _ in trained)


@pytest.mark.skipif("stf_bnn" not in MODELS.names(), reason="stf_bnn is not registered")
def test_svi_vs_full_bnn_ratio_is_measured_side_by_side(fitted_models, tiny_data, tmp_path):
    model = fitted_models("stf_bnn")
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    ctx = _run_suite(model, tiny_data, tmp_path, name="stf_bnn", figure=False)
    (row,) = [r for r in ctx.records if r["metric"] == "svi_vs_full_bnn_epoch_seconds_ratio"]
    saved = ctx.examples["efficiency"]
    svi, full = saved["compare/svi_epoch_seconds"], saved["compare/full_bnn_epoch_seconds"]
    assert len(svi) == len(full) == 2 == row["n"]
    assert row["value"] == pytest.approx(float(np.median(svi / full)))  # recomputed from the saved arrays
    assert row["note"].startswith(f"controlled: interleaved, median of 2, {torch.get_num_threads()} threads")
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    for k, v in model.net.state_dict().items():  # the evaluated model is untouched
        assert torch.equal(v, before[k])
    others = _run_suite(fitted_models("deterministic"), tiny_data, tmp_path / "d", figure=False)
    assert not [r for r in others.records if r["metric"] == "svi_vs_full_bnn_epoch_seconds_ratio"]


def test_memory_method_is_kept_per_stage_and_mixed_methods_get_no_total(fitted_models, tiny_data, tmp_path):
    model = fitted_models("stf_bnn")
    assert model.memory_method == {"pretrain": "cpu_peak_rss_growth", "svi": "cpu_peak_rss_growth"}
    ctx = _run_suite(model, tiny_data, tmp_path, figure=False)
    assert "total" in _values(ctx, "peak_memory_mb")
    model.memory_method["svi"] = "cuda_max_allocated"  # as if the stage had been trained on a GPU
    try:
        ctx = _run_suite(model, tiny_data, tmp_path / "mixed", figure=False)
    finally:
        model.memory_method["svi"] = "cpu_peak_rss_growth"
    memory = _values(ctx, "peak_memory_mb")
    assert "total" not in memory and memory["svi"]["note"].startswith("cuda_max_allocated")
    assert any("different methods" in n["text"] for n in ctx.notes)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_step_memory_is_measured_in_a_fresh_process_and_grows_with_the_batch():
    from stf_eval.profiling import STEP_METHOD_CPU, measure_train_step
    from stf_eval.training import StepOptions, cross_entropy_loss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(64 * 28 * 28, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    out = {}
    for n in (4, 256):  # activations: about 0.8 MiB vs 50 MiB per stored tensor
        step = {"net": net, "loss_fn": cross_entropy_loss, "optimizer": opt, "train_mode": True,
                "options": StepOptions(), "x": torch.rand(n, 1, 28, 28), "y": torch.randint(0, 10, (n,))}
        out[n] = measure_train_step(step, torch.device("cpu"))
        assert out[n]["method"] == STEP_METHOD_CPU and out[n]["batch"] == n
    assert out[256]["mb"] > out[4]["mb"] + 40
    assert out[256]["mb"] < 2000
    bad = measure_train_step({**step, "loss_fn": lambda net, x, y: net(x).sum()}, torch.device("cpu"))
    assert bad["mb"] is None and bad["method"].startswith("unavailable")


@pytest.mark.slow
def test_stage_step_memory_is_recorded_with_its_method(tiny_cfg, tiny_data, tmp_path):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.runner import build_model

    spec = PluginSpec(name="deterministic", plugin="deterministic", params=MODELS.get("deterministic").Params())
    model = build_model(spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(None),
                        measure_step_memory=True)
    ctx = _run_suite(model, tiny_data, tmp_path, figure=False)
    row = _values(ctx, "train_step_peak_memory_mb")["train"]
    assert row["value"] > 0 and row["note"].startswith("cpu_fresh_process_step_rss")
    assert row["n"] == tiny_cfg.train.batch_size


@pytest.mark.parametrize("n", [1, 2, 5, 6, 9, 20])
def test_median_interval_coverage_matches_the_binomial(n):
    from scipy.stats import binom

    from stf_eval.profiling import median_interval

    values = list(range(n, 0, -1))
    low, high, cover = median_interval(values)
    if n == 1:
        assert (low, high) == (1, 1)
        return
    k = int(low)  # values are 1..n, so the k-th smallest is k
    assert high == n + 1 - k
    assert cover == pytest.approx(1 - 2 * binom.cdf(k - 1, n, 0.5))
    if k > 1:  # the next narrower interval would not reach 95 %
        assert 1 - 2 * binom.cdf(k, n, 0.5) < 0.95 <= cover
    else:
        assert (low, high) == (1, n)


@pytest.mark.slow  # starts the helper interpreter twice (~8 s each here)
def test_step_memory_children_fork_from_one_server_that_is_restarted_when_gone():
    """Each CPU measurement runs in a freshly forked child of one helper interpreter (torch imported
    once); a helper that died is replaced on the next call."""
    from stf_eval import profiling
    from stf_eval.training import StepOptions, cross_entropy_loss

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    step = {"net": net, "loss_fn": cross_entropy_loss, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1),
            "train_mode": True, "options": StepOptions(), "x": torch.rand(8, 1, 4, 4), "y": torch.randint(0, 3, (8,))}
    first = profiling.measure_train_step(step, torch.device("cpu"))
    server = profiling._SERVER.proc
    second = profiling.measure_train_step(step, torch.device("cpu"))
    assert first["method"] == second["method"] == profiling.STEP_METHOD_CPU and second["batch"] == 8
    assert server is not None and profiling._SERVER.proc is server  # the same helper answered twice
    server.kill()
    server.wait()
    third = profiling.measure_train_step(step, torch.device("cpu"))
    assert third["method"] == profiling.STEP_METHOD_CPU and profiling._SERVER.proc.pid != server.pid
