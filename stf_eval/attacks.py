"""Thin wrappers around torchattacks: build an L-inf attack by name, run it in batches, PGD restarts.

The module handed to torchattacks is a model's deployed predictive (``ModelPlugin.predictive(S)``):
it returns log-probabilities, and cross-entropy on log-probabilities is the NLL of the predictive mean
(log_softmax of log-probabilities is the identity), which is the loss FGSM and PGD maximise; for a
stochastic model it averages S fresh samples per call (expectation over transformation).
torchattacks calls ``eval()`` on it; the model contract keeps sampling on in eval mode.
torchattacks is imported lazily: it is slow to import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: white-box attacks the adversarial suite can sweep over eps
WHITE_BOX = ("fgsm", "pgd", "autoattack")


@dataclass(frozen=True)
class AttackSettings:
    steps: int = 20  # PGD iterations
    step_scale: float = 2.5  # PGD step size = step_scale * eps / steps (Madry et al. 2018)
    random_start: bool = True
    restarts: int = 1  # PGD restarts; per example the restart with the highest loss is kept
    batch_size: int = 200
    n_classes: int = 10
    seed: int = 0  # AutoAttack and Square seeds (PGD's random start uses torch's global generator)
    autoattack_version: str = "standard"
    square_queries: int = 100


class LogSoftmax(nn.Module):
    """A plain network (logits) as log-probabilities, the same interface as a model's predictive."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=-1)


def _device_of(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def build(name: str, model: nn.Module, eps: float, s: AttackSettings):
    """The torchattacks object for attack ``name`` at L-inf radius ``eps`` (pixel units in [0, 1])."""
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=s.step_scale * eps / s.steps, steps=s.steps,
                                random_start=s.random_start)
    if name == "autoattack":
        return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=s.autoattack_version,
                                       n_classes=s.n_classes, seed=s.seed)
    if name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=s.square_queries, n_restarts=1,
                                   loss="margin", seed=s.seed)
    raise ValueError(f"unknown attack {name!r}")


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """NLL of the true class under ``model`` (which returns log-probabilities), no grad, on the CPU."""
    device = _device_of(model)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logp = model(x[start:start + batch_size].to(device))
            out.append(F.nll_loss(logp, y[start:start + batch_size].to(device), reduction="none").cpu())
    return torch.cat(out)


def run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
        s: AttackSettings) -> torch.Tensor:
    """Adversarial examples (on the CPU) for all of ``x`` in batches; eps = 0 returns ``x`` unchanged."""
    if eps <= 0:
        return x.clone()
    restarts = s.restarts if name == "pgd" else 1
    best, best_loss = None, None
    for _ in range(restarts):
        adv = _batched(name, model, x, y, eps, s)
        if restarts == 1:
            return adv
        loss = per_example_loss(model, adv, y, s.batch_size)
        if best is None:
            best, best_loss = adv, loss
        else:
            better = loss > best_loss
            best[better], best_loss[better] = adv[better], loss[better]
    return best


def _batched(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             s: AttackSettings) -> torch.Tensor:
    attack = build(name, model, eps, s)
    out = []
    for start in range(0, len(x), s.batch_size):
        xb, yb = x[start:start + s.batch_size], y[start:start + s.batch_size]
        if name == "square":
            # Square reseeds torch's global generator; keep that from leaking into later sampling
            with torch.random.fork_rng(devices=[] if xb.device.type == "cpu" else None):
                adv = attack(xb, yb)
        else:
            adv = attack(xb, yb)
        out.append(adv.detach().cpu())
    return torch.cat(out)


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed NLL (``model`` returns log-probabilities) with respect to the inputs."""
    device = _device_of(model)
    xg = x.clone().to(device).requires_grad_(True)
    loss = F.nll_loss(model(xg), y.to(device), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    return grad.detach().cpu()


def output_spread(model: nn.Module, x: torch.Tensor, dropout_on: bool = False) -> float:
    """Largest difference between the probabilities of two calls of ``model`` on the same input.

    Called in eval mode (as attacks run). ``dropout_on`` switches only dropout layers to training
    mode (never batch-norm, whose running statistics would move): a spread that appears only then
    means ``eval()`` turns the model's sampling off.
    """
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in dropouts:
        m.train(dropout_on)
    device = _device_of(model)
    try:
        with torch.no_grad():
            xb = x.to(device)
            return float((model(xb).exp() - model(xb).exp()).abs().max().cpu())
    finally:
        for m in dropouts:
            m.eval()


def sample_spread(model, x: torch.Tensor) -> float:
    """Largest difference between the softmax of two samples drawn in one call (eval mode)."""
    for net in model.networks():
        net.eval()
    with torch.no_grad():
        probs = torch.softmax(model.sample_logits(x.to(model.device), 2), dim=-1)
    return float((probs[0] - probs[1]).abs().max().cpu())
