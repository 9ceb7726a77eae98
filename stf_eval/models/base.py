"""The prediction contract every model plugin follows, and what building a model needs.

A model plugin stores its hyper-parameters at construction, is fitted with ``fit(data)``, and then
exposes:

* ``sample_logits(x, S)`` -> Tensor[S, B, C], differentiable (the one method a plugin must write);
* ``predict_samples(x)`` -> Tensor[S, N, C] on the CPU, no grad, batched, with the evaluation S;
* ``predictive(S)`` -> an ``nn.Module`` mapping x to log(mean_s softmax(logits_s)): the deployed
  predictive that attacks and membership attackers query. For a stochastic model each call draws S
  fresh samples: a Monte-Carlo average over S samples (expectation over transformation estimated
  with S samples per call, not a closed form).

Sampling never depends on ``train()``/``eval()``: attack libraries call ``eval()`` and stochastic
models must keep sampling; batch-norm always uses its running statistics at evaluation.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cache import CheckpointCache, cache_key
from ..config import NetConfig, PluginSpec, TrainConfig
from ..data.base import DataBundle
from ..device import numerics
from ..errors import TrainingDiverged
from ..nets.common import build_net
from ..params import NoParams, as_dict
from ..profiling import measure_train_step, peak_memory
from ..seeding import seeded_all
from ..training import StepOptions, as_input_format, prepare_net, stage, train_deterministic


@dataclass
class BuildContext:
    """What a model needs besides its own parameters: the shared recipe, device, seed and cache."""

    spec: PluginSpec
    net: NetConfig
    train: TrainConfig
    device: torch.device
    seed: int
    cache: CheckpointCache
    #: True while a plan records stages or a job trains one stage: ``fit`` skips work outside stages
    stages_only = False
    #: measure each trained stage's step memory in isolation (efficiency suite; a fresh process on CPU)
    #: (default on; STF_EVAL_STEP_MEMORY=0 turns it off, as the test suite does for speed)
    measure_step_memory: bool = field(default_factory=lambda: os.environ.get("STF_EVAL_STEP_MEMORY", "1") != "0")

    def new_net(self, data: DataBundle) -> nn.Module:
        return build_net(self.net, data.input_shape, data.num_classes, data.mean, data.std)

    def key_spec(self, data: DataBundle, **extra: Any) -> dict:
        """The parts of a cache key common to all trained weights: net, recipe, data, seed, and the
        device type and numerics that change trained weights (torch version; on CUDA the TF32 and
        deterministic flags), so weights trained on one device are never loaded as another's."""
        return {"net": as_dict(self.net), "train": as_dict(self.train), "data": data.train.fingerprint,
                "num_classes": data.num_classes, "seed": self.seed, "numerics": numerics(self.device), **extra}

    def cached(self, spec: dict, net: nn.Module, train_fn) -> tuple[float, bool, dict]:
        """Load ``net`` from the cache or train it with ``train_fn() -> (seconds, meta)`` and store it.

        Returns (training seconds as originally measured, whether it came from the cache, metadata).
        Training runs under the key's file lock (a concurrent run waits, then loads) and on torch's,
        numpy's and Python's global generators seeded from (seed, what is trained) and restored
        afterwards: the weights never depend on what ran before, and nothing after the stage depends
        on whether it was trained or loaded.
        Measured while training and kept with the weights (so a warm cache reports the same figures):
        wall seconds, seconds of every epoch (``epoch_seconds``) at ``threads`` torch threads, peak
        memory of the stage with its method, and the peak memory of one training step measured in
        isolation (``train_step_peak_memory_mb``, profiling.measure_train_step). Every model is
        measured from the same point: its network already on the device.
        """
        stage_name = str(spec.get("kind", "stage"))
        purpose = json.dumps(spec, sort_keys=True, default=str)

        def seeded_train():
            with seeded_all(int(spec.get("seed", self.seed)), "stage", purpose, device=self.device):
                try:
                    out = train_fn()
                except (FloatingPointError, OverflowError) as exc:
                    raise TrainingDiverged(f"training stage {stage_name!r} diverged ({exc}); lower its learning "
                                           "rate") from exc
                except RuntimeError as exc:  # an update too large for float32 (e.g. lr = 1e300)
                    if "overflow" not in str(exc):
                        raise
                    raise TrainingDiverged(f"training stage {stage_name!r} diverged (an update overflowed float32: "
                                           f"{exc}); lower its learning rate") from exc
            if not all(torch.isfinite(p).all() for p in net.parameters()):
                raise TrainingDiverged(f"training stage {stage_name!r} diverged (non-finite weights); lower its "
                                       "learning rate")
            return out

        with self.cache.lock(cache_key(spec)):
            return self._cached(spec, net, seeded_train)

    def _cached(self, spec: dict, net: nn.Module, train_fn) -> tuple[float, bool, dict]:
        key = cache_key(spec)
        options = StepOptions.of(self.train)
        meta = self.cache.load(key, net)
        if meta is not None:
            prepare_net(net, self.device, options).eval()
            return float(meta.get("seconds", 0.0)), True, meta
        prepare_net(net, self.device, options)
        with stage(self.train) as log, peak_memory(self.device) as mem:
            seconds, meta = train_fn()
        meta = {**(meta or {}), "seconds": seconds, "peak_memory_mb": mem.mb, "memory_method": mem.method,
                "epoch_seconds": list(log.epoch_seconds), "threads": torch.get_num_threads(),
                "device": self.device.type}
        step = (meta.pop("train_step", None) or log.step) if self.measure_step_memory else None
        log.step = None
        if step is not None:
            measured = measure_train_step(step, self.device)
            meta.update({"train_step_peak_memory_mb": measured.get("mb"),
                         "train_step_memory_method": measured.get("method"),
                         "train_step_batch": measured.get("batch")})
        meta.pop("train_step", None)
        self.cache.save(key, net, spec, meta)
        prepare_net(net, self.device, options).eval()
        return seconds, False, meta


