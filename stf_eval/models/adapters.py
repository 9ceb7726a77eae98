"""Adapters: a user's own network, sampler, list of networks or weights file as a model plugin.

No plugin class to write for the common cases:

* ``torch_module``   - any ``nn.Module`` mapping images [B, C, H, W] in [0, 1] to logits [B, C]
  (deterministic, S = 1; put in ``eval()`` mode);
* ``torch_sampler``  - a function ``fn(x, S) -> logits [S, B, C]`` (a stochastic model: each call
  draws S fresh samples; differentiable in ``x`` for the gradient attacks);
* ``torch_ensemble`` - a list of modules: the members' logits are the S = M samples;
* ``pretrained``     - a state dict saved with ``torch.save(net.state_dict(), path)`` loaded into a
  registered net (``arch`` and ``options``, default: the run's ``[net]``); usable from a suite file.

None of them is trained: ``fit`` only copies or loads the weights. They are therefore not
*retrainable*, and the membership suite runs its threshold attacks on them but not LiRA/RMIA, whose
reference models would have to repeat the training recipe (see docs/api.md).

The first three take live objects, which only ``stf_eval.evaluate`` can hand over (``inprocess``):
their ``ref`` parameter names the object for the duration of the run.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import NetConfig
from ..errors import ConfigError
from ..inprocess import lookup
from ..nets.common import build_net
from ..params import require
from ..registry import MODELS
from .base import Capabilities, ModelPlugin

NOT_RETRAINABLE = ("supplied already trained: its training recipe is unknown to stf-eval, so it cannot be "
                   "retrained for reference-model attacks (LiRA, RMIA)")


def check_logits(out, expect: tuple[int, ...], where: str) -> torch.Tensor:
    """Reject outputs that are not logits of the expected shape, with one line naming the model."""
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{where}: returned {type(out).__name__}, expected a tensor of logits of shape "
                          f"{list(expect)}")
    if tuple(out.shape) != tuple(expect):
        dims = "[S, B, C]" if len(expect) == 3 else "[B, C]"
        raise ConfigError(f"{where}: returned logits of shape {list(out.shape)}, expected {dims} = "
                          f"{list(expect)}")
    return out


class _Adapter(ModelPlugin):
    """Shared by the adapters: no training, not retrainable, one 'load' stage."""

    kind = "adapter"
    #: class-level, so a planner can tell without building the model that it has no training recipe
    retrainable = False

    @classmethod
    def missing_requirement(cls) -> str | None:
        """Why the plugin cannot be built from its parameters alone (the test matrix skips it)."""
        return f"{cls.registered_name} wraps a user object or file; tests/test_api.py exercises it"

    @property
    def where(self) -> str:
        return f"models.{self.ctx.spec.name} ({self.kind})"

    def _loaded(self, start: float) -> None:
        self.record_stage("load", {"seconds": time.perf_counter() - start, "cached": False})

    def _probe(self, data, n_samples: int | None) -> torch.Tensor:
        """One call on two test images: shape errors surface at build time, before any suite runs."""
        x = data.test.x[:2].to(self.device)
        with torch.no_grad():
            out = self.sample_logits(x, n_samples or self.n_samples)
        return out

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        caps.retrainable = self.retrainable
        caps.notes["not_retrainable"] = NOT_RETRAINABLE
        return caps


@dataclass(frozen=True)
class ObjectParams:
    ref: str = ""  # set by stf_eval.evaluate: the in-process object's name for this run

    def check(self) -> None:
        require(bool(self.ref), "ref", "an in-process object reference (use stf_eval.evaluate)", self.ref)


@MODELS.register("torch_module")
class TorchModule(_Adapter):
    """A user's nn.Module (images in [0, 1] -> logits [B, C]) evaluated as is, deterministic (S = 1)."""

    Params = ObjectParams
    stochastic = False
    kind = "nn.Module"

    def fit(self, data):
        start = time.perf_counter()
        obj = lookup(self.params.ref, self.where)
        if not isinstance(obj, nn.Module):
            raise ConfigError(f"{self.where}: expected an nn.Module, got {type(obj).__name__}")
        self.net = copy.deepcopy(obj).to(self.device).eval()  # the user's object stays untouched
        self._classes = data.num_classes
        self._loaded(start)
        self._probe(data, 1)
        return self

    def sample_logits(self, x, n_samples):
        return check_logits(self.net(x), (x.shape[0], self._classes), self.where).unsqueeze(0)

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.net


@dataclass(frozen=True)
class SamplerParams:
    ref: str = ""
    test_samples: int = 8  # S drawn per prediction at evaluation

    def check(self) -> None:
        require(bool(self.ref), "ref", "an in-process object reference (use stf_eval.evaluate)", self.ref)
        require(self.test_samples >= 1, "test_samples", "an integer >= 1", self.test_samples)


