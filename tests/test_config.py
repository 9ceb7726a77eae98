"""Suite-file validation: each kind of bad input gives one ConfigError line naming file and key."""

from __future__ import annotations

import pytest
from conftest import tiny_toml

from stf_eval.config import load_config, parse_value
from stf_eval.errors import ConfigError


def load(text, overrides=()):
    return load_config(text=text, overrides=list(overrides))


def test_tiny_config_resolves_defaults():
    cfg = load(tiny_toml())
    assert cfg.data.dataset == "digits" and cfg.train.epochs == 4
    assert [m.name for m in cfg.models] == ["deterministic"]
    assert cfg.suites[0].params.bins == 15


@pytest.mark.parametrize("text, overrides, expected", [
    ("name = [", (), "malformed TOML"),
    (tiny_toml(extra="\nbogus = 1\n"), (), "unknown key 'bogus'"),
    (tiny_toml(), ["train.epochz=3"], "did you mean 'epochs'"),
    (tiny_toml(), ["train.epochs='three'"], "train.epochs: expected an integer"),
    (tiny_toml(), ["train.epochs=0"], "train.epochs: expected an integer >= 1"),
    (tiny_toml(), ["train.lr=-1"], "train.lr: expected a positive number"),
    (tiny_toml(), ["data.test_fraction=1.5"], "data.test_fraction"),
    (tiny_toml(), ["data.dataset='mnist5"], "did you mean 'mnist5k'"),
    (tiny_toml(models="[models.stf_bnm]"), (), "models.stf_bnm: unknown model 'stf_bnm'"),
    (tiny_toml(suites="[suites.calibraton]"), (), "did you mean 'calibration'"),
    (tiny_toml(suites="[suites.calibration]\nbins = 1"), (), "suites.calibration.bins: expected an integer >= 2"),
    (tiny_toml(suites="[suites.calibration]\nbinz = 10"), (), "did you mean 'bins'"),
    (tiny_toml(suites="[suites.adversarial]\nsanity_check_seeds = [3]"), (),
     "suites.adversarial.sanity_check_seeds: [3] not in seeds [0]"),
    (tiny_toml(), ["net.arch='resnet19'"], "did you mean 'resnet18'"),
    (tiny_toml(), ["device='tpu'"], "device: expected"),
    (tiny_toml(), ["seeds=[]"], "seeds: expected a non-empty list"),
    (tiny_toml(), ["figures='some'"], "figures: expected 'first-seed' or 'all' or 'none'"),
    (tiny_toml(), ["train.optimizer='adagrad'"], "train.optimizer: expected 'adam' or 'adamw' or 'sgd'"),
    (tiny_toml(models=""), (), "models: expected at least one"),
    (tiny_toml(extra='\n[data.ood.x]\ndataset = "nope"\n'), (), "data.ood.x.dataset: unknown dataset"),
    (tiny_toml(), ["train"], "expected KEY=VALUE"),
    (tiny_toml(), ["data.options.roots='x'"], "data.options: unknown key 'roots'"),
    (tiny_toml(), ["data.dataset='cifar10'", "data.options.download='yes'"], "data.options.download: expected true or false"),
])
def test_bad_input_is_one_clear_line(text, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load(text, overrides)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg
    assert msg.startswith("<string>")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_config(tmp_path / "nope.toml")


def test_set_overrides_any_key():
    cfg = load(tiny_toml(), ["train.epochs=2", "seeds=[1, 2]", "data.dataset=mnist", "data.options.root='/x'",
                              "models.deterministic.plugin='deterministic'"])
    assert cfg.train.epochs == 2 and cfg.seeds == (1, 2)
    assert cfg.data.options == {"root": "/x"}


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1,2]") == [1, 2] and parse_value("mnist5k") == "mnist5k"


def test_shipped_suite_files_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "suites").glob("*.toml")):
        load_config(path)


def test_figures_setting_picks_the_cells_that_draw():
    first = load(tiny_toml(), ["seeds=[2, 0, 1]"])
    assert [s for s in (0, 1, 2) if first.saves_figures(s)] == [0]  # the smallest seed, what the report shows
    assert [s for s in (0, 1, 2) if load(tiny_toml(), ["seeds=[2, 0, 1]", "figures=all"]).saves_figures(s)] == [0, 1, 2]
    assert not any(load(tiny_toml(), ["figures=none"]).saves_figures(s) for s in (0, 1))
