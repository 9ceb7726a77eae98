"""The Python API: ``evaluate`` a user's models in a notebook, ``load_run`` a finished run.

``evaluate`` builds the same validated configuration a suite file gives (``config``), runs it with the
same runner as ``stf-eval run`` (``runner.run``) and returns a :class:`Run`, the typed view of a run
directory that ``load_run`` also returns. Live objects (networks, samplers, tensors) reach the runner
through ``stf_eval.inprocess``: the configuration names them by a ``ref`` and the adapter plugins
(``stf_eval.models.adapters``, ``stf_eval.data.in_memory``) look them up. See docs/api.md.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:  # imported lazily at run time: `import stf_eval` stays cheap
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from .data.base import DataBundle

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


# -- model specs --------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """A model entry for ``evaluate(models=...)``: a plugin table plus the live object it needs."""

    plugin: str
    params: dict = field(default_factory=dict)
    obj: Any = None  # registered under params["ref"] for the run

    def table(self) -> dict:
        return {"plugin": self.plugin, **self.params}


def module(net: nn.Module) -> ModelSpec:
    """A deterministic model from any ``nn.Module`` mapping images in [0, 1] to logits [B, C]."""
    from torch import nn

    from .models.adapters import module_digest

    if not isinstance(net, nn.Module):
        raise ConfigError(f"module(): expected an nn.Module, got {type(net).__name__}")
    return ModelSpec("torch_module", {"ref": "module-" + module_digest(net)}, net)


def sampler(fn: Callable, samples: int = 8, modules: Sequence[nn.Module] = ()) -> ModelSpec:
    """A stochastic model from ``fn(x, S) -> logits [S, B, C]`` (S fresh samples per call).

    ``samples``: S drawn per prediction at evaluation. ``modules``: the networks ``fn`` uses (for
    parameter counts and device moves; found automatically when ``fn`` is a module or a bound method
    of one).
    """
    from torch import nn

    if not callable(fn):
        raise ConfigError(f"sampler(): expected a function fn(x, S), got {type(fn).__name__}")
    mods = list(modules)
    if not mods:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            mods = [owner]
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    entry = {"fn": fn, "modules": mods}
    return ModelSpec("torch_sampler", {"ref": f"sampler-{name}-{id(fn):x}", "test_samples": int(samples)}, entry)


def ensemble(nets: Sequence[nn.Module]) -> ModelSpec:
    """An ensemble from a list of ``nn.Module``: the members' logits are the S = M samples."""
    from torch import nn

    from .models.adapters import module_digest

    nets = list(nets)
    if len(nets) < 2 or not all(isinstance(n, nn.Module) for n in nets):
        raise ConfigError("ensemble(): expected a list of at least two nn.Module")
    return ModelSpec("torch_ensemble", {"ref": "ensemble-" + "+".join(module_digest(n)[-8:] for n in nets)}, nets)


def pretrained(path: str | os.PathLike, arch: str = "", options: Mapping | None = None,
               strict: bool = True) -> ModelSpec:
    """A model from a saved state dict loaded into a registered net (default: the run's ``net``)."""
    params = {"path": str(path), "arch": arch, "options": dict(options or {}), "strict": strict}
    return ModelSpec("pretrained", params)


ModelLike = Union[str, Mapping, ModelSpec, "nn.Module", Sequence, Callable]


def as_model_spec(name: str, value: ModelLike) -> ModelSpec:
    """Turn one ``models`` value into a ModelSpec (plugin name, table, object or adapter spec)."""
    from torch import nn

    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        return ModelSpec(value)
    if isinstance(value, Mapping):
        table = dict(value)
        return ModelSpec(str(table.pop("plugin", name)), table)
    if isinstance(value, nn.Module):
        return module(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, nn.Module) for v in value):
        return ensemble(value)
    if callable(value):
        return sampler(value)
    raise ConfigError(f"models.{name}: expected a plugin name, a table, an nn.Module, a list of modules or a "
                      f"sampler fn(x, S); got {type(value).__name__}")