@MODELS.register("torch_sampler")
class TorchSampler(_Adapter):
    """A user's sampler fn(x, S) -> logits [S, B, C]: a stochastic model drawing S samples per call."""

    Params = SamplerParams
    stochastic = True
    kind = "sampler"

    def fit(self, data):
        start = time.perf_counter()
        entry = lookup(self.params.ref, self.where)
        self.fn, self.modules = entry["fn"], list(entry.get("modules") or [])
        self._classes = data.num_classes
        self._loaded(start)
        x = data.test.x[:2].to(self.device).clone().requires_grad_(True)
        out = self.sample_logits(x, 2)
        self.differentiable = bool(out.requires_grad)
        return self

    def sample_logits(self, x, n_samples):
        out = self.fn(x, n_samples)
        return check_logits(out, (n_samples, x.shape[0], self._classes), self.where)

    def networks(self):
        return self.modules

    def capabilities(self):
        caps = super().capabilities()
        caps.differentiable = self.differentiable
        if not self.differentiable:
            caps.notes["not_differentiable"] = "the sampler's logits carry no gradient with respect to x"
        return caps


@MODELS.register("torch_ensemble")
class TorchEnsemble(_Adapter):
    """A user's list of nn.Modules: the members' logits are the S = M samples (a deep ensemble)."""

    Params = ObjectParams
    stochastic = True
    kind = "ensemble"

    def fit(self, data):
        start = time.perf_counter()
        members = lookup(self.params.ref, self.where)
        self.members = [copy.deepcopy(m).to(self.device).eval() for m in members]
        self._classes = data.num_classes
        self._loaded(start)
        self._probe(data, len(self.members))
        return self

    @property
    def n_samples(self) -> int:
        return len(self.members)

    def sample_logits(self, x, n_samples):
        m = len(self.members)
        outs = [check_logits(net(x), (x.shape[0], self._classes), f"{self.where} member {i}")
                for i, net in enumerate(self.members[:min(n_samples, m)])]
        return torch.stack([outs[s % m] for s in range(n_samples)])

    def networks(self):
        return list(self.members)

    def deterministic_base(self):
        return self.members[0]


@dataclass(frozen=True)
class PretrainedParams:
    path: str = ""  # a state dict saved with torch.save(net.state_dict(), path)
    arch: str = ""  # a registered net (or package.module:function); empty: the run's [net] arch
    options: dict = field(default_factory=dict)  # the net's options (with arch); empty arch: [net] options
    strict: bool = True  # every key of the net must be in the file and vice versa

    def check(self) -> None:
        require(bool(self.path), "path", "the path of a saved state dict", self.path)
        require(Path(self.path).is_file(), "path", "an existing file", self.path)
        require(bool(self.arch) or not self.options, "options", "options only together with arch",
                self.options)


@MODELS.register("pretrained")
class Pretrained(_Adapter):
    """Weights from a file (state dict) in a registered net, evaluated without retraining (S = 1)."""

    Params = PretrainedParams
    stochastic = False
    kind = "pretrained"

    @classmethod
    def missing_requirement(cls) -> str | None:
        return "pretrained needs a weights file; tests/test_api.py exercises it"

    def fit(self, data):
        start = time.perf_counter()
        p = self.params
        net_cfg = NetConfig(arch=p.arch, options=dict(p.options)) if p.arch else self.ctx.net
        net = build_net(net_cfg, data.input_shape, data.num_classes, data.mean, data.std)
        try:
            state = torch.load(p.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled modules, corrupt files: one line
            raise ConfigError(f"{self.where}: cannot read {p.path} as a state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); save it with "
                              f"torch.save(net.state_dict(), path)") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ConfigError(f"{self.where}: {p.path} holds {type(state).__name__}, not a state dict")
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
            raise ConfigError(f"{self.where}: {p.path} does not fit net {net_cfg.arch!r} with options "
                              f"{dict(net_cfg.options)}: {first}") from exc
        if p.strict and (missing or unexpected):
            raise ConfigError(f"{self.where}: {p.path} does not fit net {net_cfg.arch!r}: missing keys "
                              f"{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]} (strict = false "
                              f"loads what fits)")
        self.net = net.to(self.device).eval()
        self._classes = data.num_classes
        self._loaded(start)
        self._probe(data, 1)
        return self

    def sample_logits(self, x, n_samples):
        return check_logits(self.net(x), (x.shape[0], self._classes), self.where).unsqueeze(0)

    def networks(self):
        return [self.net]

    def deterministic_base(self):
        return self.net


def module_digest(module: nn.Module) -> str:
    """Content hash of a module (class and weights): the ref of an unchanged network is stable."""
    import hashlib

    from ..inprocess import tensor_digest

    state = module.state_dict()
    names = hashlib.sha1("\n".join(sorted(state)).encode()).hexdigest()[:8]
    return f"{type(module).__qualname__}-{names}-" + tensor_digest(*[state[k] for k in sorted(state)])
