"""Drawing S samples in one vectorised pass, and the ELBO loss of stochastic variational inference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .layers import VariationalLayer, total_kl


def repeat_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, ...] -> [B*n, ...], example-major: rows i*n .. i*n+n-1 are copies of example i (sample s of
    example i is row i*n + s), so per-sample weight draws need no transposes (see layers.py). For n > 1
    the result is a tensor of its own, never a view of ``x`` (the expanded pass overwrites it)."""
    if n == 1:
        return x
    # reshape copies, except for one example, where it can return a stride-0 view of x
    return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).reshape(n * x.shape[0], *x.shape[1:]).contiguous()


#: Upper bound on the rows of one expanded forward pass (S x examples), by device type. On CPU,
#: activations of a much larger pass exceed the allocator's reuse threshold and every pass pays fresh
#: page faults (measured 2x slower per row for LeNet on MNIST at 4,096 rows than at 512); a GPU needs
#: large passes to be busy, so its cap is far higher (memory, not speed, bounds it there).
MAX_EXPANDED_ROWS = {"cpu": 512, "cuda": 16384}
#: The same for passes that are differentiated (attacks): backward keeps every activation of the pass
#: alive, so on CPU the cap is lower (PGD-10 with EOT on STF-BNN's LeNet, S = 16: 24 s per 512 examples
#: at 256 rows per pass against 31 s at 512; S = 4: 6.0 against 7.6 s; benchmarks/pgd_eot_vs_deterministic.py).
MAX_EXPANDED_ROWS_WITH_GRADIENT = {"cpu": 256, "cuda": 16384}


def max_expanded_rows(device: torch.device | str, gradient: bool = False) -> int:
    """The row cap of one expanded pass on ``device`` (the CPU's for device types not listed);
    ``gradient``: of a pass that is differentiated (an attack's)."""
    kind = torch.device(device).type
    caps = MAX_EXPANDED_ROWS_WITH_GRADIENT if gradient else MAX_EXPANDED_ROWS
    return caps.get(kind, caps["cpu"])


