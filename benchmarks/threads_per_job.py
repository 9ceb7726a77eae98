"""Benchmark "threads": two training jobs as two 1-thread processes side by side / the same two jobs one after
the other in one process with 2 threads (wall clock; < 1 means one thread per job packs better).

A job is one epoch of the quick suite's deterministic LeNet on mnist5k (``training.fit``, the
project's own loop). Both arrangements run in fresh processes, alternated A B, B A, ... over the
repetitions.

    python benchmarks/threads_per_job.py [--repeats 3] [--epochs 1]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import ROOT, Result, parser, result

TARGET = 1.0

JOB = r"""
import os, sys, time, torch
os.environ["TQDM_DISABLE"] = "1"
torch.set_num_threads(int(sys.argv[1]))
from stf_eval.config import load_config
from stf_eval.data.plan import build_data
from stf_eval.nets.common import build_net
from stf_eval.training import fit, make_optimizer
cfg = load_config(sys.argv[3])
data = build_data(cfg)
for job in range(int(sys.argv[2])):
    torch.manual_seed(job)
    net = build_net(cfg.net, data.input_shape, data.num_classes, data.mean, data.std)
    opt = make_optimizer(net.parameters(), cfg.train)
    fit(net, data.train, epochs=int(sys.argv[4]), batch_size=cfg.train.batch_size, optimizer=opt,
        device=torch.device("cpu"), seed=job)
"""


def _python(threads: int, jobs: int, epochs: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", JOB, str(threads), str(jobs), str(ROOT / "suites" / "quick.toml"),
                             str(epochs)], env=env)


def main(argv=None) -> list[Result]:
    p = parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)

    def side_by_side() -> float:
        start = time.perf_counter()
        procs = [_python(1, 1, args.epochs), _python(1, 1, args.epochs)]
        if any(proc.wait() for proc in procs):
            raise SystemExit("a job failed")
        return time.perf_counter() - start

    def one_process() -> float:
        start = time.perf_counter()
        if _python(2, 2, args.epochs).wait():
            raise SystemExit("the job failed")
        return time.perf_counter() - start

    a, b = [], []
    for i in range(args.repeats):
        for fn, out in ((side_by_side, a), (one_process, b)) if i % 2 == 0 else ((one_process, b), (side_by_side, a)):
            out.append(fn())
        print(f"  threads rep {i + 1}: A {a[-1]:.2f} s, B {b[-1]:.2f} s, ratio {a[-1] / b[-1]:.3f}", file=sys.stderr)
    return [result("threads: two 1-thread jobs side by side vs two jobs on 2 threads",
                   "wall(2 processes x 1 thread) / wall(1 process x 2 threads, jobs in turn)", TARGET, a, b,
                   details={"job": f"{args.epochs} epoch(s) of the quick deterministic LeNet, process start included",
                            "cpus": os.cpu_count()})]


if __name__ == "__main__":
    for r in main():
        r.report()
