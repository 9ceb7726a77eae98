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


# -- errors before anything is written --------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

TINY = """
name = "tiny"
seeds = [0]
device = "cpu"
[data]
dataset = "digits"
max_train = 200
max_test = 100
[net]
arch = "lenet"
options = { channels = [4, 8], hidden = 16 }
[train]
epochs = 1
batch_size = 64
[models.deterministic]
[suites.calibration]
bootstrap = 0
severities = [1]
"""


def cli(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-m", "stf_eval", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def main_line(capsys, *args, code=2) -> str:
    """Run the CLI in this process (faster than a subprocess); return its one stderr line."""
    from stf_eval.cli import main

    assert main(list(args)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def one_error_line(res, code=2) -> str:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def suite_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_out_is_an_existing_file(tmp_path, suite_file, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    line = main_line(capsys, "run", str(suite_file), "--out", str(target))
    assert str(target) in line and "not a directory" in line


def test_output_directory_not_writable(tmp_path, monkeypatch):
    from stf_eval.runner import prepare_run_dir

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ConfigError, match="cannot be created \\(Permission denied\\)"):
        prepare_run_dir(tmp_path / "new")
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="not writable"):
        prepare_run_dir(tmp_path / "other")


def test_unimportable_net_writes_nothing(tmp_path, suite_file, capsys):
    out = tmp_path / "out"
    line = main_line(capsys, "run", str(suite_file), "--out", str(out), "--set", 'net.arch="nosuchpkg.mod:fn"')
    assert "net.arch" in line and "nosuchpkg" in line
    assert not out.exists()


def test_suite_path_is_a_directory(tmp_path, capsys):
    line = main_line(capsys, "run", str(tmp_path))
    assert "is a directory" in line


def test_device_option_is_named(suite_file, capsys):
    line = main_line(capsys, "run", str(suite_file), "--device", "tpu")
    assert line.startswith("stf-eval: error: --device:") and "suite" not in line.split("--device")[1]


def test_verbosity_flags_anywhere(capsys):
    from stf_eval.cli import _parser, main

    for args in (["list", "nets", "-q"], ["-q", "list", "nets"], ["list", "-v", "nets"]):
        assert main(args) == 0 and "lenet" in capsys.readouterr().out
    args = _parser().parse_args(["-v", "run", "x.toml", "-q"])
    assert args.verbose and args.quiet
    assert not _parser().parse_args(["run", "x.toml"]).quiet


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_quiet_run_prints_no_progress_bars_and_unicode_names_warn_nothing(tmp_path, suite_file):
    """-q: no tqdm bars, no log lines; a model named in another script leaks no font warnings."""
    suite_file.write_text(TINY.replace("[models.deterministic]", '[models."模型"]\nplugin = "deterministic"'))
    out = tmp_path / "out"
    res = cli("run", str(suite_file), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "-q")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr
    assert (out / "cells" / "模型--seed0.json").is_file()


def test_diverging_learning_rate_names_the_stage(tmp_path, suite_file, capsys):
    line = main_line(capsys, "run", str(suite_file), "--out", str(tmp_path / "out"), "-q",
                     "--cache-dir", str(tmp_path / "cache"), "--set", "train.lr=1e300")
    assert "training stage 'deterministic' diverged" in line


@pytest.mark.parametrize("override, needle", [
    ("data.ood.noise.size=1000000000000", "data.ood.noise.size: expected an integer in [1, 1,000,000]"),
    ("data.split_seed=-1", "data.split_seed: expected an integer in [0, 2^32)"),
    ("net.options.hidden=-1", "net.options.hidden: expected a positive integer"),
    ('net.options.channels="abc"', "net.options.channels: expected list of int"),
    ("net.options.channels={a=1}", "net.options.channels: expected list of int"),
    ("net.options.widht=3", "net.options: unknown key 'widht'"),
    ('name="../up"', "name: '../up' cannot be used as a name"),
    ('models."../../../escaped".plugin="deterministic"', "'../../../escaped' cannot be used as a name"),
    ('models."a/b".plugin="deterministic"', "'a/b' cannot be used as a name"),
    ('suites."../s".plugin="calibration"', "'../s' cannot be used as a name"),
    ('data.ood."../o".dataset="uniform_noise"', "'../o' cannot be used as a name"),
])
def test_config_errors(override, needle):
    from stf_eval.config import load_config

    text = TINY + '[data.ood.noise]\ndataset = "uniform_noise"\n'
    with pytest.raises(ConfigError) as info:
        load_config(text=text, overrides=[override])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_quoted_set_keys_lose_their_quotes():
    from stf_eval.config import load_config

    cfg = load_config(text=TINY, overrides=['models."x".plugin="deterministic"',
                                            'models."y.z".plugin="deterministic"'])
    assert [m.name for m in cfg.models] == ["deterministic", "x", "y.z"]
    with pytest.raises(ConfigError, match="not a valid TOML key"):
        load_config(text=TINY, overrides=['models."x.plugin="deterministic"'])


def test_file_name_must_be_a_safe_run_name_when_name_is_absent(tmp_path):
    from stf_eval.config import load_config

    path = tmp_path / "my suite.toml"
    path.write_text(TINY.replace('name = "tiny"\n', ""))
    with pytest.raises(ConfigError, match="taken from the file name"):
        load_config(path)


def test_ood_set_larger_than_memory_is_refused(monkeypatch):
    from stf_eval.data import plan
    from stf_eval.errors import DataError

    monkeypatch.setattr(os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 1000)  # ~4 MiB
    with pytest.raises(DataError, match="data.ood.x.size: 100,000 images .* need 1,172 MiB"):
        plan._check_fits_in_memory(100_000, (3, 32, 32), "data.ood.x.size")
    plan._check_fits_in_memory(10, (1, 8, 8), "data.ood.x.size")


def test_a_bug_in_a_suite_exits_1_and_keeps_finished_cells(tmp_path, capsys):
    """A suite that raises TypeError for the second model: internal error (exit 1, one line), not a user
    error; the first model's finished cell stays on disk for --resume."""
    from dataclasses import dataclass

    from stf_eval import cli as cli_mod
    from stf_eval.registry import SUITES

    @dataclass(frozen=True)
    class P:
        pass

    class Buggy:
        Params = P

        def __init__(self, params, name):
            pass

        def skip_reason(self, model, data):
            return None

        def run(self, model, data, ctx):
            if ctx.model_name == "second":
                raise TypeError("unsupported operand")
            ctx.record("ok", 1.0)

    SUITES.register("buggy_test_suite")(Buggy)
    suite = tmp_path / "s.toml"
    suite.write_text(TINY.replace("[suites.calibration]\nbootstrap = 0\nseverities = [1]\n", "[suites.buggy_test_suite]\n")
                     + '[models.second]\nplugin = "deterministic"\n')
    out = tmp_path / "out"
    code = cli_mod.main(["run", str(suite), "--out", str(out), "--cache-dir", str(tmp_path / "c"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    os.environ.pop("STF_EVAL_QUIET", None)
    assert code == 1 and len(err) == 1
    assert err[0].startswith("stf-eval: internal error: cell second--seed0 failed: TypeError: unsupported operand")
    assert json.loads((out / "cells" / "deterministic--seed0.json").read_text())["records"]
    assert not (out / "cells" / "second--seed0.json").exists()


# -- shipped suite files ------------------------------------------------------------------------------------

def test_shipped_suites_found_by_name(capsys, tmp_path, monkeypatch):
    from stf_eval.cli import main
    from stf_eval.config import load_config
    from stf_eval.shipped import find_suite, shipped_suites

    assert {"quick", "smoke"} <= set(shipped_suites())
    monkeypatch.chdir(tmp_path)  # outside the checkout: names, not paths
    assert find_suite("smoke").name == "smoke.toml" and find_suite(None).name == "quick.toml"
    assert load_config("smoke").name == "smoke"
    with pytest.raises(ConfigError, match="no shipped suite of that name \\(shipped: .*quick"):
        find_suite("quik")
    assert main(["list", "suite-files"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "quick" in out