def sample_logits(net: nn.Module, x: torch.Tensor, n_samples: int, layers: Sequence[VariationalLayer] = (),
                  max_rows: int | None = None) -> torch.Tensor:
    """Logits [S, B, C] of S samples, in one forward pass over the S-fold expanded batch.

    ``layers``: the network's variational layers. They are told that the batch holds S rows per example:
    plain-reparameterisation layers draw one weight sample per sample index, and a layer fed by the
    input (``fed_by_input``) computes its convolution on one copy only (local reparameterisation draws
    per example anyway); the deterministic prefix of an ``nn.Sequential`` net runs once per example
    (``deterministic_prefix``). Batches whose expansion exceeds ``max_rows`` rows go through in chunks of
    examples (at least 8 per chunk), each chunk one vectorised pass of all S samples; ``max_rows``
    defaults to the cap of ``x``'s device (``max_expanded_rows``).
    """
    if n_samples == 1:
        return net(x).unsqueeze(0)
    if max_rows is None:
        max_rows = max_expanded_rows(x.device)
    per_pass = max(8, max_rows // n_samples)  # at least 8 examples: many tiny passes cost more
    if x.shape[0] > per_pass:
        return torch.cat([_expanded_pass(net, x[i:i + per_pass], n_samples, layers)
                          for i in range(0, x.shape[0], per_pass)], dim=1)
    return _expanded_pass(net, x, n_samples, layers)


def draws_samples(module: nn.Module) -> bool:
    """Whether a forward pass of ``module`` draws anything: a variational layer, a module that samples in
    eval mode (``samples_in_eval = True``, e.g. MC dropout's AlwaysDropout) or dropout in train mode."""
    return any(isinstance(m, VariationalLayer) or getattr(m, "samples_in_eval", False)
               or (isinstance(m, nn.modules.dropout._DropoutNd) and m.training) for m in module.modules())


def deterministic_prefix(net: nn.Module) -> int:
    """How many leading children of an ``nn.Sequential`` net draw nothing (0 for any other net)."""
    if not isinstance(net, nn.Sequential):
        return 0
    for i, child in enumerate(net):
        if draws_samples(child):
            return i
    return len(net)


def _expanded_pass(net: nn.Module, x: torch.Tensor, n_samples: int, layers: Sequence[VariationalLayer]):
    # The deterministic prefix of a Sequential net (everything before its first sampling module: the
    # frozen body of a last-layer BNN, the first convolution of MC dropout) gives S identical copies
    # of each row, so it runs once per example and only its output is expanded: the same numbers,
    # and S times less work there. A variational layer right after it sees copies (shared_input).
    k = deterministic_prefix(net)
    if k:
        x = net[:k](x)
        if k == len(net):  # nothing draws: the S samples are one output
            return x.unsqueeze(0).expand(n_samples, *x.shape).contiguous()
        net = net[k:]
    for layer in layers:
        layer.sample_groups = n_samples
        layer.shared_input = layer.fed_by_input or (k > 0 and layer is net[0])
    try:
        with _relus_in_place(net, not torch.is_grad_enabled()):
            out = net(repeat_batch(x, n_samples))
    finally:
        for layer in layers:
            layer.sample_groups = 1
            layer.shared_input = False
    return out.reshape(x.shape[0], n_samples, *out.shape[1:]).transpose(0, 1).contiguous()


@contextmanager
def _relus_in_place(net: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, the ``nn.ReLU`` children of ``net`` and of the ``nn.Sequential`` containers
    nested in it (when ``net`` is one) work in place. In a Sequential each child's output feeds only
    the next child, and the expanded pass feeds ``net`` a fresh copy of its input, so nothing else
    sees the overwritten activation; a ReLU in any other module (a residual block that reuses its
    input) is left alone, as is every ReLU while a gradient is recorded. Why: on this CPU a ReLU that
    writes a fresh S-fold expanded activation measured ~5-10x the cost of one written in place
    (fresh pages), 15-20% of an MC dropout or STF-BNN prediction; the values are the same."""
    relus: list[nn.ReLU] = []
    if enabled and isinstance(net, nn.Sequential):
        stack = [net]
        while stack:
            for child in stack.pop():
                if isinstance(child, nn.ReLU) and not child.inplace:
                    relus.append(child)
                elif isinstance(child, nn.Sequential):
                    stack.append(child)
    for relu in relus:
        relu.inplace = True
    try:
        yield
    finally:
        for relu in relus:
            relu.inplace = False


@contextmanager
def estimating(layers: Sequence[VariationalLayer]) -> Iterator[None]:
    """Within the block the layers sample with their training estimator (``train_estimator``); outside
    it every forward pass is the exact predictive (weight sampling). Not tied to train()/eval()."""
    previous = [layer.estimating for layer in layers]
    for layer in layers:
        layer.estimating = True
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            layer.estimating = before


class ElboLoss:
    """Negative ELBO per example: mean NLL over ``train_samples`` draws + kl_weight * KL / n_train.

    The forward pass runs under ``estimating(layers)``: each layer samples with its training
    estimator. ``warmup_steps`` > 0 ramps the KL weight linearly from 0 to ``kl_weight`` over that many
    optimiser steps (KL annealing). Called as ``loss_fn(net, x, y)`` by ``stf_eval.training.fit``.
    ``history`` keeps (batch size, NLL, KL / n_train) of every call, for per-epoch convergence records.
    """

    def __init__(self, layers: Sequence[VariationalLayer], n_train: int, kl_weight: float = 1.0,
                 train_samples: int = 1, warmup_steps: int = 0):
        if n_train <= 0:
            raise ValueError("the ELBO needs a non-empty training set")
        self.layers = list(layers)
        self.n_train = n_train
        self.kl_weight = kl_weight
        self.train_samples = train_samples
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.history: list[tuple[int, float, float]] = []

    def current_kl_weight(self) -> float:
        if self.warmup_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, self.steps / self.warmup_steps)

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        with estimating(self.layers):
            logits = sample_logits(net, x, self.train_samples, self.layers)
        nll = F.cross_entropy(logits.transpose(0, 1).reshape(-1, logits.shape[-1]),
                              y.repeat_interleave(self.train_samples))
        weight = self.current_kl_weight()
        kl = total_kl(self.layers) / self.n_train
        self.history.append((int(y.shape[0]), float(nll.detach()), float(kl.detach())))
        if weight == 0.0:
            return nll
        return nll + weight * kl

    def per_epoch(self, steps_per_epoch: int) -> tuple[list[float], list[float]]:
        """Example-weighted mean NLL and mean KL / n_train of each epoch of ``steps_per_epoch`` calls."""
        nll, kl = [], []
        for start in range(0, len(self.history), steps_per_epoch):
            chunk = self.history[start:start + steps_per_epoch]
            n = sum(c[0] for c in chunk)
            nll.append(sum(c[0] * c[1] for c in chunk) / n)
            kl.append(sum(c[0] * c[2] for c in chunk) / n)
        return nll, kl
