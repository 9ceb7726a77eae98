"""Same seeds, same results, whatever the checkpoint cache holds.

A tiny run (digits, tiny LeNet; deterministic, stf_bnn, mc_dropout; calibration and membership with
reference models) is run on a cold cache, on the warm cache, on a cache that holds only some stages,
and resumed after one finished cell was deleted: results.csv must be identical (timing and memory
figures aside), because every stochastic draw is a function of (seed, what is drawn).
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from stf_eval.config import load_config
from stf_eval.runner import run

TOML = """
name = "determinism"
seeds = [0]
device = "cpu"
[data]
dataset = "digits"
split_seed = 0
val_fraction = 0.15
test_fraction = 0.3
max_train = 200
max_test = 100
[net]
arch = "lenet"
options = { channels = [4, 8], hidden = 16 }
[train]
epochs = 2
batch_size = 64
lr = 0.005
[models.deterministic]
[models.stf_bnn]
svi_epochs = 1
test_samples = 4
[models.mc_dropout]
test_samples = 4
[suites.calibration]
bootstrap = 10
severities = [1]
[suites.membership]
num_references = 3
"""

TIMING = ("seconds", "memory", "latency")


def results(run_dir) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "results.csv")
    keep = ~df["metric"].astype(str).str.contains("|".join(TIMING))
    return df[keep].sort_values(list(df.columns[:6])).reset_index(drop=True)


def do_run(tmp_path, name, cache, resume=False, models=None):
    overrides = [f'cache_dir="{cache}"']
    cfg = load_config(text=TOML, overrides=overrides)
    if models:
        cfg = cfg.__class__(**{**cfg.__dict__, "models": tuple(m for m in cfg.models if m.name in models)})
    return run(cfg, resume=resume, out_dir=str(tmp_path / name), render=False)


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_cold_warm_partial_and_resumed_runs_agree(tmp_path):
    cache = tmp_path / "cache"
    cold = results(do_run(tmp_path, "cold", cache))
    assert set(cold["suite"]) == {"calibration", "membership"} and len(set(cold["model"])) == 3

    warm = results(do_run(tmp_path, "warm", cache))
    pd.testing.assert_frame_equal(cold, warm)

    # a second cache state in the same process: only the shared deterministic network is cached
    partial_cache = tmp_path / "partial"
    do_run(tmp_path, "pre", partial_cache, models={"deterministic"})
    partial = results(do_run(tmp_path, "partial", partial_cache))
    pd.testing.assert_frame_equal(cold, partial)

    # resumed: one finished cell deleted, the others reused
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "cold", resumed_dir)
    (resumed_dir / "cells" / "stf_bnn--seed0.json").unlink()
    resumed = results(do_run(tmp_path, "resumed", cache, resume=True))
    pd.testing.assert_frame_equal(cold, resumed)


def test_unseeded_plugin_stage_gets_the_same_weights(tmp_path):
    """A stage that draws from torch's global generator without seeding itself (a user plugin) gets
    the same weights whether the stage before it was trained or loaded, and the global state of the
    caller is left as it was."""
    import torch

    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.data.plan import build_data
    from stf_eval.models.base import ModelPlugin, pretrained_base
    from stf_eval.runner import build_model

    class Unseeded(ModelPlugin):
        def fit(self, data):
            self.base, meta = pretrained_base(self.ctx, data)
            self.head = torch.nn.Linear(data.num_classes, data.num_classes)  # global-RNG init
            spec = self.ctx.key_spec(data, kind="unseeded-head")

            def train():
                with torch.no_grad():
                    self.head.weight.add_(torch.randn_like(self.head.weight))  # global-RNG draw
                return 0.0, {}

            self.run_stage("head", spec, self.head, train)
            return self

        def sample_logits(self, x, n_samples):
            return self.head(self.base(x)).unsqueeze(0)

        def networks(self):
            return [self.base, self.head]

    Unseeded.registered_name = "unseeded"
    cfg = load_config(text=TOML, overrides=["train.epochs=1"])
    data = build_data(cfg)
    spec = PluginSpec(name="unseeded", plugin="deterministic", params=None)

    def weights(cache_root):
        from stf_eval.registry import MODELS

        real = MODELS.get
        MODELS.get = lambda name: Unseeded  # type: ignore[method-assign]
        try:
            before = torch.random.get_rng_state()
            model = build_model(spec, cfg, data, 0, torch.device("cpu"), CheckpointCache(cache_root))
            assert torch.equal(before, torch.random.get_rng_state()), "building changed the caller's RNG"
        finally:
            MODELS.get = real  # type: ignore[method-assign]
        return model.head.weight.detach().clone()

    cold = weights(tmp_path / "a")
    warm = weights(tmp_path / "a")
    torch.manual_seed(123)  # whatever ran before
    for f in (tmp_path / "a").glob("*.json"):  # drop the head's entry: the base is loaded, the head trained
        if '"unseeded-head"' in f.read_text():
            f.unlink()
    partial = weights(tmp_path / "a")
    assert torch.equal(cold, warm) and torch.equal(cold, partial)


def test_a_resumed_stf_cell_is_redone_when_the_compared_full_bnn_recipe_changes():
    """The efficiency suite times STF-BNN's SVI epoch against the run's full_bnn recipe, so that recipe
    is part of the stf_bnn cell's key (and of no other cell's)."""
    from stf_eval.data.plan import build_data
    from stf_eval.plan import Cell
    from stf_eval.runner import cell_key

    text = TOML + "[models.full_bnn]\nepochs = 1\n[suites.efficiency]\n"
    keys = {}
    for estimator in ("auto", "weight_sample"):
        cfg = load_config(text=text, overrides=[f'models.full_bnn.train_estimator="{estimator}"'])
        data = build_data(cfg)
        keys[estimator] = {spec.name: cell_key(cfg, Cell(spec, 0), data) for spec in cfg.models}
    assert keys["auto"]["stf_bnn"] != keys["weight_sample"]["stf_bnn"]
    assert keys["auto"]["full_bnn"] != keys["weight_sample"]["full_bnn"]
    for name in ("deterministic", "mc_dropout"):
        assert keys["auto"][name] == keys["weight_sample"][name]
