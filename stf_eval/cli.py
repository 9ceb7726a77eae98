"""Command line: ``stf-eval run | plan | list | report | compare``.

Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings

from . import __version__
from .errors import ConfigError, InternalError, StfEvalError
from .progress import set_quiet

KINDS = ("models", "suites", "datasets", "nets", "suite-files")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _verbosity(default) -> argparse.ArgumentParser:
    """-v/-q, accepted before and after the subcommand (``default=SUPPRESS`` on the subcommands, so
    a flag given before the subcommand is not reset by the subparser's default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging; a traceback with every error")
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings and errors; no progress bars")
    return common


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stf-eval", parents=[_verbosity(False)],
        description="Evaluate STF-BNN and baseline uncertainty models: calibration, OOD detection, "
                    "adversarial robustness, membership inference, efficiency; writes an HTML report.")
    p.add_argument("--version", action="version", version=f"stf-eval {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = [_verbosity(argparse.SUPPRESS)]

    r = sub.add_parser("run", parents=common, help="run a suite file and write results + HTML report",
                       description="Run every (model, seed) cell of a suite file, then write results.csv, "
                                   "results.json and report.html into the output directory.")
    r.add_argument("suite", nargs="?", default=None,
                   help="suite file (TOML), or the name of a shipped suite file (quick, smoke, "
                        "paper_cifar10: see 'stf-eval list suite-files'); default: quick (the embedded "
                        "mnist5k benchmark)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the file, e.g. --set train.epochs=2 (repeatable)")
    r.add_argument("--out", default=None, help="output directory (default: the file's output_dir)")
    r.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--cache-dir", default=None, help="checkpoint cache (default: $STF_EVAL_CACHE or "
                                                     "~/.cache/stf-eval)")
    r.add_argument("--resume", action="store_true", help="skip (model, seed) cells already finished")
    _executor_args(r)
    r.add_argument("--dry-run", action="store_true", help="print the plan (jobs, cells, cost) and run nothing")

    pl = sub.add_parser("plan", parents=common, help="print a run's training jobs, cells and cost without running anything",
                        description="Plan a suite file: every training job (one per cacheable stage, shared "
                                    "stages once), whether it is cached, what it needs, the (model, seed) "
                                    "cells, and an estimate of the training still to do. Runs nothing.")
    pl.add_argument("suite", nargs="?", default=None, help="suite file (TOML); default: suites/quick.toml")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override any key of the file (repeatable)")
    pl.add_argument("--cache-dir", default=None, help="checkpoint cache to check for finished jobs")

    ls = sub.add_parser("list", parents=common, help="list registered plugins or shipped suite files",
                        description="List registered plugins: models, suites (the evaluation plugins a suite "
                                    "file's [suites.*] tables use), datasets and network architectures; "
                                    "'suite-files' lists the suite files (TOML) shipped with the package, "
                                    "which 'stf-eval run NAME' runs.")
    ls.add_argument("kind", nargs="?", choices=KINDS,
                    help="only this kind ('suites' = evaluation plugins, 'suite-files' = shipped TOML files)")
    ls.add_argument("pattern", nargs="?", default="*", help="glob on names, e.g. 'cifar*'")

    rep = sub.add_parser("report", parents=common, help="re-render the HTML report of a finished run (no recomputation)")
    rep.add_argument("run_dir", help="a run directory holding results.json")
    rep.add_argument("-o", "--output", default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    rep.add_argument("--figures", choices=("first-seed", "all", "none"), default="first-seed",
                     help="figures saved by the suites to embed: each model's first seed as PNG (default, light), every seed as SVG (all), none")

    cmp = sub.add_parser("compare", parents=common, help="several finished runs side by side in one HTML page",
                         description="Compare finished runs (e.g. two datasets, CPU and GPU, two seed sets): "
                                     "the same model, metric and setting side by side, with values that differ "
                                     "beyond the tolerance, or exist in one run only, marked.")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding results.json")
    cmp.add_argument("-o", "--output", default="comparison.html", help="HTML file to write (default: "
                                                                      "comparison.html)")
    cmp.add_argument("--abs-tol", type=float, default=0.01,
                     help="rates and scores in [-1, 1] (accuracy, ECE, AUROC ...) differ if |a-b| > this "
                          "(default 0.01)")
    cmp.add_argument("--rel-tol", type=float, default=0.05,
                     help="NLL, seconds, parameters, memory, latency, epsilon differ if |a-b| > rel_tol * "
                          "max(|a|, |b|) (default 0.05)")

    mrg = sub.add_parser("merge", help="merge runs of one configuration with different seeds into one run",
                         description="Merge finished runs of the same configuration (only seeds differ) into one "
                                     "run directory: records, per-example arrays and figures, a report with means "
                                     "over seeds and over_seeds.csv (mean, std, 95% t interval per figure).")
    mrg.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding results.json")
    mrg.add_argument("-o", "--output", required=True, help="the merged run directory to create")
    return p


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where jobs run: local (in this process, in order) or ray (default: the file's "
                        "[executor] kind, else local)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: run jobs and cells in N worker processes on this machine, each at "
                        "num_threads torch threads (else CPUs / N); 1 = all in this process (default: "
                        "the file's executor.workers, else 1). Same numbers as a 1-worker run at the same "
                        "num_threads")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="ray: 'auto' joins the cluster running here (ray start --head), HOST:PORT another; "
                        "omitted: start a Ray instance on this machine")


def _run_overrides(args) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "device", None):
        if not DEVICE_RE.fullmatch(args.device):
            raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {args.device!r}")
        overrides.append(f'device="{args.device}"')
    if args.cache_dir:
        overrides.append(f"cache_dir={json.dumps(args.cache_dir)}")
    if getattr(args, "executor", None):
        overrides.append(f'executor.kind="{args.executor}"')
    if getattr(args, "workers", None) is not None:
        overrides.append(f"executor.workers={args.workers}")
    if getattr(args, "ray_address", None):
        overrides.append(f'executor.address="{args.ray_address}"')
    return overrides


