"""Every registered model runs through every registered suite that applies to it, on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from stf_eval.context import EvalContext
from stf_eval.params import parse_params
from stf_eval.records import REQUIRED_COLUMNS
from stf_eval.registry import MODELS, SUITES


@pytest.mark.parametrize("model_name", MODELS.names())
def test_model_contract(model_name, fitted_models, tiny_data):
    model = fitted_models(model_name)
    x = tiny_data.test.x[:7]
    s = model.predict_samples(x)
    assert s.ndim == 3 and s.shape[1:] == (7, tiny_data.num_classes)
    assert s.shape[0] == model.n_samples
    assert torch.isfinite(s).all()
    pred = model.predictive()
    pred.eval()  # attack libraries do this; it must not matter
    logp = pred(x.to(model.device))
    assert logp.shape == (7, tiny_data.num_classes)
    assert torch.allclose(logp.exp().sum(dim=1), torch.ones(7), atol=1e-4)
    eff = model.efficiency()
    assert eff["trainable_params"] >= 0 and eff["forward_passes_per_prediction"] >= 1
    assert eff["train_seconds"], "every model records the seconds of its training stage(s)"
    acc = (s.softmax(-1).mean(0).argmax(1) == tiny_data.test.y[:7]).float().mean()
    assert not math.isnan(float(acc))


FIGURE_MODELS = ("deterministic", "stf_bnn", "deep_ensemble")


@pytest.mark.parametrize("suite_name", SUITES.names())
@pytest.mark.parametrize("model_name", MODELS.names())
def test_every_model_through_every_suite(model_name, suite_name, fitted_models, tiny_data, tmp_path):
    model = fitted_models(model_name)
    suite_cls = SUITES.get(suite_name)
    suite = suite_cls(parse_params(suite_cls.Params, suite_cls.tiny, suite_name), suite_name)
    reason = suite.skip_reason(model, tiny_data)
    if reason:
        pytest.skip(f"{suite_name} does not apply to {model_name}: {reason}")

    def build_like(bundle, seed):
        from stf_eval.runner import build_model

        return build_model(model.ctx.spec, _cfg_of(model), bundle, seed, model.device, model.ctx.cache)

    # figures are drawn from the suite's numbers, not from the model: drawing them for a point, a
    # variational and an ensemble predictive covers their code; the other cells check that a cell which
    # saves no figures (figures = "first-seed", later seeds) records the same way and writes no file
    draws = model_name in FIGURE_MODELS
    ctx = EvalContext(model_name=model_name, model=model, data=tiny_data, seed=0, run_dir=tmp_path,
                      device=model.device, build_like=build_like, save_figures=draws)
    ctx.suite = suite_name
    suite.run(model, tiny_data, ctx)
    assert ctx.records, f"{suite_name} wrote no records for {model_name}"
    for row in ctx.records:
        if row["value"] is None:  # a point the data cannot resolve is recorded empty, and says so
            assert "not resolved" in (row["note"] or ""), row
            continue
        for col in REQUIRED_COLUMNS:
            assert row[col] is not None, f"{col} missing in {row}"
        assert row["model"] == model_name and row["suite"] == suite_name
        assert math.isfinite(row["value"]), row
    for fig in ctx.figures:
        assert (tmp_path / fig["path"]).stat().st_size > 0
        assert (tmp_path / fig["png"]).stat().st_size > 0
    if draws:
        assert ctx.figures, f"{suite_name} drew no figure for {model_name}"
    else:
        assert not ctx.figures and not [*tmp_path.glob("figures/*.svg"), *tmp_path.glob("figures/*.png")]


def _cfg_of(model):
    """The tiny RunConfig the fixtures used (only net/train are read by build_model)."""
    from types import SimpleNamespace

    return SimpleNamespace(net=model.ctx.net, train=model.ctx.train)
