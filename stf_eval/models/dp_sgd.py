"""DP-SGD baseline (Abadi et al. 2016) trained with opacus: per-example clipping plus Gaussian noise.

opacus leaves hooks on the module it wraps, and attacking that module afterwards breaks, so the
model evaluates a *clean copy*: a fresh network of the same (opacus-fixed) architecture holding the
trained weights. That clean network is what the checkpoint cache stores; the privacy budget spent
(epsilon at the recorded delta) is stored in the cache metadata, so a cache hit still knows it.

Memory: per-example gradients cost one copy of the weights per example of a physical batch, so
opacus' ``BatchMemoryManager`` splits each logical (Poisson-sampled) batch into physical batches of at
most ``max_physical_batch_size`` examples; the noisy step still happens once per logical batch, so
the logical batch, the noise and epsilon are unchanged. After training the private module is closed
(hooks removed, per-sample gradients dropped) and released, so nothing of it outlives ``fit`` (opacus'
hooks form a reference cycle that would otherwise keep it alive until a full garbage collection).
"""

from __future__ import annotations

import gc
import inspect
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..params import as_dict, require
from ..registry import MODELS
from ..training import StepOptions
from .base import Capabilities, ModelPlugin

# Input normalisation of every DP-trained net (and of its non-private twin): fixed constants, not the
# training split's mean/std, which would leak private data outside the DP accounting. Pixels are in [0, 1].
FIXED_MEAN, FIXED_STD = 0.5, 0.5
GRAD_SAMPLE_PREFIX = "_module."  # opacus' GradSampleModule stores the wrapped net under this name
# expected and harmless here: no secure RNG (seeded runs), hooks on the input layer, RDP order range
QUIET_OPACUS_WARNINGS = ("Secure RNG turned off", "Full backward hook is firing",
                         "Optimal order is the largest")
KEEP_PER_SAMPLE_GRADIENTS = True  # False: opacus' own zero-and-copy store (the exactness test compares both)


@dataclass(frozen=True)
class DpSgdParams:
    target_epsilon: float = 8.0  # privacy budget the noise multiplier is solved for
    delta: float = 0.0  # 0 = automatic: min(1e-5, 1 / N_train)
    max_grad_norm: float = 1.0  # per-example gradient clipping bound C
    epochs: int = 10
    lr: float = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9  # sgd only
    batch_size: int = 256  # expected batch size (Poisson sampling with rate batch_size / N_train)
    accountant: Literal["prv", "rdp"] = "prv"  # opacus' privacy accountant
    max_physical_batch_size: int = 128  # examples per forward/backward (BatchMemoryManager); 0 = batch_size

    def check(self) -> None:
        require(self.target_epsilon > 0, "target_epsilon", "a positive number", self.target_epsilon)
        require(0.0 <= self.delta < 1.0, "delta", "0 (automatic) or a number in (0, 1)", self.delta)
        require(self.max_grad_norm > 0, "max_grad_norm", "a positive number", self.max_grad_norm)
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(0.0 <= self.momentum < 1.0, "momentum", "a number in [0, 1)", self.momentum)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.max_physical_batch_size >= 0, "max_physical_batch_size", "0 (= batch_size) or an integer >= 1",
                self.max_physical_batch_size)


def dp_compatible_net(net: nn.Module) -> nn.Module:
    """The net with layers DP-SGD cannot train per example (batch-norm) replaced (GroupNorm)."""
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(net)
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError(f"models.dp_sgd: the network cannot be trained with DP-SGD: {errors[0]}")
    return fixed


def _mean_cross_entropy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(x), y, reduction="sum") / max(len(y), 1)


def release_private(private, opt) -> None:
    """Drop what opacus attached: per-sample gradients (and their sums), hooks, and the gradients, so
    the private module is freed by reference counting as soon as it goes out of scope."""
    try:
        opt.zero_grad(set_to_none=True)  # clears grad_sample and summed_grad too
    except Exception:  # noqa: BLE001 - best effort on an error path
        pass
    for param in private.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample"):
            if hasattr(param, attr):
                delattr(param, attr)
        param.grad = None
    private._close()  # removes the hooks (their partials reference the module: a cycle)
def fixed_normalisation_net(ctx, data) -> nn.Module:
    """The [net] of ``ctx`` normalising its input with FIXED_MEAN/FIXED_STD per channel (no data statistics)."""
    from ..nets.common import build_net

    channels = data.input_shape[0]
    return build_net(ctx.net, data.input_shape, data.num_classes, (FIXED_MEAN,) * channels,
                     (FIXED_STD,) * channels)


