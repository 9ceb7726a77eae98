"""Training estimators of the variational layers: gradient variance and epoch time, side by side.

For suites/quick.toml's LeNet and mnist5k training split, two settings:

* ``first``: STF-BNN's case, the first conv layer variational (prior N(w_trained, 0.1^2)), the rest
  of the pretrained net frozen;
* ``all``: the full BNN's case, every conv/linear layer variational (prior N(0, 1)).

mu starts at the pretrained weights and sigma at ``--sigma`` everywhere (default 0.05, between the
initial 0.0067 and the ~0.09 STF-BNN reaches on quick.toml), so every estimator is measured at the
same, realistic point. For each estimator (every variational layer set to it; ``auto`` = flipout on
conv layers, local reparameterisation on linear ones):

* gradient variance: on each of ``--batches`` fixed training batches, ``--draws`` gradients of the
  per-example negative ELBO (NLL + KL / N_train) with fresh noise; the per-coordinate variance over
  draws, summed over all mu (resp. rho) entries, then the median over batches (and min, max). Also the
  noise-to-signal ratio: that sum over the squared norm of the mean gradient;
* epoch time: one SVI epoch (Adam, the recipe's batch size) over the training split, the estimators
  interleaved (A B C D, then D C B A, ...) for ``--repeats`` repetitions; median, min and max of the
  wall seconds and of the process CPU seconds (less disturbed when the machine is shared).

    python benchmarks/estimator_variance.py [--threads 1] [--repeats 3] [--draws 64] [--batches 4]
"""

from __future__ import annotations

import statistics
import sys

from _common import build, environment, interleaved, parser, setup

ESTIMATORS = ("weight_sample", "local_reparam", "flipout", "auto")


def variational_copy(base, selection: str, example, sigma: float, estimator: str):
    """The pretrained ``base`` with ``selection`` variational, mu = its weights, sigma everywhere."""
    from stf_eval.bayes import VariationalInit, convert, softplus_inverse, variational_layers

    rho = float(softplus_inverse(sigma))
    if selection == "first":
        init = VariationalInit(rho_init=rho, prior="trained", prior_sigma=0.1, train_estimator=estimator)
    else:
        init = VariationalInit(rho_init=rho, prior="zero", prior_sigma=1.0, train_estimator=estimator)
    net, _ = convert(base, selection, example, init)
    return net.eval(), variational_layers(net)


def gradient_variance(net, layers, x, y, n_train: int, draws: int, seed: int) -> dict:
    """Summed per-coordinate variance over ``draws`` gradients, for mu and for rho, and noise/signal."""
    import torch

    from stf_eval.bayes import ElboLoss

    loss_fn = ElboLoss(layers, n_train)
    groups = {"mu": [p for layer in layers for p in (layer.weight_mu, layer.bias_mu) if p is not None],
              "rho": [p for layer in layers for p in (layer.weight_rho, layer.bias_rho) if p is not None]}
    grads = {k: [] for k in groups}
    torch.manual_seed(seed)
    for _ in range(draws):
        loss = loss_fn(net, x, y)
        flat = torch.autograd.grad(loss, groups["mu"] + groups["rho"])
        n_mu = len(groups["mu"])
        grads["mu"].append(torch.cat([g.flatten() for g in flat[:n_mu]]))
        grads["rho"].append(torch.cat([g.flatten() for g in flat[n_mu:]]))
    out = {}
    for k, gs in grads.items():
        g = torch.stack(gs)
        var = g.var(0).sum().item()
        out[k] = var
        out[f"{k}_noise_signal"] = var / max(g.mean(0).square().sum().item(), 1e-30)
    return out


def one_epoch(base, selection, example, sigma, estimator, train, batch_size, lr, device, seed):
    """A callable running one SVI epoch from the same starting point; returns its wall seconds."""
    import torch

    from stf_eval.bayes import ElboLoss
    from stf_eval.training import fit

    def run() -> float:
        net, layers = variational_copy(base, selection, example, sigma, estimator)
        torch.manual_seed(seed)
        opt = torch.optim.Adam([q for layer in layers for q in layer.variational_parameters()], lr=lr)
        return fit(net, train, epochs=1, batch_size=batch_size, optimizer=opt, device=device, seed=seed,
                   loss_fn=ElboLoss(layers, len(train)), desc=f"{selection}/{estimator}", train_mode=False)
    return run


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--draws", type=int, default=64, help="gradient draws per batch (default %(default)s)")
    p.add_argument("--batches", type=int, default=4, help="fixed training batches (default %(default)s)")
    p.add_argument("--sigma", type=float, default=0.05, help="sigma of every variational weight (default %(default)s)")
    p.add_argument("--settings", default="first,all", help="comma-separated: first, all (default %(default)s)")
    args = p.parse_args(argv)
    cfg, data, device = setup(args)

    import torch

    base = build("deterministic", cfg, data, device).net  # the pretrained LeNet (checkpoint cache)
    example = data.train.x[:1].to(device)
    bs = cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train), generator=gen)
    batches = [(data.train.x[order[i * bs:(i + 1) * bs]].to(device), data.train.y[order[i * bs:(i + 1) * bs]].to(device))
               for i in range(args.batches)]
    print(f"estimator benchmark: {environment()}; mnist5k train {len(data.train)}, batch {bs}, sigma {args.sigma}, "
          f"{args.draws} draws x {args.batches} batches, {args.repeats} timed epochs each")
    results = {}
    for selection in args.settings.split(","):
        table = {}
        for est in ESTIMATORS:
            net, layers = variational_copy(base, selection, example, args.sigma, est)
            per_batch = [gradient_variance(net, layers, x, y, len(data.train), args.draws, seed=1 + b)
                         for b, (x, y) in enumerate(batches)]
            table[est] = {k: [r[k] for r in per_batch] for k in per_batch[0]}
            print(f"  [{selection}] {est}: gradient variance done", file=sys.stderr, flush=True)
        runs = [one_epoch(base, selection, example, args.sigma, est, data.train, bs, 0.05, device, seed=0)
                for est in ESTIMATORS]
        times = interleaved(runs, args.repeats, warmup=1, label=f"{selection} epoch")
        for est, t in zip(ESTIMATORS, times):
            table[est]["epoch_seconds"] = list(t)
            table[est]["epoch_cpu_seconds"] = list(t.cpu)
        results[selection] = table
        print(f"\n## layers = {selection!r}  (median over batches [min, max]; epoch seconds median [min, max])")
        print("| estimator | var(grad mu) | var(grad rho) | noise/signal mu | noise/signal rho | epoch s (wall) "
              "| epoch s (process CPU) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for est in ESTIMATORS:
            r = table[est]
            print(f"| {est} | {spread(r['mu'])} | {spread(r['rho'])} | {spread(r['mu_noise_signal'])} | "
                  f"{spread(r['rho_noise_signal'])} | {spread(r['epoch_seconds'], '{:.2f}')} | "
                  f"{spread(r['epoch_cpu_seconds'], '{:.2f}')} |")
    return results


if __name__ == "__main__":
    main()
