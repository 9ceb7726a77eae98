"""Shared fixtures: a session-scoped checkpoint cache, tiny data and fitted tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# a fresh process per trained stage measures its step memory: off here (tests that need it turn it on)
os.environ.setdefault("STF_EVAL_STEP_MEMORY", "0")

TINY_TOML = """
name = "tiny"
seeds = [0]
device = "cpu"

[data]
dataset = "digits"
split_seed = 0
val_fraction = 0.15
test_fraction = 0.3
max_train = 600
max_test = 300

[data.ood.uniform_noise]
dataset = "uniform_noise"
group = "far"
size = 100

[data.ood.rotated_digits]
dataset = "rotated_digits"
group = "near"
size = 100

[net]
arch = "lenet"
options = {{ channels = [6, 12], hidden = 32 }}

[train]
epochs = 4
batch_size = 64
lr = 0.005

{models}

{suites}
"""


def tiny_toml(models: str = "[models.deterministic]", suites: str = "[suites.calibration]",
              extra: str = "") -> str:
    return TINY_TOML.format(models=models, suites=suites) + extra


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt-cache")
    os.environ["STF_EVAL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_cfg(cache_dir):
    from stf_eval.config import load_config

    return load_config(text=tiny_toml(), overrides=[f'cache_dir="{cache_dir}"'])


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg):
    from stf_eval.data.plan import build_data

    return build_data(tiny_cfg)


@pytest.fixture(scope="session")
def fitted_models(tiny_cfg, tiny_data):
    """name -> fitted model: every registered model plugin, with its ``tiny`` parameters, fitted once."""
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.params import parse_params
    from stf_eval.registry import MODELS
    from stf_eval.runner import build_model

    cache = CheckpointCache(tiny_cfg.cache_dir)
    built = {}

    def get(name: str):
        if name not in built:
            cls = MODELS.get(name)
            # adapters need a user object or file; optional extras may be absent (laplace-torch)
            reason = getattr(cls, "missing_requirement", lambda: None)()
            if reason:
                pytest.skip(reason)
            spec = PluginSpec(name=name, plugin=name, params=parse_params(cls.Params, cls.tiny, name))
            built[name] = build_model(spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), cache)
        return built[name]

    return get
