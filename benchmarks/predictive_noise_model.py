"""The predictive's noise model: exact weight sampling against per-position (local reparameterisation) noise.

On suites/quick.toml's pretrained LeNet (checkpoint cache) with its first conv layer variational at
sigma = ``--sigma`` everywhere (default 0.088, the mean posterior sigma STF-BNN reached on quick.toml)
and mu = the trained weights, it prints for the two noise models:

* the correlation, over S samples, of horizontally neighbouring outputs of the first conv layer
  (mean over channels, positions and ``--examples`` test digits), and the exact value under q from
  the closed form Cov = sum_j patch_p[j] patch_p'[j] sigma^2 + sigma_bias^2;
* the mean mutual information of the S-sample predictive on the test digits and on uniform noise,
  and the OOD AUROC of MI (test digits vs uniform noise) under each.

"weight sampling" is what every prediction uses now; "local reparam." is what conv layers used at
prediction time before (now only a training estimator).

    python benchmarks/predictive_noise_model.py [--samples 64] [--examples 500] [--sigma 0.088]
"""

from __future__ import annotations

import contextlib

from _common import build, environment, parser, setup


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--sigma", type=float, default=0.088)
    args = p.parse_args(argv)
    cfg, data, device = setup(args)

    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from stf_eval.bayes import (
        VariationalInit,
        convert,
        estimating,
        sample_logits,
        softplus_inverse,
        variational_layers,
    )

    base = build("deterministic", cfg, data, device).net
    x = data.test.x[:args.examples].to(device)
    noise = torch.rand((args.examples, *x.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
    init = VariationalInit(rho_init=float(softplus_inverse(args.sigma)), prior="trained", prior_sigma=0.1,
                           train_estimator="local_reparam")
    bnn, names = convert(base, "first", x[:1], init)
    layers = variational_layers(bnn)
    layer = layers[0]

    def first_layer_out(inp, local: bool):
        with torch.no_grad(), (estimating([layer]) if local else contextlib.nullcontext()):
            return sample_logits(layer, inp, args.samples, [layer])  # [S, B, C, H, W]

    def neighbour_corr(out):
        c = out - out.mean(0)
        left, right = c[..., :-1], c[..., 1:]
        corr = (left * right).mean(0) / (left.square().mean(0) * right.square().mean(0)).sqrt().clamp_min(1e-12)
        return float(corr.mean())

    xn = base[0](x[:64])  # the Normalize module in front of the first conv
    sig2 = F.softplus(layer.weight_rho).detach().flatten(1) ** 2
    bsig2 = F.softplus(layer.bias_rho).detach() ** 2
    patches = F.unfold(xn, layer.kernel_size, padding=layer.padding)
    h, w = xn.shape[-2:]
    patches = patches.reshape(xn.shape[0], -1, h, w)
    lft, rgt = patches[..., :-1], patches[..., 1:]
    cov = torch.einsum("oj,bjhw->bohw", sig2, lft * rgt) + bsig2[None, :, None, None]
    var = (torch.einsum("oj,bjhw->bohw", sig2, lft * lft) + bsig2[None, :, None, None]) ** 0.5 * \
          (torch.einsum("oj,bjhw->bohw", sig2, rgt * rgt) + bsig2[None, :, None, None]) ** 0.5
    exact = float((cov / var).mean())

    def mi(logits):
        p_ = logits.softmax(-1)
        m = p_.mean(0)
        ent = lambda q: -(q * q.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
        return ent(m) - ent(p_).mean(0)

    print(f"predictive noise model: {environment()}; LeNet {dict(cfg.net.options)}, layer {names[0]} at sigma "
          f"{args.sigma}, S = {args.samples}, {args.examples} test digits and {args.examples} uniform-noise images")
    print(f"exact neighbouring-position correlation under q (closed form, 64 digits): {exact:.3f}")
    out = {}
    torch.manual_seed(0)
    for label, local in (("weight sampling (now)", False), ("local reparam. (before)", True)):
        corr = neighbour_corr(first_layer_out(xn, local))
        with torch.no_grad(), (estimating(layers) if local else contextlib.nullcontext()):
            mi_in = torch.cat([mi(sample_logits(bnn, x[i:i + 32], args.samples, layers)) for i in range(0, len(x), 32)])
            mi_out = torch.cat([mi(sample_logits(bnn, noise[i:i + 32], args.samples, layers))
                                for i in range(0, len(noise), 32)])
        auroc = roc_auc_score([1] * len(mi_in) + [0] * len(mi_out), (-torch.cat([mi_in, mi_out])).numpy())
        out[label] = (corr, float(mi_in.mean()), float(mi_out.mean()), auroc)
        print(f"| {label} | neighbour corr {corr:.3f} | MI test {mi_in.mean():.4f} | MI noise {mi_out.mean():.4f} "
              f"| AUROC(MI, digits vs noise) {auroc:.3f} |")
    return out


if __name__ == "__main__":
    main()