@contextmanager
def _batches(loader, physical: int, optimizer, private: bool):
    """DP: opacus' BatchMemoryManager splits each logical (Poisson) batch into physical batches of at
    most ``physical`` examples (same steps, same epsilon, bounded per-sample-gradient memory).
    Without DP there are no per-sample gradients to bound: the logical batches as they are."""
    if not private:
        yield loader
        return
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer) as out:
        yield out


@contextmanager
def _per_sample_gradients_kept():
    """While training, let opacus keep each layer's freshly computed per-sample gradients as they are.

    opacus (1.4 to 1.6) stores them by allocating a zero tensor of the physical batch length and copying
    them into it, so every backward pass fills, faults in and copies a second tensor as large as the
    weights times the batch (~20% of a DP step of the quick LeNet). When the gradients cover the whole
    batch, are contiguous and nothing was stored yet, that zero tensor would be an exact copy of them:
    keep them instead. Everything else (a shorter batch, accumulation for shared parameters) goes through
    opacus' own function. opacus never writes into the stored tensor, and the trained weights are
    bit-identical either way (tests/test_dp_sgd.py); an opacus whose hook has another signature is left alone.
    """
    from opacus.grad_sample import grad_sample_module as gsm

    original = getattr(gsm, "create_or_accumulate_grad_sample", None)
    if not KEEP_PER_SAMPLE_GRADIENTS or original is None or \
            set(inspect.signature(original).parameters) != {"param", "grad_sample", "max_batch_len"}:
        yield
        return

    def create_or_accumulate(*, param: torch.Tensor, grad_sample: torch.Tensor, max_batch_len: int) -> None:
        if (param.requires_grad and not hasattr(param, "_current_grad_sample")
                and grad_sample.shape[0] == max_batch_len and grad_sample.is_contiguous()):
            param._current_grad_sample = grad_sample
        else:
            original(param=param, grad_sample=grad_sample, max_batch_len=max_batch_len)

    gsm.create_or_accumulate_grad_sample = create_or_accumulate
    try:
        yield
    finally:
        gsm.create_or_accumulate_grad_sample = original


def clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of an opacus-wrapped module with the GradSampleModule prefix stripped."""
    n = len(GRAD_SAMPLE_PREFIX)
    return {(k[n:] if k.startswith(GRAD_SAMPLE_PREFIX) else k): v.detach().clone()
            for k, v in module.state_dict().items()}


def non_private_loader(loader):
    """``loader`` with opacus' Poisson sampling (as make_private uses), for training without DP.

    Its ``expected_batch_size`` is what opacus divides the summed clipped gradients by; the twin divides
    its summed loss by the same number, so without clipping and noise the two steps are identical.
    """
    from opacus.data_loader import DPDataLoader

    poisson = DPDataLoader.from_data_loader(loader)
    poisson.expected_batch_size = max(1, int(len(loader.dataset) * poisson.sample_rate))
    return poisson


@MODELS.register("dp_sgd")
class DpSgd(ModelPlugin):
    """The [net] architecture trained with DP-SGD (opacus) to a target (epsilon, delta)."""

    Params = DpSgdParams
    stochastic = False
    tiny = {"epochs": 3, "batch_size": 64, "target_epsilon": 8.0, "accountant": "rdp"}  # rdp: faster search
    private = True  # False: the same recipe without clipping and noise (the sgd_twin control)

    def fit(self, data):
        p = self.params
        n_train = len(data.train)
        self.delta = getattr(p, "delta", 0.0) or min(1e-5, 1.0 / n_train)  # sgd_twin has no delta
        torch.manual_seed(self.ctx.seed)
        # the architecture opacus can train; the evaluated net is a fresh instance of it
        self.net = dp_compatible_net(fixed_normalisation_net(self.ctx, data))
        spec = self.ctx.key_spec(data, kind="dp_sgd", params=as_dict(p), delta=self.delta,
                                 normalisation=[FIXED_MEAN, FIXED_STD], private=self.private)

        def train():
            return self._train_private(data, n_train)

        seconds, cached, meta = self.ctx.cached(spec, self.net, train)
        self.record_stage("train", {**meta, "seconds": seconds, "cached": cached})
        self.dp_meta = {k: v for k, v in meta.items() if k.startswith("dp_")}
        if self.ctx.stages_only:  # planning or training stages only: no privacy accounting to read yet
            return self
        self.epsilon = float(meta.get("dp_epsilon", math.inf))  # the non-private twin: no budget
        self.noise_multiplier = float(meta.get("noise_multiplier", 0.0))
        self.net.eval()
        return self

    def _train_private(self, data, n_train: int) -> tuple[float, dict]:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        p, device, seed = self.params, self.device, self.ctx.seed
        work = dp_compatible_net(fixed_normalisation_net(self.ctx, data))  # the copy opacus wraps
        work.load_state_dict(self.net.state_dict())  # same initialisation as the clean net
        work.to(device).train()
        if p.optimizer == "sgd":
            opt = torch.optim.SGD(work.parameters(), lr=p.lr, momentum=p.momentum)
        else:
            opt = torch.optim.Adam(work.parameters(), lr=p.lr)
        loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=min(p.batch_size, n_train),
                            shuffle=True, generator=torch.Generator().manual_seed(seed))
        physical = min(getattr(p, "max_physical_batch_size", 0) or p.batch_size, p.batch_size)
        with warnings.catch_warnings(), _per_sample_gradients_kept():
            for message in QUIET_OPACUS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            start = time.perf_counter()  # the noise-multiplier search is part of the training cost
            if self.private:
                engine = PrivacyEngine(accountant=p.accountant)
                private, opt, loader = engine.make_private_with_epsilon(
                    module=work, optimizer=opt, data_loader=loader, target_epsilon=p.target_epsilon,
                    target_delta=self.delta, epochs=p.epochs, max_grad_norm=p.max_grad_norm,
                    noise_generator=torch.Generator(device=device).manual_seed(seed + 1))
            else:  # the twin: the same Poisson batches, no clipping, no noise
                engine, private, loader = None, work, non_private_loader(loader)
            logical_steps = 0
            try:
                for _ in range(p.epochs):
                    running = torch.zeros((), device=device)
                    with _batches(loader, physical, opt, self.private) as batches:
                        for xb, yb in batches:
                            xb, yb = xb.to(device), yb.to(device)
                            opt.zero_grad(set_to_none=True)
                            # DP: mean over the batch (an empty Poisson batch gives 0; its noisy step still
                            # happens). Twin: the sum over opacus' expected batch size, as opacus scales
                            # the clipped sum, so without clipping and noise the two steps are the same.
                            denom = max(len(yb), 1) if self.private else loader.expected_batch_size
                            loss = F.cross_entropy(private(xb), yb, reduction="sum") / denom
                            loss.backward()
                            opt.step()
                            logical_steps += 0 if getattr(opt, "_is_last_step_skipped", False) else 1
                            running += loss.detach()  # no host sync per step
                    if not torch.isfinite(running):
                        raise FloatingPointError(f"dp_sgd: training loss became {float(running)}")
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - start
                if self.private:
                    epsilon = float(engine.get_epsilon(self.delta))
                    noise_multiplier = float(opt.noise_multiplier)
                    self.net.load_state_dict(clean_state_dict(private))
                else:
                    self.net.load_state_dict(work.state_dict())
            finally:
                if self.private:
                    release_private(private, opt)  # per-sample gradients freed here, by reference counting
                del private, opt, loader, engine, work
                gc.collect()  # the module itself sits in a reference cycle (opacus/autograd): reclaim it now
        if not self.private:
            return seconds, {"private": False, "dp_logical_steps": logical_steps}
        meta = {"dp_epsilon": epsilon, "dp_delta": self.delta, "accountant": p.accountant,
                "noise_multiplier": noise_multiplier, "dp_logical_steps": logical_steps,
                "dp_physical_batch_size": physical}
        # one training step, for the efficiency suite's step memory (profiling.measure_train_step)
        step_net = dp_compatible_net(fixed_normalisation_net(self.ctx, data))
        step_net.load_state_dict(self.net.state_dict())
        meta["train_step"] = {
            "net": step_net, "loss_fn": _mean_cross_entropy,
            "optimizer": (torch.optim.SGD, {"lr": p.lr, "momentum": p.momentum}) if p.optimizer == "sgd"
            else (torch.optim.Adam, {"lr": p.lr}),
            "x": data.train.x[:physical], "y": data.train.y[:physical], "train_mode": True,
            "options": StepOptions(), "dp": {"noise_multiplier": noise_multiplier, "max_grad_norm": p.max_grad_norm,
                                             "expected_batch_size": p.batch_size}}
        return seconds, meta

    def sample_logits(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return self.net(x).unsqueeze(0)

    def networks(self):
        return [self.net]

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        caps.notes.update({"dp_epsilon": self.epsilon, "dp_delta": self.delta,
                           "noise_multiplier": self.noise_multiplier,
                           "accountant": self.params.accountant})
        return caps
