"""The run plan and its executors: shared stages planned once, dependencies, cached flags, bounded
retries with a one-line report, and the same results.csv from the local and the Ray executor."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from conftest import tiny_toml

TIMING = ("seconds", "latency", "memory")  # metrics measured, not computed: they differ between runs

MODELS = """
[models.deterministic]
[models.temperature_scaled]
[models.stf_bnn]
svi_epochs = 1
test_samples = 4
[models.deep_ensemble]
members = 3
[models.mc_dropout]
test_samples = 4
"""
SUITES = "[suites.calibration]\nbootstrap = 5\nseverities = [1]\nshifts = ['gaussian_noise']\n"


def _cfg(cache, models=MODELS, seeds="[0, 1]", **more):
    from stf_eval.config import load_config

    overrides = [f'cache_dir="{cache}"', f"seeds={seeds}", *[f"{k}={v}" for k, v in more.items()]]
    return load_config(text=tiny_toml(models=models, suites=SUITES), overrides=overrides)


def _two_references(self, model_name, data, seed):
    """A suite asking for two reference builds per cell, on halves of the training split."""
    half = len(data.train) // 2
    return [(data.train.subset(torch.arange(half).numpy()), 100 + 10 * seed),
            (data.train.subset(torch.arange(half, len(data.train)).numpy()), 101 + 10 * seed)]


def test_plan_shares_stages_orders_dependencies_and_sees_the_cache(tmp_path, monkeypatch):
    from stf_eval.data.plan import build_data
    from stf_eval.plan import Work
    from stf_eval.registry import SUITES
    from stf_eval.runner import evaluate_cell, plan_run

    monkeypatch.setattr(SUITES.get("calibration"), "reference_builds", _two_references)
    cfg = _cfg(tmp_path / "cache")
    data = build_data(cfg)
    plan = plan_run(cfg, data)
    # per seed and training split: one base (shared by deterministic, temperature_scaled, stf_bnn and
    # ensemble member 0), stf_bnn's SVI stage, ensemble members 1 and 2, mc_dropout: 5 stages; each
    # seed has the run's split and two reference splits -> 2 seeds x 3 splits x 5
    assert len(plan.jobs) == 30
    assert plan.counts() == {"deterministic": 18, "stf_bnn": 6, "mc_dropout": 6}
    assert len(plan.cells) == 10 and not any(j.cached for j in plan.jobs.values())
    jobs = list(plan.jobs.values())
    for job in jobs:
        for dep in job.deps:  # dependencies come first in plan order
            assert jobs.index(plan.jobs[dep]) < jobs.index(job)
        assert job.deps == () if job.kind in ("deterministic", "mc_dropout") else len(job.deps) == 1
    svi = [j for j in jobs if j.kind == "stf_bnn" and j.build.split == "train" and j.build.seed == 0][0]
    base = plan.jobs[svi.deps[0]]
    assert base.kind == "deterministic" and base.build == svi.build.__class__("deterministic", "train", 0)
    # reference splits are kept as row numbers into the run's data, and give back the same images
    from stf_eval.plan import RowIndex, RowRef

    assert len(plan.splits) == 2 and all(isinstance(r, RowRef) for r in plan.splits.values())
    for name, ref in plan.splits.items():
        assert name == f"ref-{ref.split(data).fingerprint}"
    outside = data.train.subset(torch.arange(10).numpy())
    outside.x = outside.x.flip(-1)  # images the run's data does not hold: the split itself is kept
    assert RowIndex(data).compact(outside) is outside
    cells = {pc.cell.label: pc for pc in plan.cells}
    # a cell needs its own stages and those of its two references
    assert len(cells["deterministic--seed0"].stages) == 3
    assert len(cells["stf_bnn--seed0"].stages) == 6
    assert set(cells["temperature_scaled--seed1"].stages) == set(cells["deterministic--seed1"].stages)
    assert len(cells["deep_ensemble--seed0"].stages) == 9
    # train the shared base: the next plan sees it cached, with its measured seconds
    work = Work(cfg=cfg, data=data, splits=plan.splits, cache_root=cfg.cache_dir, run_dir=str(tmp_path / "run"),
                evaluate=evaluate_cell)
    assert work.run_job(base)["cached"] is False
    again = plan_run(cfg, data)
    assert again.jobs[base.key].cached and again.jobs[base.key].seconds > 0
    assert [j.key for j in again.pending_jobs()] == [j.key for j in plan.pending_jobs() if j.key != base.key]
    # a finished cell (resume) no longer asks for the jobs only it needs
    done = plan_run(cfg, data, done={pc.cell.label for pc in plan.cells})
    assert done.pending_jobs() == [] and done.pending_cells() == []


def test_failing_job_retried_then_reported_by_name_and_the_rest_runs(tmp_path, monkeypatch):
    from stf_eval.data.plan import build_data
    from stf_eval.errors import StfEvalError
    from stf_eval.executors.local import LocalExecutor
    from stf_eval.plan import Work
    from stf_eval.runner import evaluate_cell, plan_run

    models = "[models.deterministic]\n[models.mc_dropout]\ntest_samples = 2\n"
    cfg = _cfg(tmp_path / "cache", models=models, seeds="[0]", **{"executor.max_retries": 1})
    data = build_data(cfg)
    plan = plan_run(cfg, data)
    calls = []
    real = Work.run_job

    def flaky(self, job, cache_root=None):
        calls.append(job.kind)
        if job.kind == "mc_dropout":
            raise RuntimeError("out of memory\non two lines")
        return real(self, job, cache_root)

    monkeypatch.setattr(Work, "run_job", flaky)
    work = Work(cfg=cfg, data=data, splits=plan.splits, cache_root=cfg.cache_dir, run_dir=str(tmp_path / "run"),
                evaluate=evaluate_cell)
    kept = {}
    with pytest.raises(StfEvalError) as err:
        LocalExecutor(cfg.executor, progress=False).run(plan, work, lambda cell, r: kept.setdefault(cell.label, r))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("job mc_dropout[mc_dropout seed 0]")
    assert "RuntimeError: out of memory on two lines (after 2 attempts)" in msg
    assert "cell mc_dropout--seed0" in msg  # not run, and said so
    assert calls.count("mc_dropout") == 2  # one retry, then reported
    assert list(kept) == ["deterministic--seed0"]  # what did not need the failed job finished


def _results(run_dir):
    df = pd.read_csv(run_dir / "results.csv")
    keep = ~df["metric"].str.contains("|".join(TIMING))
    return df[keep].reset_index(drop=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_ray_gives_the_local_results_whatever_the_cache_held(tmp_path):
    """Cold cache on the local executor; Ray with the cache shared and cold; Ray through the object
    store with a cache that already holds some stages: one results.csv (timing metrics aside)."""
    ray = pytest.importorskip("ray")
    from stf_eval.config import replace
    from stf_eval.runner import run

    models = "[models.deterministic]\n[models.stf_bnn]\nsvi_epochs = 1\ntest_samples = 4\n" \
             "[models.deep_ensemble]\nmembers = 2\n"
    local = run(_cfg(tmp_path / "c-local", models=models, seeds="[0]"), out_dir=str(tmp_path / "local"),
                render=False, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    try:
        cfg = _cfg(tmp_path / "c-shared", models=models, seeds="[0]", **{"executor.kind": '"ray"'})
        shared = run(cfg, out_dir=str(tmp_path / "shared"), render=False, progress=False)
        warm = tmp_path / "c-store"
        shutil.copytree(tmp_path / "c-local", warm)
        for entry in sorted(warm.glob("*.pt"))[:1]:  # drop one stage: the store run trains it again
            entry.unlink()
        cfg = replace(_cfg(warm, models=models, seeds="[0]", **{"executor.kind": '"ray"'}),
                      executor=replace(cfg.executor, storage="object_store"))
        store = run(cfg, out_dir=str(tmp_path / "store"), render=False, progress=False)
    finally:
        ray.shutdown()
    expected = _results(local)
    assert len(expected) > 20
    pd.testing.assert_frame_equal(_results(shared), expected)
    pd.testing.assert_frame_equal(_results(store), expected)
    # in object-store mode the driver wrote the cells' files and the retrained weights itself
    def files(run_dir):
        return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    assert files(store) == files(local) and any(f.startswith("figures/") for f in files(local))
    assert len(list(warm.glob("*.pt"))) == len(list((tmp_path / "c-local").glob("*.pt")))
