"""Thin wrappers around torchattacks: build an L-inf attack by name, run it in batches, PGD restarts.

The module handed to torchattacks is a model's deployed predictive (``ModelPlugin.predictive(S)``):
it returns log-probabilities, and cross-entropy on log-probabilities is the NLL of the predictive mean
(log_softmax of log-probabilities is the identity), which is the loss FGSM and PGD maximise; for a
stochastic model it averages S fresh samples per call: a Monte-Carlo estimate of the expectation over
transformation (EOT) with S samples per step, not a closed form.
torchattacks calls ``eval()`` on it; the model contract keeps sampling on in eval mode.

Randomness: every batch of every attack (PGD's random start, AutoAttack's and Square's seeds, the noise
baseline) runs inside ``seeded(seed, "attack", name, eps, *purpose, restart, batch)`` on the *model's*
device: its draws are a function of what is attacked, never of what ran before, and the libraries'
own reseeding of torch's global generator (``torch.manual_seed`` / ``torch.cuda.manual_seed`` in
AutoAttack and Square) is undone when the block ends.
torchattacks is imported lazily: it is slow to import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .seeding import seeded

#: white-box attacks the adversarial suite can sweep over eps
WHITE_BOX = ("fgsm", "pgd", "autoattack")
#: every attack ``run`` knows: the white-box ones, Square (gradient-free) and random sign noise
ALL = (*WHITE_BOX, "square", "noise")


@dataclass(frozen=True)
class AttackSettings:
    steps: int = 20  # PGD iterations
    step_scale: float = 2.5  # PGD step size = step_scale * eps / steps (Madry et al. 2018)
    random_start: bool = True
    restarts: int = 1  # PGD restarts; per example the restart with the highest loss is kept
    best_iterate: bool = False  # PGD keeps, per example, the iterate with the highest loss (not the last)
    batch_size: int = 200
    n_classes: int = 10
    seed: int = 0  # the cell seed: every attack's randomness is derived from it and what is attacked
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


def build(name: str, model: nn.Module, eps: float, s: AttackSettings, seed: int = 0):
    """The attack object for ``name`` at L-inf radius ``eps`` (pixel units in [0, 1]).

    ``seed`` is handed to the attacks that reseed torch themselves (AutoAttack, Square).
    """
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        cls = _best_iterate_pgd() if s.best_iterate else torchattacks.PGD
        return cls(model, eps=eps, alpha=s.step_scale * eps / s.steps, steps=s.steps, random_start=s.random_start)
    if name == "autoattack":
        return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=s.autoattack_version,
                                       n_classes=s.n_classes, seed=seed)
    if name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=s.square_queries, n_restarts=1,
                                   loss="margin", seed=seed)
    if name == "noise":
        return SignNoise(eps)
    raise ValueError(f"unknown attack {name!r}")


class SignNoise:
    """The random-noise baseline: each pixel moved by +-eps with a random sign (a corner of the L-inf ball).

    Draws from torch's global generator, which ``run`` seeds per batch.
    """

    def __init__(self, eps: float):
        self.eps = eps

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        signs = torch.randint(0, 2, x.shape, dtype=x.dtype, device=x.device) * 2 - 1
        return (x + self.eps * signs).clamp(0, 1)


def _best_iterate_pgd():
    """torchattacks' PGD keeping, per example, the iterate with the highest loss (also the last one)."""
    import torchattacks

    class BestIteratePGD(torchattacks.PGD):
        def forward(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            adv = images.clone().detach()
            if self.random_start:
                adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1).detach()
            best = adv.clone()
            best_loss = torch.full((len(images),), -float("inf"), device=images.device)
            for step in range(self.steps + 1):
                adv.requires_grad_(step < self.steps)
                with torch.set_grad_enabled(step < self.steps):
                    loss = F.cross_entropy(self.get_logits(adv), labels, reduction="none")
                better = loss.detach() > best_loss
                best[better], best_loss[better] = adv.detach()[better], loss.detach()[better]
                if step == self.steps:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), adv)
                delta = (adv.detach() + self.alpha * grad.sign() - images).clamp(-self.eps, self.eps)
                adv = (images + delta).clamp(0, 1).detach()
            return best

    return BestIteratePGD


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
        s: AttackSettings, purpose: tuple = ()) -> torch.Tensor:
    """Adversarial examples (on the CPU) for all of ``x`` in batches; eps = 0 returns ``x`` unchanged.

    ``purpose`` names what is attacked (e.g. the suite and the subset) in the seeds of the attack's draws.
    """
    if eps <= 0:
        return x.clone()
    restarts = s.restarts if name == "pgd" else 1
    best, best_loss = None, None
    for restart in range(restarts):
        adv = _batched(name, model, x, y, eps, s, (*purpose, "restart", restart))
        if restarts == 1:
            return adv
        with seeded(s.seed, "attack", name, f"{eps:g}", *purpose, "restart", restart, "loss",
                    device=_device_of(model)):
            loss = per_example_loss(model, adv, y, s.batch_size)
        if best is None:
            best, best_loss = adv, loss
        else:
            better = loss > best_loss
            best[better], best_loss[better] = adv[better], loss[better]
    return best


def _batched(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             s: AttackSettings, purpose: tuple) -> torch.Tensor:
    device = _device_of(model)
    out = []
    for batch, start in enumerate(range(0, len(x), s.batch_size)):
        xb, yb = x[start:start + s.batch_size].to(device), y[start:start + s.batch_size].to(device)
        # forks the generators of the model's device (where the attack draws), seeded from what is attacked
        with seeded(s.seed, "attack", name, f"{eps:g}", *purpose, "batch", batch, device=device) as seed:
            adv = build(name, model, eps, s, seed=seed % 2**31)(xb, yb)
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
