"""What Ray adds to a run: starting a local instance, and each job's trip through a task.

Measured with the project's own pieces: a plan of suites/smoke.toml's deterministic model, its one
training job trained once into a fresh cache, then the same (now cached: load only) job run
``--repeats`` times in this process and as a Ray task (the executor's ``job_task``), alternating.
The difference of medians is the per-job overhead of Ray (submit, schedule, argument transfer,
result); the first task also pays a worker's start and imports. Prints seconds.

    python benchmarks/ray_overhead.py [--repeats 10] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()

    import ray
    import torch

    from stf_eval.config import load_config
    from stf_eval.data.plan import build_data
    from stf_eval.executors.ray import WORKER_ENV, job_task
    from stf_eval.plan import Work
    from stf_eval.runner import evaluate_cell, plan_run

    cache = tempfile.mkdtemp(prefix="ray-overhead-")
    cfg = load_config(text=(ROOT / "suites" / "smoke.toml").read_text(),
                      overrides=[f'cache_dir="{cache}"', "models={}", "models.deterministic={}"])
    data = build_data(cfg)
    plan = plan_run(cfg, data)
    job = next(iter(plan.jobs.values()))
    work = Work(cfg=cfg, data=data, splits=plan.splits, cache_root=cache, run_dir=cache, evaluate=evaluate_cell,
                threads=torch.get_num_threads())
    t = time.perf_counter()
    work.run_job(job)
    print(f"training the job here: {time.perf_counter() - t:.2f} s (now cached)")

    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": WORKER_ENV})
    print(f"ray.init (local instance, {args.num_cpus} CPUs): {time.perf_counter() - t:.2f} s")
    try:
        task = ray.remote(num_cpus=1)(job_task)
        t = time.perf_counter()
        work_ref = ray.put(work)
        print(f"ray.put of the run's data and config: {time.perf_counter() - t:.3f} s")
        t = time.perf_counter()
        ray.get(task.remote(work_ref, job, True))
        print(f"first task (worker start + imports + load): {time.perf_counter() - t:.2f} s")
        here, there = [], []
        for i in range(args.repeats):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                if side == 0:
                    work.run_job(job)
                else:
                    ray.get(task.remote(work_ref, job, True))
                (here if side == 0 else there).append(time.perf_counter() - t)
        h, r = statistics.median(here), statistics.median(there)
        print(f"cached job, median of {args.repeats}: in process {h:.3f} s, as a Ray task {r:.3f} s; "
              f"per-job overhead {r - h:.3f} s")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
