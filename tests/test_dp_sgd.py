"""DP-SGD baseline: trains, spends about its target epsilon, and its clean copy can be attacked."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import tiny_toml
from torch import nn

from stf_eval.config import NetConfig, load_config
from stf_eval.errors import ConfigError
from stf_eval.models.dp_sgd import DpSgd, clean_state_dict, dp_compatible_net
from stf_eval.nets.common import build_net


def test_dp_sgd_trains_reports_epsilon_and_is_cached(fitted_models, tiny_data, tiny_cfg):
    model = fitted_models("dp_sgd")
    notes = model.capabilities().notes
    target = DpSgd.tiny["target_epsilon"]
    assert notes["dp_epsilon"] == pytest.approx(target, rel=0.05)  # solved for, then re-accounted
    assert notes["dp_delta"] == pytest.approx(min(1e-5, 1 / len(tiny_data.train)))
    assert notes["noise_multiplier"] > 0.3
    probs = model.predict_samples(tiny_data.test.x)[0].softmax(-1)
    assert (probs.argmax(1) == tiny_data.test.y).float().mean() > 0.3  # learns despite the noise (chance 0.1)

    from stf_eval.runner import build_model

    again = build_model(model.ctx.spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), model.ctx.cache)
    assert again.from_cache["train"] and again.capabilities().notes["dp_epsilon"] == notes["dp_epsilon"]


def test_clean_copy_has_no_opacus_hooks_and_gradients_flow(fitted_models, tiny_data):
    model = fitted_models("dp_sgd")
    net = model.net
    assert type(net).__module__.startswith("torch.nn")  # a plain network, not opacus' GradSampleModule
    for module in net.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
        assert not any(hasattr(p, "grad_sample") for p in module.parameters(recurse=False))
    x = tiny_data.test.x[:6].clone().requires_grad_(True)
    loss = nn.functional.nll_loss(model.predictive()(x), tiny_data.test.y[:6])
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_batch_norm_is_replaced_and_prefix_stripped():
    from opacus import GradSampleModule

    net = build_net(NetConfig("lenet", {"channels": [4, 8], "hidden": 16, "batch_norm": True}), (1, 8, 8), 10,
                    [0.5], [0.25])
    fixed = dp_compatible_net(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    wrapped = GradSampleModule(fixed)
    assert any(k.startswith("_module.") for k in wrapped.state_dict())
    fresh = dp_compatible_net(net)
    fresh.load_state_dict(clean_state_dict(wrapped))  # strict: every key matches the clean architecture


@pytest.mark.parametrize("table, message", [
    ("target_epsilon = 0", "target_epsilon: expected a positive number"),
    ("delta = 1.5", "delta"),
    ("accountant = 'gdp2'", "accountant"),
])
def test_bad_dp_parameters_are_one_line_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        load_config(text=tiny_toml(models=f"[models.dp_sgd]\n{table}"))


def _fit_dp(tiny_cfg, tiny_data, monkeypatch=None, **params):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.params import parse_params
    from stf_eval.runner import build_model

    table = {**DpSgd.tiny, "epochs": 1, **params}
    spec = PluginSpec(name="dp_sgd", plugin="dp_sgd", params=parse_params(DpSgd.Params, table, "dp_sgd"))
    return build_model(spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), CheckpointCache(None))


def test_nothing_of_the_private_module_survives_fit(tiny_cfg, tiny_data, monkeypatch):
    """opacus' hooks form a cycle; fit releases the private module itself: with the garbage collector
    off and no collection by the test, every network opacus wrapped (and the parameters that held
    per-sample gradients) is gone when fit returns."""
    import gc
    import weakref

    from stf_eval.models import dp_sgd

    nets, params = [], []
    original = dp_sgd.dp_compatible_net

    def tracked(net):
        fixed = original(net)
        nets.append(weakref.ref(fixed))
        params.extend(weakref.ref(p) for p in fixed.parameters())
        return fixed

    monkeypatch.setattr(dp_sgd, "dp_compatible_net", tracked)
    gc.collect()
    gc.disable()  # nothing may depend on a garbage collection
    try:
        model = _fit_dp(tiny_cfg, tiny_data)
        kept = {id(p) for p in model.net.parameters()}
        assert len(nets) >= 2 and nets[0]() is model.net  # the clean, evaluated network stays
        assert [r for r in nets[1:] if r() is not None] == []  # the private (work) module is gone
        assert [r for r in params if r() is not None and id(r()) not in kept] == []
        assert not any(hasattr(p, "grad_sample") for p in model.net.parameters())
    finally:
        gc.enable()


def test_physical_batches_leave_the_logical_batch_and_epsilon_unchanged(tiny_cfg, tiny_data):
    """BatchMemoryManager splits each Poisson batch for memory only: the same logical steps, noise
    multiplier and epsilon, and the same weights up to float summation order."""
    whole = _fit_dp(tiny_cfg, tiny_data, max_physical_batch_size=0)
    split = _fit_dp(tiny_cfg, tiny_data, max_physical_batch_size=16)
    assert DpSgd.tiny["batch_size"] > 16
    assert whole.epsilon == split.epsilon and whole.noise_multiplier == split.noise_multiplier
    expected_steps = -(-len(tiny_data.train) // DpSgd.tiny["batch_size"])  # one epoch: ceil(N / batch) draws
    assert whole.dp_meta["dp_logical_steps"] == split.dp_meta["dp_logical_steps"] == expected_steps
    assert split.dp_meta["dp_physical_batch_size"] == 16
    assert whole.dp_meta["dp_physical_batch_size"] == DpSgd.tiny["batch_size"]
    for a, b in zip(whole.net.parameters(), split.net.parameters()):
        assert torch.allclose(a, b, atol=1e-4)


def test_keeping_opacus_per_sample_gradients_changes_no_weight(tiny_cfg, tiny_data, monkeypatch):
    """fit lets opacus keep each layer's per-sample gradients instead of copying them into a zero tensor:
    the same weights bit for bit as opacus' own store, which is back in place after fit."""
    from opacus.grad_sample import grad_sample_module as gsm

    from stf_eval.models import dp_sgd

    original = gsm.create_or_accumulate_grad_sample
    kept = []
    real_context = dp_sgd._per_sample_gradients_kept

    @contextmanager
    def spied():  # records whether the store fit installs kept the tensor it was given
        with real_context():
            store = gsm.create_or_accumulate_grad_sample

            def spy(*, param, grad_sample, max_batch_len):
                store(param=param, grad_sample=grad_sample, max_batch_len=max_batch_len)
                kept.append(param._current_grad_sample is grad_sample)

            gsm.create_or_accumulate_grad_sample = spy
            yield

    with monkeypatch.context() as m:
        m.setattr(dp_sgd, "_per_sample_gradients_kept", spied)
        fast = _fit_dp(tiny_cfg, tiny_data, max_physical_batch_size=16)
    assert kept and sum(kept) >= len(kept) // 2, kept  # full physical batches kept their gradients
    assert gsm.create_or_accumulate_grad_sample is original
    monkeypatch.setattr(dp_sgd, "KEEP_PER_SAMPLE_GRADIENTS", False)
    plain = _fit_dp(tiny_cfg, tiny_data, max_physical_batch_size=16)
    assert fast.noise_multiplier == plain.noise_multiplier
    for (name, a), b in zip(fast.net.named_parameters(), plain.net.parameters()):
        assert torch.equal(a, b), name
