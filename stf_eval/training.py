"""The training loop shared by every model that trains a network.

Device path: the training split moves to the device once when it fits (``DATA_ON_DEVICE_FRACTION`` of
the free CUDA memory; always on the CPU), the shuffling order is drawn on the CPU from the training
generator (so CPU and GPU runs visit the batches in the same order), and the loss is accumulated on
the device and read once per epoch: there is no host synchronisation per step. The divergence check
is made on that per-epoch sum (a non-finite step loss makes the sum non-finite).

Options of the [train] recipe that change how a step runs, not what it computes (``StepOptions``):
``augment`` (random crop with zero padding, horizontal flip; drawn on the device from a generator
seeded by (seed, "augment"), so the draws do not depend on what ran before), ``amp`` (bf16 autocast),
``channels_last`` (NHWC memory format for conv nets; same numbers to float rounding). They reach
``fit`` explicitly or from the stage being trained (``BuildContext.cached`` opens a ``stage`` whose
recipe they are read from), so every model's training stages follow the recipe without each plugin
passing them along. ``stage`` also collects the seconds of every epoch, which the cache keeps.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.base import Split
from .progress import bars_disabled
from .seeding import derive_seed

#: The training split is copied to a CUDA device when it takes at most this fraction of its free memory.
DATA_ON_DEVICE_FRACTION = 0.25


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


# -- step options and the stage being trained ----------------------------------------------------------
@dataclass(frozen=True)
class StepOptions:
    """How a training step runs: augmentation, autocast, memory format (see the module docstring)."""

    augment: tuple[str, ...] = ()
    crop_padding: int = 4
    amp: str = "none"  # "none" | "bf16"
    channels_last: bool = False

    @classmethod
    def of(cls, recipe: TrainConfig | None) -> StepOptions:
        if recipe is None:
            return cls()
        return cls(augment=tuple(getattr(recipe, "augment", ()) or ()),
                   crop_padding=int(getattr(recipe, "crop_padding", 4)),
                   amp=str(getattr(recipe, "amp", "none")),
                   channels_last=bool(getattr(recipe, "channels_last", False)))


@dataclass
class StageLog:
    """What ``fit`` calls made while one stage trained: seconds per epoch, and the last step's recipe."""

    options: StepOptions = field(default_factory=StepOptions)
    epoch_seconds: list[float] = field(default_factory=list)
    step: dict | None = None  # what profiling.measure_train_step needs to replay one step


_STAGE: contextvars.ContextVar[StageLog | None] = contextvars.ContextVar("stf_eval_stage", default=None)


@contextmanager
def stage(recipe: TrainConfig | None = None) -> Iterator[StageLog]:
    """Collect the epoch seconds of every ``fit`` inside; ``fit`` takes its step options from ``recipe``."""
    log = StageLog(options=StepOptions.of(recipe))
    token = _STAGE.set(log)
    try:
        yield log
    finally:
        _STAGE.reset(token)


def current_options() -> StepOptions:
    log = _STAGE.get()
    return log.options if log is not None else StepOptions()


def prepare_net(net: nn.Module, device: torch.device, options: StepOptions | None = None) -> nn.Module:
    """Move ``net`` to ``device`` in the memory format of ``options`` (channels-last for conv nets)."""
    options = options or current_options()
    net.to(device)
    if options.channels_last and has_conv(net):
        net.to(memory_format=torch.channels_last)
    return net


def has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) or "Conv2d" in type(m).__name__ for m in net.modules())


def as_input_format(x: torch.Tensor, options: StepOptions) -> torch.Tensor:
    if options.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# -- data augmentation -------------------------------------------------------------------------------------
AUGMENTATIONS = ("crop", "flip")


