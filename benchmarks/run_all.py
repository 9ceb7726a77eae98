"""Run the four speed benchmarks one after the other and print a summary table of their ratios.

    python benchmarks/run_all.py [--threads 2] [--device cpu] [--cache-dir DIR] [--only 1,2,3,4]
                                 [--set KEY=VALUE ...] [--json FILE]

Each benchmark prints its repetitions (stderr) and its details; the table at the end gives each
ratio's median with min and max over the repetitions, and whether it meets its target. Benchmark 3
needs bayesian-torch (pip install bayesian-torch); without it, its row says so. ``--json FILE`` writes
every ratio with its spread (per-repetition ratios, median, min, max, the same in CPU time), the
load average before and after each benchmark, threads and versions, so a check can read them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TQDM_DISABLE", "1")

BENCHMARKS = {
    "1": "svi_epoch_vs_full_bnn",
    "2": "mc_prediction_vs_deterministic",
    "3": "variational_conv_vs_bayesian_torch",
    "4": "pgd_eot_vs_deterministic",
    "threads": "threads_per_job",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="1,2,3,4", help="comma-separated benchmark numbers (default 1-4; also: threads)")
    p.add_argument("--threads", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of suites/quick.toml in every benchmark")
    p.add_argument("--json", default=None, metavar="FILE", help="write every ratio with its spread to FILE")
    args = p.parse_args(argv)
    forwarded = []
    for flag, value in (("--threads", args.threads), ("--device", args.device), ("--cache-dir", args.cache_dir)):
        if value is not None:
            forwarded += [flag, str(value)]
    for item in args.overrides:
        forwarded += ["--set", item]
    results, skipped, loads = [], [], {}
    for number in [n.strip() for n in args.only.split(",") if n.strip()]:
        module = importlib.import_module(BENCHMARKS[number])
        print(f"\n== benchmark {number}: {module.__doc__.splitlines()[0]}", flush=True)
        start = time.perf_counter()
        load_before = _loadavg()
        try:
            got = module.main(forwarded)
        except SystemExit as exc:  # a missing optional dependency: say so, carry on
            skipped.append((number, str(exc.code)))
            print(f"skipped: {exc.code}", flush=True)
            continue
        for r in got:
            r.report()
            loads[r.name] = {"before": load_before, "after": _loadavg(), "seconds": time.perf_counter() - start}
        print(f"  ({time.perf_counter() - start:.0f} s; load average before {load_before}, after {_loadavg()})",
              flush=True)
        results += got
    print("\n== summary (ratio A/B per repetition: median [min, max]; lower is faster)")
    width = max([len(r.name) for r in results] + [20])
    print(f"{'benchmark'.ljust(width)}  {'median':>7}  {'min':>6}  {'max':>6}  {'target':>7}  result")
    for r in results:
        print(f"{r.name.ljust(width)}  {r.median:7.3f}  {min(r.ratios):6.3f}  {max(r.ratios):6.3f}  "
              f"{'<= ' + str(r.target):>7}  {'met' if r.passed else 'MISSED'}")
    for number, why in skipped:
        print(f"{('benchmark ' + number).ljust(width)}  skipped: {why.splitlines()[0]}")
    if args.json:
        write_json(args.json, results, skipped, loads, forwarded)
    return 0


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def write_json(path: str, results, skipped, loads, forwarded) -> None:
    import platform

    import torch

    def spread(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "values": list(values)} if values else None

    out = {"environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                           "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "arguments": forwarded},
           "benchmarks": [{"name": r.name, "ratio": r.ratio, "target": r.target, "met": r.passed,
                           "wall": spread(r.ratios), "cpu_time": spread(r.cpu_ratios),
                           "seconds_a": list(r.seconds_a), "seconds_b": list(r.seconds_b),
                           "scale_b": r.scale_b, "details": {k: str(v) for k, v in r.details.items()},
                           "load_average": loads.get(r.name)} for r in results],
           "skipped": [{"benchmark": n, "why": w} for n, w in skipped]}
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