# -- data ---------------------------------------------------------------------------------------------
def _as_tensors(x, y) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check and convert user images and labels; one DataError line on anything the models cannot use."""
    import numpy as np
    import torch

    from .data.base import check_images
    from .errors import DataError

    try:
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"data: (x, y) must be arrays or tensors: {exc}") from exc
    if not xt.is_floating_point():
        raise DataError(f"data: x must hold floating-point images in [0, 1], got dtype {xt.dtype}")
    if xt.ndim == 3:  # [N, H, W]: one channel
        xt = xt.unsqueeze(1)
    xt = xt.float().contiguous()
    check_images(xt, "data x")
    if yt.ndim != 1 or yt.shape[0] != xt.shape[0]:
        raise DataError(f"data: y must be a 1-D vector of {xt.shape[0]} labels, got shape {list(yt.shape)}")
    if yt.is_floating_point():
        if not torch.isfinite(yt).all() or not torch.equal(yt, yt.round()):
            raise DataError("data: y must hold integer class labels (found NaN or fractional values)")
    yt = yt.long()
    if len(yt) == 0 or int(yt.min()) < 0:
        raise DataError("data: y must hold class labels 0..C-1 (found a negative label or no examples)")
    return xt, yt, int(yt.max()) + 1


# -- evaluate -----------------------------------------------------------------------------------------
def _read_suite_file(suites: str) -> tuple[dict, str]:
    path = Path(suites)
    if not path.is_file():
        shipped = SUITES_DIR / f"{suites}.toml"
        if shipped.is_file():
            path = shipped
        else:
            known = sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
            raise ConfigError(f"suites: {suites!r} is neither a suite file nor a shipped suite "
                              f"(shipped: {', '.join(known)})")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), str(path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc


def _merge(base: dict, extra: Mapping | None) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) \
            else copy.deepcopy(value)
    return out


@dataclass
class _Plan:
    """A validated configuration plus the live objects it refers to."""

    cfg: Any
    objects: dict
    bundle: Any


def _plan(models, data, suites, seeds, out, split, ood, net, train, name, description, device, cache_dir,
          num_threads, overrides) -> _Plan:
    from .config import _build

    # 1. the base: a suite file, or suite tables on defaults
    if isinstance(suites, str):
        raw, source = _read_suite_file(suites)
        default_name = Path(source).stem
    elif isinstance(suites, Mapping):
        raw, source, default_name = {"suites": {k: dict(v or {}) for k, v in suites.items()}}, "evaluate()", \
            "evaluate"
    elif isinstance(suites, Sequence) and all(isinstance(s, str) for s in suites):
        raw, source, default_name = {"suites": {s: {} for s in suites}}, "evaluate()", "evaluate"
    else:
        raise ConfigError(f"suites: expected a suite file name, suite tables or a list of suite names, got "
                          f"{type(suites).__name__}")
    raw = copy.deepcopy(raw)

    # 2. models: live objects are registered for the run under their refs
    objects: dict[str, Any] = {}
    if models is not None:
        if not isinstance(models, Mapping) or not models:
            raise ConfigError("models: expected a non-empty mapping name -> model")
        raw["models"] = {}
        for model_name, value in models.items():
            spec = as_model_spec(str(model_name), value)
            if spec.obj is not None:
                objects[spec.params["ref"]] = spec.obj
            raw["models"][str(model_name)] = spec.table()
    elif not raw.get("models"):
        raise ConfigError("models: nothing to evaluate (pass models={name: model, ...})")

    # 3. data
    bundle = None
    data_table = dict(raw.get("data", {}))
    if data is None:
        pass
    elif isinstance(data, str):
        if data != data_table.get("dataset"):
            data_table.pop("options", None)  # the file's options belong to its own dataset
        data_table["dataset"] = data
    elif isinstance(data, Mapping):
        data_table = _merge(data_table, data)
    elif isinstance(data, tuple) and len(data) == 2:
        x, y, k = _as_tensors(*data)
        from .inprocess import tensor_digest

        ref = f"xy-{tensor_digest(x, y)}"
        objects[ref] = (x, y, k)
        data_table.pop("options", None)
        data_table.update(dataset="in_memory", options={"ref": ref})
    else:
        from .data.base import DataBundle

        if not isinstance(data, DataBundle):
            raise ConfigError(f"data: expected a dataset name, a [data] table, a DataBundle or (x, y), got "
                              f"{type(data).__name__}")
        if ood or split:
            raise ConfigError("data: a DataBundle is already split and carries its own OOD sets; build it with "
                              "stf_eval.load_data(..., split=, ood=) instead of passing split= or ood= here")
        bundle = data
        data_table = {"dataset": "in_memory", "options": {"ref": f"bundle-{data.name}"},
                      "split_seed": data.split_seed}
    if split:
        data_table = _merge(data_table, split)
    if ood is not None:
        data_table["ood"] = {k: dict(v) for k, v in ood.items()}
    raw["data"] = data_table

    # 4. the rest of the file's keys
    if net:
        raw["net"] = _merge(raw.get("net", {}), net)
    if train:
        raw["train"] = _merge(raw.get("train", {}), train)
    if seeds is not None:
        raw["seeds"] = [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]
    for key, value in (("name", name), ("description", description), ("device", device),
                       ("cache_dir", cache_dir), ("num_threads", num_threads)):
        if value is not None:
            raw[key] = value
    raw.setdefault("name", default_name)
    if out is not None:
        raw["output_dir"] = str(out)

    from .inprocess import registered

    with registered(objects):
        try:
            cfg = _build(raw, source, list(overrides))
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from exc
    return _Plan(cfg, objects, bundle)


def evaluate(models: Mapping[str, ModelLike] | None = None,
             data: str | Mapping | DataBundle | tuple | None = None,
             suites: str | Mapping[str, Mapping] | Sequence[str] = "quick",
             seeds: int | Sequence[int] | None = None,
             out: str | os.PathLike | None = None, *,
             split: Mapping | None = None,
             ood: Mapping[str, Mapping] | None = None,
             net: Mapping | None = None,
             train: Mapping | None = None,
             name: str | None = None,
             description: str | None = None,
             device: str | None = None,
             cache_dir: str | None = None,
             num_threads: int | None = None,
             overrides: Sequence[str] = (),
             resume: bool = False,
             render: bool = True,
             executor=None) -> Run:
    """Evaluate ``models`` with ``suites`` on ``data``; write the run to ``out``; return the :class:`Run`.

    models: name -> a plugin name (``"mc_dropout"``), a table (``{"plugin": "mc_dropout", "p": 0.2}``),
        an ``nn.Module`` (deterministic), a list of modules (an ensemble), a sampler ``fn(x, S)``
        (stochastic), or an adapter spec (``module``, ``sampler``, ``ensemble``, ``pretrained``).
        None: the suite file's own models.
    data: a registered dataset name (``"digits"``, ``"mnist5k"``), a ``[data]`` table, a split
        ``DataBundle`` from ``load_data`` (with its OOD sets), or ``(x, y)``: images [N, C, H, W] in
        [0, 1] and integer labels, split with a seeded stratified split. None: the suite file's data.
    suites: a shipped suite file name (``"quick"``, ``"smoke"``) or a path - its data, OOD sets, net,
        train recipe and suite settings are the base, ``models`` replaces its models - or suite tables
        ``{"calibration": {...}, "ood": {}}`` / a list of suite names (defaults for everything else).
    seeds, split (``split_seed``, ``val_fraction``, ``test_fraction``, ``max_train``, ``max_test``),
    ood (``[data.ood]`` tables), net, train, name, description, device, cache_dir, num_threads: as the
        suite file keys of the same names (docs/api.md); ``overrides``: ``"key=value"`` strings as ``--set``.
    resume: reuse finished (model, seed) cells of ``out`` whose configuration is unchanged.
    render: write report.html. executor: as ``runner.run`` (in-process objects need the local one).
    """
    from .inprocess import registered
    from .runner import run

    plan = _plan(models, data, suites, seeds, out, split, ood, net, train, name, description, device,
                 cache_dir, num_threads, overrides)
    if (plan.objects or plan.bundle is not None) and executor is not None and \
            type(executor).__name__ != "LocalExecutor":
        raise ConfigError("executor: in-process networks, samplers and tensors only run on the local executor "
                          "(a worker process cannot see them); use pretrained() weights files and registered "
                          "datasets to scale out")
    cfg = plan.cfg
    if plan.objects and getattr(getattr(executor, "config", None), "workers", 1) > 1:
        raise ConfigError("executor: in-process networks, samplers and tensors only run in this process "
                          "(a worker process cannot see them); use workers = 1")
    if plan.objects and executor is None and cfg.executor.workers > 1:
        # a suite file's pool of workers cannot see the objects: this run evaluates them in this process
        from dataclasses import replace

        logging.getLogger("stf_eval").info("in-process objects: every job and cell runs in this process "
                                           "(executor.workers = 1)")
        cfg = replace(cfg, executor=replace(cfg.executor, workers=1))
    with registered(plan.objects):
        run_dir = run(cfg, resume=resume, out_dir=str(out) if out is not None else None,
                      executor=executor, render=render, data=plan.bundle)
    return Run(run_dir)


def load_data(data: str | Mapping | tuple = "digits", *, split: Mapping | None = None,
              ood: Mapping[str, Mapping] | None = None, suites: str | Mapping | Sequence[str] = ()) -> DataBundle:
    """The seeded train / val / test split (and OOD sets) a run would use, as a ``DataBundle``.

    Train your own network on ``bundle.train`` (the members), then pass ``data=bundle`` to ``evaluate``:
    the run evaluates on exactly this split. ``suites``: a suite file whose ``[data]`` is the base.
    """
    from .data.plan import build_data
    from .inprocess import registered

    plan = _plan({"_": "deterministic"}, data, suites, None, None, split, ood, None, None, None, None, None,
                 None, None, ())
    with registered(plan.objects):
        return build_data(plan.cfg)


# -- Run ----------------------------------------------------------------------------------------------
class Run:
    """A finished run directory: tidy results, verdicts, notes, report and per-example arrays."""

    def __init__(self, path: str | os.PathLike):
        from .report.load import load_run as _load

        self.path = Path(path)
        self._data = _load(self.path)  # RunDirError (one line) if it is not a finished run
        self._frame = None

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}: {len(self.models)} model(s) x {len(self.seeds)} seed(s), "
                f"{len(self._data.records)} records)")

    # -- what the run holds -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._data.name

    @property
    def models(self) -> list[str]:
        return self._data.models()

    @property
    def seeds(self) -> list[int]:
        return self._data.seeds

    @property
    def config(self) -> dict:
        return self._data.config

    @property
    def splits(self) -> dict:
        """splits.json: the source indices of train / val / test (per-example indices point into them)."""
        return self._data.splits

    @property
    def results(self) -> pd.DataFrame:
        """The tidy records: one row per (model, suite, dataset, setting, metric, seed); empty settings ''."""
        if self._frame is None:
            from .report.load import records_frame

            self._frame = records_frame(self._data)
        return self._frame.copy()

    @property
    def notes(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame.from_records(self._data.results.get("notes", []),
                                         columns=["model", "suite", "seed", "text"])

    @property
    def cells(self) -> list[dict]:
        """Per (model, seed): plugin, parameters, capabilities, efficiency figures, seconds."""
        return self._data.cells

    # -- verdicts and report ----------------------------------------------------------------------
    def claims(self) -> list:
        """The report's verdict on each claim of the STF-BNN paper (report.verdict.Claim objects)."""
        from .report.headline import headlines
        from .report.verdict import claims_for

        df = self._frame if self._frame is not None else self.results
        return claims_for(self._data, df, headlines(df, self._data), self.models)

    @property
    def verdicts(self) -> pd.DataFrame:
        """One row per claim: number, title, verdict, reason and the better / tie / worse counts."""
        import pandas as pd

        rows = [{"claim": c.number, "title": c.title, "verdict": c.verdict, "reason": c.reason,
                 **c.counts} for c in self.claims()]
        return pd.DataFrame(rows, columns=["claim", "title", "verdict", "reason", "better", "tie", "worse"])

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def report(self, out: str | os.PathLike | None = None, figures: str = "first-seed") -> Path:
        """(Re-)render the HTML report from the saved records; return its path."""
        from .report.html import render_run

        return render_run(self.path, out, figures=figures)

    # -- per-example arrays -------------------------------------------------------------------------
    def example_files(self) -> pd.DataFrame:
        """Every per-example file: suite, model, seed, path and size in bytes."""
        import pandas as pd

        from .examples import EXAMPLES_DIR

        rows = []
        for path in sorted((self.path / EXAMPLES_DIR).glob("*.npz")):
            parts = path.stem.split("--")
            if len(parts) == 3 and parts[2].startswith("seed"):
                rows.append({"suite": parts[0], "model": parts[1], "seed": int(parts[2][4:]),
                             "path": str(path), "bytes": path.stat().st_size})
        return pd.DataFrame(rows, columns=["suite", "model", "seed", "path", "bytes"])

    def examples(self, suite: str, model: str, seed: int | None = None) -> dict[str, np.ndarray]:
        """The arrays one suite saved for one (model, seed): {key: array}; keys in docs/records.md.

        ``seed`` may be left out when the run has one seed.
        """
        from .examples import load_examples
        from .report.load import RunDirError

        if seed is None:
            if len(self.seeds) != 1:
                raise ConfigError(f"examples(): the run has seeds {self.seeds}; pass seed=")
            seed = self.seeds[0]
        got = load_examples(self.path, suite=suite, model=model, seed=seed)
        if not got:
            files = self.example_files()
            have = ", ".join(f"{r.suite}/{r.model}/seed{r.seed}" for r in files.itertuples()) or "none"
            raise RunDirError(f"{self.path}: no per-example arrays for suite {suite!r}, model {model!r}, seed "
                              f"{seed} (saved: {have})")
        return got[(suite, model, seed)]

    def example_frame(self, suite: str, model: str, seed: int | None = None, prefix: str = "") -> pd.DataFrame:
        """The arrays under ``prefix`` that share one leading length N as one DataFrame of N rows.

        1-D arrays become columns named by their key (``prefix`` removed); 2-D arrays [N, K] become K
        columns ``key/0`` ... ``key/K-1``. Arrays of another length under the same prefix are an error:
        narrow the prefix (e.g. ``test/`` or ``ood/noise/``).
        """
        import pandas as pd

        arrays = {k[len(prefix):]: v for k, v in self.examples(suite, model, seed).items() if k.startswith(prefix)}
        if not arrays:
            raise ConfigError(f"example_frame(): no key starts with {prefix!r}")
        lengths = {k: v.shape[0] if v.ndim else None for k, v in arrays.items()}
        n = next((lengths[k] for k, v in arrays.items() if v.ndim == 1), next(iter(lengths.values())))
        odd = sorted(k for k, v in arrays.items() if v.ndim not in (1, 2) or lengths[k] != n)
        if odd:
            raise DataError(f"example_frame(): {', '.join(prefix + k for k in odd[:6])} do not have {n} rows; "
                            f"narrow the prefix")
        cols = {}
        for key, arr in arrays.items():
            if arr.ndim == 1:
                cols[key] = arr
            else:
                for j in range(arr.shape[1]):
                    cols[f"{key}/{j}"] = arr[:, j]
        return pd.DataFrame(cols)


def load_run(path: str | os.PathLike) -> Run:
    """Open a finished run directory (written by ``evaluate`` or ``stf-eval run``)."""
    return Run(path)
