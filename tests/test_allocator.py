"""allocator = "reuse": glibc's malloc keeps freed blocks in the run's own processes, and says where it cannot."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from stf_eval import allocator
from stf_eval.config import load_config
from stf_eval.errors import ConfigError


class FakeLibc:
    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def mallopt(self, param, value):
        self.calls.append((param.value, value.value))
        return 0 if param.value in self.refuse else 1


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)


def test_settings_are_passed_to_mallopt_in_order_once():
    libc = FakeLibc()
    assert allocator.reuse_freed_memory(libc) is True
    assert libc.calls == list(allocator.SETTINGS)
    assert allocator.reuse_freed_memory(FakeLibc(refuse={-3})) is True  # in force already: nothing called again


def test_a_refused_setting_is_said_and_not_taken_as_applied(caplog):
    with caplog.at_level(logging.WARNING, logger="stf_eval.allocator"):
        assert allocator.reuse_freed_memory(FakeLibc(refuse={allocator.M_TOP_PAD})) is False
    assert "refused" in caplog.text and str(allocator.M_TOP_PAD) in caplog.text


def test_system_setting_and_other_c_libraries_change_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda libc=None: pytest.fail("called"))
    assert allocator.apply("system") is False
    monkeypatch.undo()
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.reuse_freed_memory() is False


def test_config_key_defaults_to_reuse_and_rejects_other_values():
    assert load_config("suites/smoke.toml").allocator == "reuse"
    assert load_config("suites/smoke.toml", ['allocator="system"']).allocator == "system"
    with pytest.raises(ConfigError, match="allocator.*'reuse' or 'system'"):
        load_config("suites/smoke.toml", ['allocator="fast"'])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_reuse_removes_most_page_faults_of_a_variational_training_step():
    # in a fresh interpreter (the setting is process-wide): minor page faults of 10 fwd+bwd steps of a
    # flipout conv layer on 128 MNIST-sized examples, with glibc's defaults and then with the setting
    code = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from stf_eval.allocator import reuse_freed_memory
        from stf_eval.bayes.layers import VariationalConv2d
        torch.manual_seed(0)
        layer = VariationalConv2d(1, 16, 5, padding=2, train_estimator="flipout")
        layer.estimating = True
        x, g = torch.rand(128, 1, 28, 28), torch.randn(128, 16, 28, 28)
        def faults(steps=10):
            layer(x).backward(g)
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(steps):
                layer(x).backward(g)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
        before = faults()
        assert reuse_freed_memory()
        print(before, faults())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    # measured here: 39,000-70,000 faults before, 1,600-4,700 after
    assert after * 5 < before, (before, after)
