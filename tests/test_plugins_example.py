"""docs/examples/my_plugins.py, the example of docs/plugins.md, works: a suite file using its net,
dataset, model and suite runs end to end, and its net options are validated through the net's Params."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "my_plugins.py"

TOML = """
name = "plugins-example"
seeds = [0]
device = "cpu"
[data]
dataset = "example_stripes"
options = { n = 300, side = 6 }
[net]
arch = "example_one_hidden"
options = { hidden = 16 }
[train]
epochs = 3
batch_size = 32
lr = 0.01
[models.example_logit_noise]
sigma = 0.3
test_samples = 4
[models.deterministic]
[suites.example_margin]
min_margin = 0.5
"""


@pytest.fixture(scope="module")
def plugins():
    if "my_plugins" not in sys.modules:
        spec = importlib.util.spec_from_file_location("my_plugins", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["my_plugins"] = module
        spec.loader.exec_module(module)
    return sys.modules["my_plugins"]


def test_example_plugins_run_end_to_end(plugins, tmp_path):
    from stf_eval.config import load_config
    from stf_eval.examples import load_examples
    from stf_eval.runner import run

    cfg = load_config(text=TOML, overrides=[f'cache_dir="{tmp_path / "cache"}"'])
    run_dir = run(cfg, out_dir=str(tmp_path / "run"), render=False)
    df = pd.read_csv(run_dir / "results.csv")
    margin = df[(df.suite == "example_margin") & (df.metric == "mean_margin")].set_index("model")["value"]
    assert set(margin.index) == {"example_logit_noise", "deterministic"}
    assert ((margin > 0) & (margin <= 1)).all()
    acc = df[(df.suite == "example_margin") & (df.metric == "accuracy")]
    assert len(acc) == 2 and (acc["value"] > 0.7).all(), acc  # the stripes are learnable: the plugins really trained
    saved = load_examples(run_dir, suite="example_margin", model="deterministic", seed=0)[
        ("example_margin", "deterministic", 0)]
    assert np.isclose(saved["test/margin"].mean(), margin["deterministic"], atol=1e-6)


def test_example_net_options_are_validated(plugins):
    from stf_eval.config import load_config
    from stf_eval.errors import ConfigError

    with pytest.raises(ConfigError, match="net.options.hidden: expected a positive integer"):
        load_config(text=TOML, overrides=["net.options.hidden=0"])
