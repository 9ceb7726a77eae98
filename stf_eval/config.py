"""Suite file (TOML) -> frozen, validated dataclasses.

Every error is one ConfigError line naming the file, the key and what is expected; nothing is
written before the whole file has been validated.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError
from .params import as_dict, parse_params, require
from .paths import check_name
from .registry import DATASETS, MODELS, NETS, SUITES

#: the most examples an OOD set may have (10^6 32x32x3 float32 images are ~12 GiB); the data plan
#: also checks the set's size against the memory it would take
MAX_OOD_SIZE = 1_000_000


@dataclass(frozen=True)
class OodSetConfig:
    """One out-of-distribution set: a dataset plugin, its group and how many examples to use."""

    dataset: str
    group: Literal["near", "far"] = "far"
    size: int = 1000
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        require(0 < self.size <= MAX_OOD_SIZE, "size", f"an integer in [1, {MAX_OOD_SIZE:,}]", self.size)


@dataclass(frozen=True)
class DataConfig:
    """The in-distribution dataset and its seeded train (members) / val / test (non-members) split."""

    dataset: str = "mnist5k"
    options: dict = field(default_factory=dict)
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    max_train: int = 0
    max_test: int = 0
    ood: dict = field(default_factory=dict)

    def check(self) -> None:
        require(0 <= self.split_seed < 2**32, "split_seed", "an integer in [0, 2^32)", self.split_seed)
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", "a number in [0, 1)", self.val_fraction)
        require(0.0 < self.test_fraction < 1.0, "test_fraction", "a number in (0, 1)", self.test_fraction)
        require(self.val_fraction + self.test_fraction < 1.0, "test_fraction",
                "val_fraction + test_fraction < 1", self.test_fraction)
        require(self.max_train >= 0, "max_train", "0 (all) or a positive integer", self.max_train)
        require(self.max_test >= 0, "max_test", "0 (all) or a positive integer", self.max_test)


@dataclass(frozen=True)
class NetConfig:
    """Network architecture: a registered net or a user callable ``package.module:function``."""

    arch: str = "lenet"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """The deterministic training recipe, shared by every model that trains a network."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["none", "cosine", "step"] = "cosine"
    eval_batch_size: int = 1000
    augment: tuple[str, ...] = ()  # on-the-fly augmentation of training batches: "crop", "flip"
    crop_padding: int = 4  # zero padding (pixels per side) of the random crop
    amp: Literal["none", "bf16"] = "none"  # bf16 autocast of training steps
    channels_last: bool = False  # NHWC memory format for conv nets (training and prediction)

    def check(self) -> None:
        bad = [a for a in self.augment if a not in ("crop", "flip")]
        require(not bad, "augment", 'a list of "crop", "flip"', list(self.augment))
        require(self.crop_padding >= 0, "crop_padding", "an integer >= 0", self.crop_padding)
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        require(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the plan's jobs run: in this process (or a pool of ``workers`` processes on this machine),
    or as Ray tasks (docs/scale-out.md)."""

    kind: Literal["local", "ray"] = "local"
    workers: int = 1  # local: processes running jobs and cells side by side (1 = all in this process)
    address: str = ""  # ray: "" starts a Ray instance on this machine, "auto" joins a running cluster
    cpus_per_job: float = 1.0  # ray: CPUs each training job and cell reserves
    gpus_per_job: float = 0.0  # ray: GPUs each reserves (0.25 packs four small nets on one GPU)
    num_cpus: int = 0  # ray: CPUs of the instance started on this machine (0 = all)
    max_retries: int = 1  # a failing job or cell is retried this many times, then reported
    storage: Literal["auto", "shared", "object_store"] = "auto"  # how weights reach the workers

    def check(self) -> None:
        require(self.workers >= 1, "workers", "an integer >= 1 (1 = run everything in this process)",
                self.workers)
        require(self.cpus_per_job > 0, "cpus_per_job", "a positive number", self.cpus_per_job)
        require(self.gpus_per_job >= 0, "gpus_per_job", "a number >= 0", self.gpus_per_job)
        require(self.num_cpus >= 0, "num_cpus", "0 (all) or a positive integer", self.num_cpus)
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)


@dataclass(frozen=True)
class PluginSpec:
    """A model or suite entry: its name in the file, the plugin it uses, and validated params."""

    name: str
    plugin: str
    params: Any

    def as_dict(self) -> dict:
        return {"plugin": self.plugin, **as_dict(self.params)}


def spec_of_plugin(models, plugin: str) -> PluginSpec | None:
    """The first of a run's model specs that uses ``plugin`` (None when the run has none)."""
    return next((spec for spec in models if spec.plugin == plugin), None)


@dataclass(frozen=True)
class RunConfig:
    name: str
    source: str
    seeds: tuple[int, ...]
    device: str
    output_dir: str
    cache_dir: str
    num_threads: int
    data: DataConfig
    ood: tuple[tuple[str, OodSetConfig], ...]
    net: NetConfig
    train: TrainConfig
    models: tuple[PluginSpec, ...]
    suites: tuple[PluginSpec, ...]
    description: str = ""
    executor: ExecutorConfig = ExecutorConfig()
    deterministic: bool = False
    figures: Literal["first-seed", "all", "none"] = "first-seed"  # which cells draw and save their figures
    allocator: Literal["reuse", "system"] = "reuse"  # glibc malloc in the run's own processes (allocator.py)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def saves_figures(self, seed: int) -> bool:
        """Whether the cells of ``seed`` draw and save their figures (figures = "first-seed": the smallest
        seed only, the ones the report embeds by default; the other seeds' would repeat them)."""
        return self.figures == "all" or (self.figures == "first-seed" and seed == min(self.seeds))

    def model(self, name: str) -> PluginSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise ConfigError(f"{self.source}: no model named {name!r}")


@dataclass(frozen=True)
class _TopLevel:
    name: str = ""
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    output_dir: str = ""
    cache_dir: str = ""
    num_threads: int = 0
    deterministic: bool = False
    figures: Literal["first-seed", "all", "none"] = "first-seed"
    allocator: Literal["reuse", "system"] = "reuse"
    data: dict = field(default_factory=dict)
    net: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    suites: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)

    def check(self) -> None:
        require(len(self.seeds) > 0, "seeds", "a non-empty list of integers", list(self.seeds))
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "distinct integers", list(self.seeds))
        dev = self.device
        require(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device",
                "'auto', 'cpu', 'cuda' or 'cuda:N'", dev)
        require(self.num_threads >= 0, "num_threads", "0 (torch default) or a positive integer",
                self.num_threads)


