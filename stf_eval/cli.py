"""Command line: ``stf-eval run | list | report | compare``. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import StfEvalError

KINDS = ("models", "suites", "datasets", "nets")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stf-eval",
        description="Evaluate STF-BNN and baseline uncertainty models: calibration, OOD detection, "
                    "adversarial robustness, membership inference, efficiency; writes an HTML report.")
    p.add_argument("--version", action="version", version=f"stf-eval {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a suite file and write results + HTML report",
                       description="Run every (model, seed) cell of a suite file, then write results.csv, "
                                   "results.json and report.html into the output directory.")
    r.add_argument("suite", nargs="?", default=None,
                   help="suite file (TOML); default: suites/quick.toml (the embedded mnist5k benchmark)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the file, e.g. --set train.epochs=2 (repeatable)")
    r.add_argument("--out", default=None, help="output directory (default: the file's output_dir)")
    r.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--cache-dir", default=None, help="checkpoint cache (default: $STF_EVAL_CACHE or "
                                                     "~/.cache/stf-eval)")
    r.add_argument("--resume", action="store_true", help="skip (model, seed) cells already finished")

    ls = sub.add_parser("list", help="list registered plugins",
                        description="List registered models, suites, datasets and network architectures.")
    ls.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    ls.add_argument("pattern", nargs="?", default="*", help="glob on names, e.g. 'cifar*'")

    rep = sub.add_parser("report", help="re-render the HTML report of a finished run (no recomputation)")
    rep.add_argument("run_dir", help="a run directory holding results.json")
    rep.add_argument("-o", "--output", default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    rep.add_argument("--figures", choices=("first-seed", "all", "none"), default="first-seed",
                     help="figures saved by the suites to embed: each model's first seed as PNG (default, light), every seed as SVG (all), none")

    cmp = sub.add_parser("compare", help="several finished runs side by side in one HTML page",
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
    return p


def _list(kind: str | None, pattern: str) -> None:
    from .registry import DATASETS, MODELS, NETS, SUITES

    regs = {"models": MODELS, "suites": SUITES, "datasets": DATASETS, "nets": NETS}
    for name in ([kind] if kind else KINDS):
        print(f"{name}:")
        for plugin_name, obj in regs[name].items():
            import fnmatch
            if not fnmatch.fnmatch(plugin_name, pattern):
                continue
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"  {plugin_name:<22} {doc[0] if doc else ''}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "run":
            from .config import load_config
            from .runner import run

            overrides = list(args.overrides)
            if args.device:
                overrides.append(f"device={args.device!r}".replace("'", '"'))
            if args.cache_dir:
                overrides.append(f'cache_dir="{args.cache_dir}"')
            cfg = load_config(args.suite, overrides)
            run_dir = run(cfg, resume=args.resume, out_dir=args.out)
            print(f"results: {run_dir / 'results.csv'}")
            print(f"report:  {run_dir / 'report.html'}")
        elif args.command == "list":
            _list(args.kind, args.pattern)
        elif args.command == "report":
            from pathlib import Path

            from .report.html import render_run

            print(render_run(Path(args.run_dir), args.output, figures=args.figures))
        elif args.command == "compare":
            from .report.compare import render_compare

            print(render_compare(args.run_dirs, args.output, rel_tol=args.rel_tol, abs_tol=args.abs_tol))
        else:
            _parser().print_help()
            return 2
    except StfEvalError as exc:
        if args.verbose:  # the one-line message is for users; -v shows where it came from
            import traceback

            traceback.print_exc()
        print(f"stf-eval: error: {exc}", file=sys.stderr)
        return exc.exit_code
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