def _plan(args) -> None:
    from .config import load_config
    from .plan import data_for_plan, format_plan
    from .runner import plan_run

    cfg = load_config(args.suite, _run_overrides(args))
    from .device import apply_numerics, resolve_device

    apply_numerics(resolve_device(cfg.device), cfg.deterministic)  # the keys include the numerics flags
    logging.getLogger("opacus").setLevel(logging.WARNING)  # its layer fixer talks while a plan walks dp_sgd
    data, note = data_for_plan(cfg)
    plan = plan_run(cfg, data, note=note)
    print(f"plan {cfg.name} ({cfg.source}): executor {cfg.executor.kind}, cache {cfg.cache_dir}")
    print(format_plan(plan, keys_known=not note))


def _list(kind: str | None, pattern: str) -> None:
    import fnmatch

    from .registry import DATASETS, MODELS, NETS, SUITES
    from .shipped import shipped_suites

    regs = {"models": MODELS, "suites": SUITES, "datasets": DATASETS, "nets": NETS}
    for name in ([kind] if kind else KINDS):
        if name == "suite-files":
            print("suite-files (run one with 'stf-eval run NAME'):")
            for stem, path in shipped_suites().items():
                if fnmatch.fnmatch(stem, pattern):
                    print(f"  {stem:<22} {path}")
            continue
        print(f"{name}:" if name != "suites" else "suites (evaluation plugins):")
        for plugin_name, obj in regs[name].items():
            if not fnmatch.fnmatch(plugin_name, pattern):
                continue
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"  {plugin_name:<22} {doc[0] if doc else ''}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    set_quiet(args.quiet)
    if args.quiet:  # training bars too (tqdm reads this when first imported)
        os.environ.setdefault("TQDM_DISABLE", "1")
    # names in any script are allowed; a glyph the figure font lacks is drawn as a box, not warned about
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    try:
        if args.command == "run":
            from .config import load_config
            from .runner import run

            if args.dry_run:
                _plan(args)
                return 0
            cfg = load_config(args.suite, _run_overrides(args))
            from .allocator import apply

            apply(cfg.allocator)  # this process is the run's own (a run from the API leaves its caller's alone)
            run_dir = run(cfg, resume=args.resume, out_dir=args.out, progress=not args.quiet)
            print(f"results: {run_dir / 'results.csv'}")
            print(f"report:  {run_dir / 'report.html'}")
        elif args.command == "plan":
            _plan(args)
        elif args.command == "list":
            _list(args.kind, args.pattern)
        elif args.command == "report":
            from pathlib import Path

            from .report.html import render_run

            print(render_run(Path(args.run_dir), args.output, figures=args.figures))
        elif args.command == "compare":
            from .report.compare import render_compare

            print(render_compare(args.run_dirs, args.output, rel_tol=args.rel_tol, abs_tol=args.abs_tol))
        elif args.command == "merge":
            from .report.html import render_run
            from .report.merge import merge_runs

            print(render_run(merge_runs(args.run_dirs, args.output)))
        else:
            _parser().print_help()
            return 2
    except StfEvalError as exc:
        if args.verbose:  # the one-line message is for users; -v shows where it came from
            import traceback

            traceback.print_exc()
        if isinstance(exc, InternalError):  # a bug: exit 1, finished cells kept
            kept = "" if "--resume" in str(exc) else "finished cells are kept; "
            print(f"stf-eval: internal error: {exc} ({kept}rerun with -v for the traceback)", file=sys.stderr)
        else:
            print(f"stf-eval: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug, not bad input: still one line unless -v asks for the traceback
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"stf-eval: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stf-eval: interrupted (finished cells are kept; rerun with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
