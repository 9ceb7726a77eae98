"""Benchmark 4: PGD with EOT on STF-BNN / (S x PGD on the deterministic net).

torchattacks PGD (L-inf, random start) on ``stf_bnn.predictive(S)`` (log of the mean softmax over S
samples drawn in one batched pass: expectation over transformation as a Monte-Carlo average) against the same
attack on ``deterministic.predictive()``, same examples, eps, steps. Ratio A / (S x B), target <= 1.0
(and no worse than 1.2 on a loaded machine).
By default both attacks run as the adversarial suite runs them (``stf_eval.attacks.run``), in batches
of the size the suite picks from the attack's S (``model.prediction_batch_size(S, gradient=True)`` examples);
``--one-batch`` attacks all examples in one batch instead.

    python benchmarks/pgd_eot_vs_deterministic.py [--repeats 4] [--examples 200] [--steps 10] [--one-batch]
"""

from __future__ import annotations

from _common import Result, build, environment, interleaved, parser, result, setup, suite_params, timer

TARGET = 1.0  # and no worse than 1.2 on a loaded machine


def main(argv=None) -> list[Result]:
    p = parser(__doc__.splitlines()[0], repeats=4)
    p.add_argument("--examples", type=int, default=200, help="test examples attacked in one batch (default: the adversarial suite's batch_size)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius (images in [0, 1])")
    p.add_argument("--samples", type=int, default=0, help="S (default: stf_bnn's evaluation S)")
    p.add_argument("--one-batch", action="store_true", help="all examples in one batch (not the suite's batches)")
    args = p.parse_args(argv)
    import torchattacks

    from stf_eval import attacks

    cfg, data, device = setup(args)
    det = build("deterministic", cfg, data, device)
    stf = build("stf_bnn", cfg, data, device, **suite_params(cfg, "stf_bnn"))
    s = args.samples or stf.n_samples
    x = data.test.x[:args.examples].to(device)
    y = data.test.y[:args.examples].to(device)

    def pgd(model, samples):
        predictive = model.predictive(samples)
        if args.one_batch:
            return torchattacks.PGD(predictive, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps,
                                    random_start=True)
        settings = attacks.AttackSettings(steps=args.steps, batch_size=model.prediction_batch_size(samples, gradient=True))
        return lambda x, y: attacks.run("pgd", predictive, x.cpu(), y.cpu(), args.eps, settings)

    attack_stf, attack_det = pgd(stf, s), pgd(det, 1)
    t_stf, t_det = interleaved([timer(lambda: attack_stf(x, y), device), timer(lambda: attack_det(x, y), device)],
                               args.repeats, warmup=1, label="bench4 (A PGD-EOT on stf, B PGD on deterministic)", scale_b=s)
    details = {"S": s, "attack": f"torchattacks PGD, eps {args.eps}, {args.steps} steps, random start, "
                                 f"{len(x)} test examples " + ("in one batch" if args.one_batch else
                                 f"in batches of {stf.prediction_batch_size(s, gradient=True)} (stf) / {det.prediction_batch_size(1)} (det)"),
               "environment": environment()}
    return [result("4 PGD with EOT on STF-BNN vs S x PGD on the deterministic net",
                   "PGD time on stf_bnn.predictive(S) / (S x PGD time on deterministic)", TARGET, t_stf, t_det,
                   scale_b=float(s), details=details)]


if __name__ == "__main__":
    for r in main():
        r.report()
