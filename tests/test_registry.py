"""The generic registry: lookup with suggestions, listing, and third-party entry-point plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from stf_eval.errors import UnknownPluginError
from stf_eval.registry import DATASETS, MODELS, NETS, SUITES, Registry


def test_builtins_are_registered():
    assert "deterministic" in MODELS.names()
    assert "calibration" in SUITES.names()
    assert {"mnist5k", "digits", "mnist", "cifar10", "svhn"} <= set(DATASETS.names())
    assert {"mlp", "lenet", "resnet18"} <= set(NETS.names())
    assert DATASETS.names("cifar*") == ["cifar10", "cifar100"]


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownPluginError, match="did you mean 'deterministic'"):
        MODELS.get("determinstic")


def test_duplicate_registration_is_refused():
    reg = Registry("thing", "stf_eval.models", "stf_eval.test_none")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(int)


def test_entry_point_plugin_is_found(tmp_path):
    """A separately installed package registers a model through the stf_eval.models entry point."""
    (tmp_path / "my_stf_plugin.py").write_text(textwrap.dedent('''
        from stf_eval.models.deterministic import Deterministic
        from stf_eval.registry import MODELS

        @MODELS.register("my_external_model")
        class MyExternal(Deterministic):
            """An external model plugin."""
    '''))
    dist = tmp_path / "my_stf_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-stf-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[stf_eval.models]\nmine = my_stf_plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "stf_eval", "list", "models"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "my_external_model" in out.stdout and "An external model plugin." in out.stdout