def pretrained_base(ctx: BuildContext, data: DataBundle, seed: int | None = None) -> tuple[nn.Module, dict]:
    """Stage 1 shared by several models: the deterministic network trained with the file's recipe.

    Keyed without the model's own name, so deterministic, stf_bnn, last_layer_bnn, temperature_scaled
    and the first ensemble member share one trained network per (data, recipe, seed).
    """
    seed = ctx.seed if seed is None else seed
    torch.manual_seed(seed)
    net = ctx.new_net(data)
    spec = {**ctx.key_spec(data), "seed": seed, "kind": "deterministic"}

    def train():
        return train_deterministic(net, data.train, ctx.train, ctx.device, seed, desc=f"train base s{seed}"), {}

    seconds, cached, meta = ctx.cached(spec, net, train)
    return net, {**meta, "seconds": seconds, "cached": cached}


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(mean_s softmax(logits_s)) over the sample axis 0, computed stably."""
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


class PredictiveModule(nn.Module):
    """The deployed predictive as a module: x -> log of the mean softmax over S samples.

    Its output is a log-probability vector; cross-entropy on it is the NLL of the predictive mean,
    which is what FGSM/PGD maximise. ``eval()`` on it changes nothing about sampling.
    """

    def __init__(self, model: ModelPlugin, n_samples: int):
        super().__init__()
        self.model = model
        self.n_samples = n_samples
        # registered so .to()/.eval() reach the networks (sampling stays on regardless of mode)
        self.nets = nn.ModuleList(model.networks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_softmax(self.model.sample_logits(x, self.n_samples))


@dataclass
class Capabilities:
    stochastic: bool
    differentiable: bool = True
    n_samples: int = 1
    notes: dict = field(default_factory=dict)
    #: False for models supplied already trained (adapters): no recipe to repeat for reference models
    retrainable: bool = True


class ModelPlugin:
    """Base class. Subclasses set ``Params`` and implement ``fit`` and ``sample_logits``."""

    Params = NoParams
    stochastic = False
    #: parameter overrides that make this model cheap enough for the test matrix (tests/test_matrix.py)
    tiny: dict = {}

    def __init__(self, params, ctx: BuildContext):
        self.params = params if params is not None else self.Params()
        self.ctx = ctx
        self.device = ctx.device
        self.train_seconds: dict[str, float] = {}
        self.from_cache: dict[str, bool] = {}
        self.peak_memory_mb: dict[str, float] = {}
        self.memory_method: dict[str, str] = {}  # per stage: stages may come from different devices
        self.epoch_seconds: dict[str, list[float]] = {}
        self.step_memory_mb: dict[str, float] = {}
        self.step_memory_method: dict[str, str] = {}
        self.stage_info: dict[str, dict] = {}  # per stage: device and threads it was trained with
        self.extra_records: list[dict] = []  # model-specific figures for the efficiency suite etc.

    # -- to implement -------------------------------------------------------------------------
    def fit(self, data: DataBundle) -> ModelPlugin:
        raise NotImplementedError

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Differentiable logits of ``n_samples`` draws, shape [S, B, C]."""
        raise NotImplementedError

    def networks(self) -> list[nn.Module]:
        """The modules holding this model's weights (for .to(), counting and efficiency)."""
        raise NotImplementedError

    # -- common -------------------------------------------------------------------------------
    def record_stage(self, stage: str, meta: dict) -> None:
        """Keep a training stage's seconds, peak memory and cache status (meta from BuildContext.cached).

        Figures of a stage loaded from the cache are those measured when it was trained.
        """
        self.train_seconds[stage] = float(meta.get("seconds", 0.0))
        self.from_cache[stage] = bool(meta.get("cached", False))
        if "peak_memory_mb" in meta:
            self.peak_memory_mb[stage] = float(meta["peak_memory_mb"])
            self.memory_method[stage] = str(meta.get("memory_method", ""))
        if meta.get("epoch_seconds"):
            self.epoch_seconds[stage] = [float(t) for t in meta["epoch_seconds"]]
        if meta.get("train_step_peak_memory_mb") is not None:
            self.step_memory_mb[stage] = float(meta["train_step_peak_memory_mb"])
        if meta.get("train_step_memory_method"):
            self.step_memory_method[stage] = str(meta["train_step_memory_method"])
        self.stage_info[stage] = {k: meta[k] for k in ("device", "threads", "train_step_batch") if k in meta}

    def run_stage(self, stage: str, spec: dict, net: nn.Module, train_fn) -> nn.Module:
        """Load ``net`` from the cache or train it with ``train_fn() -> (seconds, meta)``; record the stage."""
        seconds, cached, meta = self.ctx.cached(spec, net, train_fn)
        self.record_stage(stage, {**meta, "seconds": seconds, "cached": cached})
        return net

    @property
    def n_samples(self) -> int:
        """Samples S drawn at evaluation (1 for a deterministic model)."""
        return int(getattr(self.params, "test_samples", 1)) if self.stochastic else 1

    def capabilities(self) -> Capabilities:
        return Capabilities(stochastic=self.stochastic, differentiable=True, n_samples=self.n_samples)

    @torch.no_grad()
    def predict_samples(self, x: torch.Tensor, n_samples: int | None = None,
                        batch_size: int | None = None) -> torch.Tensor:
        """Logits [S, N, C] (float32, on the CPU) for all of ``x``, in batches, without gradients."""
        s = n_samples or self.n_samples
        bs = batch_size or self.prediction_batch_size(s)
        out = []
        options = StepOptions.of(self.ctx.train)
        for start in range(0, x.shape[0], bs):
            xb = as_input_format(x[start:start + bs].to(self.device, non_blocking=True), options)
            out.append(self.sample_logits(xb, s).float().cpu())
        return torch.cat(out, dim=1)

    def prediction_batch_size(self, n_samples: int, gradient: bool = False) -> int:
        """Examples per batch when drawing ``n_samples`` samples in one S-fold expanded pass.

        The expanded batch (S x examples rows) is kept to the device's row cap
        (``bayes.sampling.max_expanded_rows``: about 512 rows on CPU, where larger ones spill out of
        cache and cost more than they save, measured in benchmarks/mc_prediction_vs_deterministic.py;
        far more on a GPU). ``gradient``: the batch of a differentiated pass (an attack's), whose
        activations all stay alive for backward: 256 rows on CPU.
        """
        from ..bayes.sampling import max_expanded_rows

        eval_bs = self.ctx.train.eval_batch_size
        if n_samples <= 1:
            return eval_bs
        rows = min(eval_bs * n_samples, max_expanded_rows(self.device, gradient))
        return max(1, rows // n_samples)

    def predictive(self, n_samples: int | None = None) -> PredictiveModule:
        return PredictiveModule(self, n_samples or self.n_samples).eval()

    def trainable_params(self) -> int:
        """Parameters optimised by the model's own (last) training stage."""
        return sum(count_trainable(n) for n in self.networks())

    def distribution_params(self) -> int:
        """Parameters of variational distributions (mu and rho); 0 for point-estimate models."""
        return 0

    def total_params(self) -> int:
        return sum(sum(p.numel() for p in n.parameters()) for n in self.networks())

    def forward_passes_per_prediction(self) -> int:
        return self.n_samples

    def efficiency(self) -> dict[str, Any]:
        return {
            "trainable_params": self.trainable_params(),
            "distribution_params": self.distribution_params(),
            "total_params": self.total_params(),
            "forward_passes_per_prediction": self.forward_passes_per_prediction(),
            "train_seconds": dict(self.train_seconds),
            "peak_memory_mb": dict(self.peak_memory_mb),
            "memory_method": dict(self.memory_method),
            "from_cache": dict(self.from_cache),
            "epoch_seconds": {k: list(v) for k, v in self.epoch_seconds.items()},
            "train_step_peak_memory_mb": dict(self.step_memory_mb),
            "train_step_memory_method": dict(self.step_memory_method),
            "stage_info": {k: dict(v) for k, v in self.stage_info.items()},
        }

    def deterministic_base(self) -> nn.Module | None:
        """The deterministic network this model was derived from, if any (transfer attacks use it)."""
        return None


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
