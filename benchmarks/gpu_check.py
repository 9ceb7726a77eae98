"""One epoch of suites/paper_cifar10.toml's recipe on a small subset, on a CUDA GPU, with and without
the GPU options, and what each measured (run by gpu_check.sh; prints one line per figure).

The CIFAR-10 files are used when present (``$STF_EVAL_DATA``); otherwise random 32x32 images of the
same shape stand in (timings and memory depend on shapes, not pixel values) and the output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2048, help="training examples in the subset (default 2048)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)

    from stf_eval.config import load_config
    from stf_eval.data.base import Split
    from stf_eval.device import apply_numerics, resolve_device
    from stf_eval.nets.common import build_net
    from stf_eval.profiling import measure_train_step
    from stf_eval.training import StepOptions, fit, make_optimizer, stage

    device = resolve_device(args.device)
    cfg = load_config(ROOT / "suites" / "paper_cifar10.toml", overrides=[f"data.max_train={args.examples}"])
    try:
        from stf_eval.data.plan import build_data

        data = build_data(cfg)
        train, shape, classes, mean, std, source = (data.train, data.input_shape, data.num_classes, data.mean,
                                                    data.std, "CIFAR-10 files")
    except Exception as exc:  # noqa: BLE001 - no data files on this machine: same shapes, random pixels
        g = torch.Generator().manual_seed(0)
        train = Split(torch.rand(args.examples, 3, 32, 32, generator=g), torch.randint(0, 10, (args.examples,),
                                                                                      generator=g), None)
        shape, classes, mean, std = (3, 32, 32), 10, [0.5] * 3, [0.25] * 3
        source = f"random 32x32 images (CIFAR-10 not found: {type(exc).__name__})"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, data: {source}, {len(train)} training examples, net {cfg.net.arch}")
    apply_numerics(device, False)
    variants = [("plain", dict(channels_last=False, amp="none", augment=())),
                ("recipe (augment, channels-last)", dict(channels_last=cfg.train.channels_last, amp=cfg.train.amp,
                                                         augment=cfg.train.augment)),
                ("recipe + bf16", dict(channels_last=cfg.train.channels_last, amp="bf16", augment=cfg.train.augment))]
    for name, opts in variants:
        recipe = dataclasses.replace(cfg.train, epochs=2, **opts)
        torch.manual_seed(0)
        net = build_net(cfg.net, shape, classes, mean, std)
        opt = make_optimizer(net.parameters(), recipe)
        with stage(recipe) as log:
            start = time.perf_counter()
            fit(net, train, epochs=2, batch_size=recipe.batch_size, optimizer=opt, device=device, seed=0,
                schedule=recipe.schedule, options=StepOptions.of(recipe))
            total = time.perf_counter() - start
        step = measure_train_step(log.step, device)
        print(f"{name}: epoch seconds {[round(t, 3) for t in log.epoch_seconds]} (first includes warm-up), "
              f"total {total:.2f} s, {len(train) / log.epoch_seconds[-1]:.0f} examples/s; "
              f"train step peak memory {step['mb'] if step['mb'] is None else round(step['mb'], 1)} MiB "
              f"({step['method']}, batch {step.get('batch')})")
    # channels-last gives the NCHW numbers on this device too
    torch.manual_seed(0)
    net = build_net(cfg.net, shape, classes, mean, std).to(device).eval()
    x = train.x[:64].to(device)
    with torch.no_grad():
        a = net(x)
        b = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    print(f"channels-last vs NCHW forward, max abs difference: {(a - b).abs().max().item():.2e} "
          f"(TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
