"""Turn chosen Conv2d/Linear layers of a (trained) network into variational layers.

``first`` and ``last`` are found by tracing a forward pass on a dummy input (forward hooks record
the order in which Conv2d/Linear modules are applied), not by module definition order: a network may
define its classifier head before its stem. Modules without weights (``Normalize``, ReLU, pooling)
are never candidates.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from .layers import VariationalConv2d, VariationalLayer, VariationalLinear, softplus_inverse, total_kl

CONVERTIBLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class VariationalInit:
    """How the variational parameters and the prior of converted layers are set.

    rho_rule "constant": rho = rho_init everywhere (sigma = softplus(rho_init)).
    rho_rule "moped": sigma = moped_delta * |w_trained| (Krishnan et al. 2020), floored at 1e-8.
    prior "trained": N(w_trained, prior_sigma^2); prior "zero": N(0, prior_sigma^2).
    """

    rho_rule: Literal["constant", "moped"] = "constant"
    rho_init: float = -5.0
    moped_delta: float = 0.1
    prior: Literal["trained", "zero"] = "trained"
    prior_sigma: float = 1.0
    train_estimator: str = "auto"  # see layers.TRAIN_ESTIMATORS; prediction is always weight sampling


def _traced_leaf_calls(net: nn.Module, example_input: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """(name, module) of every leaf module (no children) in the order a forward pass applies them."""
    names = {m: n for n, m in net.named_modules() if not any(True for _ in m.children())}
    calls: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: calls.append((names[mod], mod))) for m in names]
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()  # a batch of one must not disturb (or trip over) batch-norm statistics
        with torch.no_grad():
            net(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return calls


def traced_calls(net: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear modules of ``net`` in the order a forward pass applies them
    (a module applied twice appears twice)."""
    return [name for name, m in _traced_leaf_calls(net, example_input) if isinstance(m, CONVERTIBLE)]


def fed_by_input(net: nn.Module, name: str, example_input: torch.Tensor) -> bool:
    """True when module ``name`` is applied once, and only to the output of parameter-free,
    non-dropout modules (so S identical input copies reach it as S identical copies)."""
    calls = _traced_leaf_calls(net, example_input)
    positions = [i for i, (n, _) in enumerate(calls) if n == name]
    if len(positions) != 1:
        return False
    before = [m for _, m in calls[:positions[0]]]
    return all(not isinstance(m, nn.modules.dropout._DropoutNd) and next(m.parameters(), None) is None
               for m in before)


def trace_call_order(net: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Conv2d/Linear module names in the order a forward pass first applies them."""
    return list(dict.fromkeys(traced_calls(net, example_input)))


def select_layers(net: nn.Module, selection: str | Sequence[str], example_input: torch.Tensor) -> list[str]:
    """Module names chosen by ``first``, ``last``, ``all`` or an explicit list of names."""
    if isinstance(selection, str) and selection in ("first", "last", "all"):
        calls = traced_calls(net, example_input)
        if not calls:
            raise ConfigError("the network applies no Conv2d or Linear layer; nothing can be made Bayesian")
        if selection == "first":
            return [calls[0]]
        if selection == "last":
            return [calls[-1]]
        return list(dict.fromkeys(calls))
    names = [selection] if isinstance(selection, str) else list(selection)
    modules = dict(net.named_modules())
    for name in names:
        if name not in modules:
            convertible = convertible_layers(net, example_input)
            raise ConfigError(f"layers: no module named {name!r} (this net's Conv2d/Linear modules, "
                              f"first to last: {', '.join(convertible)}; or 'first', 'last', 'all')")
        if not isinstance(modules[name], CONVERTIBLE):
            convertible = convertible_layers(net, example_input)
            raise ConfigError(f"layers: module {name!r} is a {type(modules[name]).__name__}, not Conv2d or Linear "
                              f"(this net's Conv2d/Linear modules, first to last: {', '.join(convertible)})")
    if not names:
        raise ConfigError("layers: expected 'first', 'last', 'all' or a non-empty list of module names")
    return names


def convertible_layers(net: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear modules ``layers`` may name: the ones a forward pass applies, in call
    order, then any the pass does not reach."""
    called = trace_call_order(net, example_input)
    return called + [n for n, m in net.named_modules() if isinstance(m, CONVERTIBLE) and n not in called]


def replace_module(net: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) was."""
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, new)


def make_variational(layer: nn.Module, init: VariationalInit) -> VariationalLayer:
    """A variational copy of ``layer``: mu = its weights (and bias), rho and prior from ``init``."""
    cls = VariationalConv2d if isinstance(layer, nn.Conv2d) else VariationalLinear
    new = cls.from_module(layer, rho_init=init.rho_init, prior_sigma=init.prior_sigma,
                          train_estimator=init.train_estimator)
    with torch.no_grad():
        new.weight_mu.copy_(layer.weight)
        if layer.bias is not None:
            new.bias_mu.copy_(layer.bias)
        if init.rho_rule == "moped":
            new.weight_rho.copy_(softplus_inverse((init.moped_delta * layer.weight.abs()).clamp_min(1e-8)))
            if layer.bias is not None:
                new.bias_rho.copy_(softplus_inverse((init.moped_delta * layer.bias.abs()).clamp_min(1e-8)))
    if init.prior == "trained":
        new.set_prior(init.prior_sigma, layer.weight, layer.bias)
    else:
        new.set_prior(init.prior_sigma)
    return new


def convert(net: nn.Module, selection: str | Sequence[str], example_input: torch.Tensor,
            init: VariationalInit = VariationalInit(), freeze_rest: bool = True) -> tuple[nn.Module, list[str]]:
    """Deep copy of ``net`` whose selected Conv2d/Linear layers are variational.

    With ``freeze_rest`` every other parameter gets requires_grad False (batch-norm statistics stay
    fixed as long as the network is run in eval mode, which STF-BNN's second stage does). Returns the
    new network and the converted module names in call order.
    """
    names = select_layers(net, selection, example_input)
    new_net = copy.deepcopy(net)
    if freeze_rest:
        for p in new_net.parameters():
            p.requires_grad_(False)
    for name in names:
        layer = make_variational(new_net.get_submodule(name), init)
        layer.fed_by_input = fed_by_input(net, name, example_input)
        replace_module(new_net, name, layer)
    return new_net, names


def variational_layers(net: nn.Module) -> list[VariationalLayer]:
    return [m for m in net.modules() if isinstance(m, VariationalLayer)]


def kl_divergence(net: nn.Module) -> torch.Tensor:
    """Sum of the closed-form KL terms of every variational layer in ``net``."""
    return total_kl(variational_layers(net))


def distribution_param_count(net: nn.Module) -> int:
    """Number of mu and rho entries over every variational layer."""
    return sum(layer.distribution_numel() for layer in variational_layers(net))