def augment_batch(x: torch.Tensor, augment: tuple[str, ...], padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image (``padding`` pixels each side) and horizontal flip (p = 1/2).

    Drawn on ``x``'s device from ``generator`` (one offset pair and one flip per example), vectorised.
    """
    if not augment or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    if "crop" in augment and padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
        rows = off[0][:, None] + torch.arange(h, device=x.device)  # [n, h]
        cols = off[1][:, None] + torch.arange(w, device=x.device)  # [n, w]
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if "flip" in augment:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# -- the loop ------------------------------------------------------------------------------------------
def batches(split: Split, batch_size: int, generator: torch.Generator | None, shuffle: bool = True,
            x: torch.Tensor | None = None, y: torch.Tensor | None = None):
    """Mini-batches of (x, y); the order is drawn on the CPU from ``generator`` whatever the device
    of ``x``/``y`` (default: the split's tensors), so every device visits the same batches."""
    x = split.x if x is None else x
    y = split.y if y is None else y
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if x.device.type != "cpu":
        order = order.to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def data_on(device: torch.device, split: Split) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The split's tensors on ``device`` when they fit (CUDA: a fraction of free memory), else on the CPU."""
    if device.type == "cpu":
        return split.x, split.y, True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if split.x.nbytes + split.y.nbytes > DATA_ON_DEVICE_FRACTION * free:
            return split.x, split.y, False
    return split.x.to(device), split.y.to(device), True


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(x), y)


def autocast(device: torch.device, options: StepOptions):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=options.amp == "bf16")


def fit(net: nn.Module, train: Split, *, epochs: int, batch_size: int, optimizer: torch.optim.Optimizer,
        device: torch.device, seed: int, schedule: str = "none", loss_fn: LossFn = cross_entropy_loss,
        desc: str = "train", train_mode: bool = True, options: StepOptions | None = None) -> float:
    """Minimise ``loss_fn`` over ``epochs``; return the wall-clock seconds spent.

    ``train_mode=False`` keeps the network in eval mode (frozen batch-norm statistics, as the second
    stage of STF-BNN needs). ``options``: step options (default: the current stage's recipe).
    """
    options = options or current_options()
    log = _STAGE.get()
    gen = torch.Generator().manual_seed(seed)
    aug_gen = None
    if options.augment:
        aug_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "augment"))
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    sched = make_scheduler(optimizer, schedule, epochs * steps_per_epoch)
    prepare_net(net, device, options)
    net.train(train_mode)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    x_all, y_all, on_device = data_on(device, train)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=bars_disabled())
    try:
        for _ in range(epochs):
            epoch_start = time.perf_counter()
            running = torch.zeros((), device=device)
            count = 0
            for xb, yb in batches(train, batch_size, gen, x=x_all, y=y_all):
                if not on_device:
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if aug_gen is not None:
                    xb = augment_batch(xb, options.augment, options.crop_padding, aug_gen)
                xb = as_input_format(xb, options)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, options):
                    loss = loss_fn(net, xb, yb)
                loss.backward()
                optimizer.step()
                if sched is not None:
                    sched.step()
                running += loss.detach().float() * len(yb)  # stays on the device: no sync per step
                count += len(yb)
                bar.update(1)
            mean_loss = float(running) / max(count, 1)  # the one host sync of the epoch
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if log is not None:
                log.epoch_seconds.append(time.perf_counter() - epoch_start)
            if not torch.isfinite(torch.tensor(mean_loss)):
                raise FloatingPointError(f"{desc}: training loss became {mean_loss}")
            bar.set_postfix(loss=f"{mean_loss:.4f}")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if log is not None:
        log.step = {"net": net, "loss_fn": loss_fn, "optimizer": optimizer, "batch_size": min(batch_size, len(train)),
                    "train_mode": train_mode, "options": options, "x": train.x[:min(batch_size, len(train))],
                    "y": train.y[:min(batch_size, len(train))]}
    net.eval()
    return seconds


def train_deterministic(net: nn.Module, train: Split, recipe: TrainConfig, device: torch.device, seed: int,
                        desc: str = "train") -> float:
    torch.manual_seed(seed)
    opt = make_optimizer(net.parameters(), recipe)
    return fit(net, train, epochs=recipe.epochs, batch_size=recipe.batch_size, optimizer=opt, device=device,
               seed=seed, schedule=recipe.schedule, desc=desc, options=StepOptions.of(recipe))
