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

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cache import CheckpointCache, cache_key
from ..config import NetConfig, PluginSpec, TrainConfig
from ..data.base import DataBundle
from ..nets.common import build_net
from ..params import NoParams, as_dict
from ..profiling import peak_memory
from ..training import train_deterministic


@dataclass
class BuildContext:
    """What a model needs besides its own parameters: the shared recipe, device, seed and cache."""

    spec: PluginSpec
    net: NetConfig
    train: TrainConfig
    device: torch.device
    seed: int
    cache: CheckpointCache

    def new_net(self, data: DataBundle) -> nn.Module:
        return build_net(self.net, data.input_shape, data.num_classes, data.mean, data.std)

    def key_spec(self, data: DataBundle, **extra: Any) -> dict:
        """The parts of a cache key common to all trained weights: net, recipe, data, seed."""
        return {"net": as_dict(self.net), "train": as_dict(self.train), "data": data.train.fingerprint,
                "num_classes": data.num_classes, "seed": self.seed, **extra}

    def cached(self, spec: dict, net: nn.Module, train_fn) -> tuple[float, bool, dict]:
        """Load ``net`` from the cache or train it with ``train_fn() -> (seconds, meta)`` and store it.

        Returns (training seconds as originally measured, whether it came from the cache, metadata).
        """
        key = cache_key(spec)
        meta = self.cache.load(key, net)
        if meta is not None:
            net.to(self.device).eval()
            return float(meta.get("seconds", 0.0)), True, meta
        with peak_memory(self.device) as mem:
            seconds, meta = train_fn()
        meta = {**(meta or {}), "seconds": seconds, "peak_memory_mb": mem.mb, "memory_method": mem.method}
        self.cache.save(key, net, spec, meta)
        net.to(self.device).eval()
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
        self.memory_method = ""
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
            self.memory_method = meta.get("memory_method", self.memory_method)

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
        for start in range(0, x.shape[0], bs):
            xb = x[start:start + bs].to(self.device, non_blocking=True)
            out.append(self.sample_logits(xb, s).float().cpu())
        return torch.cat(out, dim=1)

    def prediction_batch_size(self, n_samples: int) -> int:
        """Examples per batch when drawing ``n_samples`` samples in one S-fold expanded pass.

        On CPU the expanded batch (S x examples rows) is kept to about 512 rows: larger ones spill out
        of cache and cost more than they save (measured in benchmarks/mc_prediction_vs_deterministic.py).
        """
        eval_bs = self.ctx.train.eval_batch_size
        if n_samples <= 1:
            return eval_bs
        rows = eval_bs * 4 if self.device.type == "cuda" else min(eval_bs, 512)
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
            "memory_method": self.memory_method,
            "from_cache": dict(self.from_cache),
        }

    def deterministic_base(self) -> nn.Module | None:
        """The deterministic network this model was derived from, if any (transfer attacks use it)."""
        return None


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
