"""Benchmark 2: S-sample STF-BNN prediction time / (S x deterministic forward time).

A = ``stf_bnn.predict_samples(x)`` at the evaluation S (the S samples drawn in one batched pass);
B = ``deterministic.predict_samples(x)`` (one pass), on the same fixed batch of mnist5k test examples,
both built from suites/quick.toml (they share the pretrained LeNet). Ratio A / (S x B), target <= 1.2.
Also shown: A against S separate one-sample passes (what vectorising the samples saves), and the
ratio when predict_samples is given batches of ``--rows`` expanded rows (S x batch) instead of its
default (4 x eval_batch_size rows): on a CPU, huge expanded batches are memory-bound.

    python benchmarks/mc_prediction_vs_deterministic.py [--repeats 7] [--examples 256] [--samples S]
"""

from __future__ import annotations

import statistics

import torch
from _common import Result, build, environment, interleaved, parser, result, setup, suite_params, timer

TARGET = 1.0  # issue 17, row 2


def main(argv=None) -> list[Result]:
    p = parser(__doc__.splitlines()[0], repeats=7)
    p.add_argument("--examples", type=int, default=256, help="test examples in the fixed batch")
    p.add_argument("--samples", type=int, default=0, help="S (default: stf_bnn's evaluation S)")
    p.add_argument("--rows", type=int, default=256, help="expanded rows per batch for the chunked variant D")
    args = p.parse_args(argv)
    cfg, data, device = setup(args)
    det = build("deterministic", cfg, data, device)
    stf = build("stf_bnn", cfg, data, device, **suite_params(cfg, "stf_bnn"))
    s = args.samples or stf.n_samples
    x = data.test.x[:args.examples]

    @torch.no_grad()
    def one_at_a_time():
        for _ in range(s):
            for start in range(0, len(x), cfg.train.eval_batch_size):
                stf.sample_logits(x[start:start + cfg.train.eval_batch_size].to(device), 1).cpu()

    chunk = max(1, args.rows // s)
    sides = [timer(lambda: stf.predict_samples(x, n_samples=s), device), timer(lambda: det.predict_samples(x), device),
             timer(one_at_a_time, device), timer(lambda: stf.predict_samples(x, n_samples=s, batch_size=chunk), device)]
    t_stf, t_det, t_loop, t_chunk = interleaved(
        sides, args.repeats, warmup=1, scale_b=s,
        label="bench2 (A stf S-sample, B deterministic x1, C stf S x 1-sample, D stf S-sample in small batches)")
    loop = [a / c for a, c in zip(t_stf, t_loop)]
    chunked = [d / (s * b) for d, b in zip(t_chunk, t_det)]
    details = {"S": s, "batch": f"{len(x)} test examples of {data.name}, eval batch size {cfg.train.eval_batch_size}",
               "vectorised S-sample pass / S one-sample passes": f"{statistics.median(loop):.3f} "
                                                                 f"(min {min(loop):.3f}, max {max(loop):.3f})",
               f"same ratio as A with predict batches of {chunk} examples ({chunk * s} expanded rows)":
                   f"{statistics.median(chunked):.3f} (min {min(chunked):.3f}, max {max(chunked):.3f})",
               "environment": environment()}
    return [result("2 S-sample STF-BNN prediction vs S deterministic passes",
                   "stf_bnn predict_samples / (S x deterministic predict_samples)", TARGET, t_stf, t_det,
                   scale_b=float(s), details=details)]


if __name__ == "__main__":
    for r in main():
        r.report()