def default_cache_dir() -> str:
    return os.environ.get("STF_EVAL_CACHE") or str(Path.home() / ".cache" / "stf-eval")


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, lists, quoted strings); otherwise a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_key(key: str, item: str) -> list[str]:
    """A dotted TOML key as its parts: ``models."x.y".plugin`` -> ['models', 'x.y', 'plugin']."""
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        node = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--set {item!r}: {key!r} is not a valid TOML key ({exc})") from exc
    parts = []
    while isinstance(node, dict):
        (name, node), = node.items()
        parts.append(name)
    return parts


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        key, text = item.split("=", 1)
        parts = split_key(key, item)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a table in {source}")
            node = child
        node[parts[-1]] = parse_value(text.strip())
    return raw


def _plugin_specs(tables: dict, registry, kind: str, where: str) -> tuple[PluginSpec, ...]:
    specs = []
    for name, table in tables.items():
        key = f"{where}.{name}"
        check_name(name, f'{where}."{name}"')
        if not isinstance(table, dict):
            raise ConfigError(f"{key}: expected a table of {kind} parameters, got {table!r}")
        table = dict(table)
        plugin_name = table.pop("plugin", name)
        if not isinstance(plugin_name, str):
            raise ConfigError(f"{key}.plugin: expected a string, got {plugin_name!r}")
        try:
            plugin = registry.get(plugin_name)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
        params = parse_params(plugin.Params, table, key)
        specs.append(PluginSpec(name=name, plugin=plugin_name, params=params))
    return tuple(specs)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                text: str | None = None) -> RunConfig:
    """Read and validate a suite file (or ``text``); raise ConfigError naming the file on any problem."""
    source = str(path) if path is not None else "<string>"
    if text is None:
        from .shipped import find_suite

        p = find_suite(None if path is None else str(path))
        source = str(p)
        if p.is_dir():
            raise ConfigError(f"{source}: is a directory, not a suite file")
        if not p.is_file():
            raise ConfigError(f"{source}: suite file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the suite file: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: malformed TOML: {exc}") from exc
    try:
        return _build(raw, source, list(overrides or []))
    except ConfigError as exc:
        msg = str(exc)
        if not msg.startswith(source):
            msg = f"{source}: {msg}"
        raise ConfigError(msg) from exc


