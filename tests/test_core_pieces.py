"""Nets, cache, deterministic trainer and the calibration metric cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stf_eval.cache import CheckpointCache, cache_key
from stf_eval.config import NetConfig
from stf_eval.errors import ConfigError
from stf_eval.metrics import calibration as cal
from stf_eval.nets.common import build_net


@pytest.mark.parametrize("arch, shape", [("mlp", (1, 8, 8)), ("lenet", (1, 28, 28)), ("lenet", (1, 8, 8)),
                                         ("resnet18", (3, 32, 32))])
def test_nets_forward(arch, shape):
    opts = {"width": 8} if arch == "resnet18" else {}
    net = build_net(NetConfig(arch=arch, options=opts), shape, 10, [0.5] * shape[0], [0.25] * shape[0]).eval()
    assert net(torch.rand(2, *shape)).shape == (2, 10)


def test_user_callable_net_and_bad_options():
    net = build_net(NetConfig(arch="stf_eval.nets.mlp:mlp", options={"hidden": [16]}), (1, 8, 8), 3, [0.0], [1.0])
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        build_net(NetConfig(arch="mlp", options={"depth": 3}), (1, 8, 8), 3, [0.0], [1.0])
    with pytest.raises(ConfigError, match="cannot import"):
        build_net(NetConfig(arch="nowhere.module:fn"), (1, 8, 8), 3, [0.0], [1.0])


def test_cache_roundtrip_uses_weights_only(tmp_path):
    cache = CheckpointCache(tmp_path)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    key = cache_key({"x": 1})
    assert cache.load(key, b) is None
    cache.save(key, a, {"x": 1}, {"seconds": 1.5})
    assert cache.load(key, b) == {"seconds": 1.5}
    assert torch.equal(a.weight, b.weight)
    assert cache_key({"x": 1}) != cache_key({"x": 2})


def test_deterministic_model_is_cached_and_learns(fitted_models, tiny_data):
    model = fitted_models("deterministic")
    probs = model.predict_samples(tiny_data.test.x).softmax(-1).mean(0).numpy()
    assert cal.accuracy(probs, tiny_data.test.y.numpy()) > 0.5


def _random_predictions(n=2000, c=10, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    return probs, labels


def test_netcal_ece_matches_direct_computation():
    probs, labels = _random_predictions()
    direct, _, counts = cal.ece_equal_width(probs, labels, bins=15)
    assert counts.sum() == len(labels)
    assert cal.ece(probs, labels, bins=15) == pytest.approx(direct, abs=1e-6)


def test_scoring_rules_on_hand_computed_case():
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0])
    assert cal.accuracy(probs, labels) == 0.5
    assert cal.nll(probs, labels) == pytest.approx(-(np.log(0.8) + np.log(0.4)) / 2)
    assert cal.brier(probs, labels) == pytest.approx(((0.2**2 + 0.2**2) + (0.6**2 + 0.6**2)) / 2)


def test_fast_max_pool_equals_torchs_values_and_gradients_ties_included():
    """Both 2x2 paths give torch's values (ties, -inf and NaN included), and the gradient path the same
    gradients (many ties: small integers; the first in the window wins); odd sizes and other windows go
    to torch's kernel."""
    import torch.nn.functional as F

    from stf_eval.nets.common import MaxPool2d

    torch.manual_seed(0)
    pool = MaxPool2d(2)
    for x in (torch.randint(0, 3, (4, 5, 8, 6)).float(), torch.randn(3, 4, 8, 6)):
        x[0, 0, 2, 2] = float("-inf")
        xg = x.clone().requires_grad_(True)
        up = torch.randn(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        out = pool(xg)
        assert type(out.grad_fn).__name__ == "_ChannelsLastPool2x2Backward"
        (g,) = torch.autograd.grad(out, xg, up)
        xr = x.clone().requires_grad_(True)
        ref = F.max_pool2d(xr, 2)
        (g_ref,) = torch.autograd.grad(ref, xr, up)
        assert torch.equal(out, ref) and torch.equal(g, g_ref)
        with torch.no_grad():
            assert torch.equal(pool(x), ref)
    nan = torch.randn(2, 3, 8, 8)
    nan[1, 2, 3, 3] = float("nan")
    assert torch.equal(pool(nan).isnan(), F.max_pool2d(nan, 2).isnan())
    nan_g, nan_ref = nan.clone().requires_grad_(True), nan.clone().requires_grad_(True)
    up = torch.randn(2, 3, 4, 4)
    out, ref = pool(nan_g), F.max_pool2d(nan_ref, 2)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
    assert torch.equal(torch.autograd.grad(out, nan_g, up)[0], torch.autograd.grad(ref, nan_ref, up)[0])
    odd = torch.randn(2, 3, 7, 7)
    assert torch.equal(pool(odd), F.max_pool2d(odd, 2))
    assert torch.equal(MaxPool2d(3, 2)(odd), F.max_pool2d(odd, 3, 2))


def test_try_lock_says_whether_it_holds_the_key(tmp_path):
    cache = CheckpointCache(tmp_path)
    with cache.lock("k"):  # another holder (a second lock object on the same file, as another process)
        with cache.try_lock("k") as held:
            assert held is False
        with cache.try_lock("other") as held:
            assert held is True
    with cache.try_lock("k") as held:
        assert held is True
    with CheckpointCache(None).try_lock("k") as held:  # no cache directory: nothing to share
        assert held is True
