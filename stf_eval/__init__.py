"""stf-eval: robustness, calibration, OOD and privacy evaluation of uncertainty-aware deep learning.

The Python API (docs/api.md) is imported on first use, so ``import stf_eval`` stays cheap::

    import stf_eval
    run = stf_eval.evaluate(models={"mine": my_net}, data="digits", suites={"calibration": {}})
    run.results            # tidy pandas DataFrame
    run = stf_eval.load_run("runs/evaluate")
"""

__version__ = "0.1.0"

_API = ("evaluate", "load_run", "load_data", "Run", "ModelSpec", "module", "sampler", "ensemble", "pretrained")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'stf_eval' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