def _build(raw: dict, source: str, overrides: list[str]) -> RunConfig:
    raw = apply_overrides(raw, overrides, source)
    top = parse_params(_TopLevel, raw, "top level")
    data_table = dict(top.data)
    data = parse_params(DataConfig, data_table, "data")
    try:
        dataset_cls = DATASETS.get(data.dataset)
    except ConfigError as exc:
        raise ConfigError(f"data.dataset: {exc}") from exc
    parse_params(dataset_cls.Params, data.options, "data.options")  # options checked before any work
    ood = []
    for set_name, table in data.ood.items():
        where = f"data.ood.{set_name}"
        check_name(set_name, f'data.ood."{set_name}"')
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {table!r}")
        oc = parse_params(OodSetConfig, table, where)
        try:
            ood_cls = DATASETS.get(oc.dataset)
        except ConfigError as exc:
            raise ConfigError(f"{where}.dataset: {exc}") from exc
        parse_params(ood_cls.Params, oc.options, f"{where}.options")
        ood.append((set_name, oc))
    net = parse_params(NetConfig, top.net, "net")
    if ":" not in net.arch:
        try:
            builder = NETS.get(net.arch)
        except ConfigError as exc:
            raise ConfigError(f"net.arch: {exc}") from exc
        net_params = getattr(builder, "Params", None)
        if net_params is not None:  # a registered net validates its options through its own Params
            parse_params(net_params, net.options, "net.options")
    train = parse_params(TrainConfig, top.train, "train")
    executor = parse_params(ExecutorConfig, top.executor, "executor")
    models = _plugin_specs(top.models, MODELS, "model", "models")
    suites = _plugin_specs(top.suites, SUITES, "suite", "suites")
    if not models:
        raise ConfigError("models: expected at least one [models.NAME] table")
    for spec in suites:
        missing = [s for s in getattr(spec.params, "sanity_check_seeds", ()) if s not in top.seeds]
        if missing:
            raise ConfigError(f"suites.{spec.name}.sanity_check_seeds: {missing} not in seeds {list(top.seeds)} "
                              f"(no cell would run the checks)")
    if top.name:
        name = check_name(top.name, "name")
    else:
        name = Path(source).stem
        check_name(name, "name (taken from the file name; set name = \"...\" in the file)")
    return RunConfig(
        name=name,
        source=source,
        description=top.description,
        seeds=tuple(top.seeds),
        device=top.device,
        output_dir=top.output_dir or str(Path("runs") / name),
        cache_dir=top.cache_dir or default_cache_dir(),
        num_threads=top.num_threads,
        deterministic=top.deterministic,
        figures=top.figures,
        allocator=top.allocator,
        data=data,
        ood=tuple(ood),
        net=net,
        train=train,
        models=models,
        suites=suites,
        executor=executor,
        raw=raw,
    )


def resolved_dict(cfg: RunConfig) -> dict:
    """The fully resolved configuration (defaults filled in), for the run directory and the report."""
    return {
        "name": cfg.name,
        "description": cfg.description,
        "source": cfg.source,
        "seeds": list(cfg.seeds),
        "device": cfg.device,
        "output_dir": cfg.output_dir,
        "cache_dir": cfg.cache_dir,
        "num_threads": cfg.num_threads,
        "deterministic": cfg.deterministic,
        "figures": cfg.figures,
        "allocator": cfg.allocator,
        "data": {k: v for k, v in as_dict(cfg.data).items() if k != "ood"},
        "ood": {name: as_dict(oc) for name, oc in cfg.ood},
        "net": as_dict(cfg.net),
        "train": as_dict(cfg.train),
        "models": {s.name: s.as_dict() for s in cfg.models},
        "suites": {s.name: s.as_dict() for s in cfg.suites},
        "executor": as_dict(cfg.executor),
    }


def replace(cfg: RunConfig, **changes) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
