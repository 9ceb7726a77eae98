"""The deterministic training loop shared by every model that trains a network."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.base import Split
from .progress import bars_disabled


def make_optimizer(params: Iterable[torch.nn.Parameter], recipe: TrainConfig, lr: float | None = None,
                   weight_decay: float | None = None) -> torch.optim.Optimizer:
    lr = recipe.lr if lr is None else lr
    wd = recipe.weight_decay if weight_decay is None else weight_decay
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=wd, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    return None


def batches(split: Split, batch_size: int, generator: torch.Generator | None, shuffle: bool = True):
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.x[idx], split.y[idx]


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(x), y)


def fit(net: nn.Module, train: Split, *, epochs: int, batch_size: int, optimizer: torch.optim.Optimizer,
        device: torch.device, seed: int, schedule: str = "none", loss_fn: LossFn = cross_entropy_loss,
        desc: str = "train", train_mode: bool = True) -> float:
    """Minimise ``loss_fn`` over ``epochs``; return the wall-clock seconds spent.

    ``train_mode=False`` keeps the network in eval mode (frozen batch-norm statistics, as the second
    stage of STF-BNN needs).
    """
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    sched = make_scheduler(optimizer, schedule, epochs * steps_per_epoch)
    net.to(device)
    net.train(train_mode)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=bars_disabled())
    try:
        for _ in range(epochs):
            running, count = 0.0, 0
            for xb, yb in batches(train, batch_size, gen):
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net, xb, yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: training loss became {loss.item()}")
                loss.backward()
                optimizer.step()
                if sched is not None:
                    sched.step()
                running += float(loss.detach()) * len(yb)
                count += len(yb)
                bar.update(1)
            bar.set_postfix(loss=f"{running / max(count, 1):.4f}")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    net.eval()
    return time.perf_counter() - start


def train_deterministic(net: nn.Module, train: Split, recipe: TrainConfig, device: torch.device, seed: int,
                        desc: str = "train") -> float:
    torch.manual_seed(seed)
    opt = make_optimizer(net.parameters(), recipe)
    return fit(net, train, epochs=recipe.epochs, batch_size=recipe.batch_size, optimizer=opt, device=device,
               seed=seed, schedule=recipe.schedule, desc=desc)
