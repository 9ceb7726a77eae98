"""Hardening: the cache under concurrency and code changes, names that cannot escape, errors before writing."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from stf_eval.cache import CheckpointCache, cache_key, code_version
from stf_eval.config import NetConfig, PluginSpec, TrainConfig
from stf_eval.errors import ConfigError
from stf_eval.models.base import BuildContext
from stf_eval.paths import check_name, inside


def _ctx(root) -> BuildContext:
    return BuildContext(spec=PluginSpec("m", "deterministic", None), net=NetConfig(), train=TrainConfig(),
                        device=torch.device("cpu"), seed=0, cache=CheckpointCache(root))


def test_two_runs_sharing_a_cache_train_a_key_once(tmp_path):
    trained, results = [], []

    def build(i):
        net = torch.nn.Linear(3, 2)

        def train():
            trained.append(i)
            time.sleep(0.5)  # the other thread arrives while this one trains
            with torch.no_grad():
                net.weight.fill_(float(i + 1))
            return 0.5, {}

        _, cached, _ = _ctx(tmp_path).cached({"kind": "lock-test", "seed": 0}, net, train)
        results.append((cached, net.weight.detach().clone()))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 1, "the same job was trained twice"
    assert sorted(c for c, _ in results) == [False, True]  # one trained, the other waited and loaded
    assert torch.equal(results[0][1], results[1][1])


def test_cache_key_carries_the_code_version():
    version = code_version()
    from stf_eval import __version__

    assert version.startswith(__version__ + "+") and len(version.split("+")[1]) == 16
    code_version.cache_clear()
    try:
        import stf_eval.cache as cache_mod

        before = cache_key({"x": 1})
        cache_mod.code_version = lambda: "9.9.9+other"  # other training code -> other key
        assert cache_key({"x": 1}) != before
    finally:
        cache_mod.code_version = code_version


def test_diverging_training_says_which_stage(tmp_path):
    from stf_eval.errors import TrainingDiverged

    def train():
        raise FloatingPointError("train base s0: training loss became nan")

    with pytest.raises(TrainingDiverged, match="stage 'deterministic' diverged"):
        _ctx(tmp_path).cached({"kind": "deterministic", "seed": 0}, torch.nn.Linear(2, 2), train)


@pytest.mark.parametrize("name", ["../../../escaped", "a/b", "a\\b", ".hidden", "", "x" * 65, "-rf", "a b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ConfigError, match="cannot be used as a name"):
        check_name(name, "models")


@pytest.mark.parametrize("name", ["stf_bnn", "mc-dropout.v2", "résnet", "模型", "a+b"])
def test_safe_names_pass(name):
    assert check_name(name, "models") == name


def test_paths_cannot_leave_their_root(tmp_path):
    assert inside(tmp_path, "cells", "a.json") == (tmp_path / "cells" / "a.json").resolve()
    with pytest.raises(ConfigError, match="outside"):
        inside(tmp_path, "..", "escaped.json")
    with pytest.raises(ConfigError, match="outside"):
        inside(tmp_path, "/etc/passwd")
