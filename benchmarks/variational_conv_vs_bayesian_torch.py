"""Benchmark 3: our variational conv layer against bayesian-torch's, on the same estimator.

The same network (suites/quick.toml's LeNet on mnist5k) with both conv layers made variational,
trained by the same loop (stf_eval.training.fit, the suite file's batch size and optimiser) on the
ELBO for one epoch; A = ours, B = bayesian-torch. Ratio A/B, target <= 0.8.

Two rows, each estimator against its bayesian-torch counterpart:
3a flipout (the convolutions' default, what STF-BNN and the full BNN train with) against
   Conv2dFlipout. Ours draws the signs per example and channel (Wen et al.'s rank-one form),
   bayesian-torch per element of the input and output tensors; both give each example its own
   perturbation of one weight draw.
3b weight sampling (one weight draw per batch) against Conv2dReparameterization.

bayesian-torch is installed only for this benchmark:  pip install bayesian-torch   (0.5.0 on PyPI)

    python benchmarks/variational_conv_vs_bayesian_torch.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import copy
import sys

from _common import Result, environment, interleaved, parser, result, setup

TARGET = 0.8


def _bayesian_torch():
    try:
        from bayesian_torch.layers import Conv2dFlipout, Conv2dReparameterization
        from bayesian_torch.models.dnn_to_bnn import get_kl_loss
    except ImportError:
        sys.exit("benchmark 3 needs bayesian-torch, which stf-eval does not depend on; install it with\n"
                 "    pip install bayesian-torch\n(0.5.0 on PyPI) and run again.")
    return {"flipout": Conv2dFlipout, "weight_sample": Conv2dReparameterization}, get_kl_loss


def conv_names(net) -> list[str]:
    from torch import nn

    return [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def ours(net, example, estimator: str):
    """Every conv layer of ``net`` made variational by the project's converter (nothing frozen), trained
    with ``estimator`` (the ELBO's training estimator: "flipout" or "weight_sample")."""
    from stf_eval.bayes import VariationalInit, convert, variational_layers

    init = VariationalInit(rho_rule="constant", rho_init=-5.0, prior="zero", prior_sigma=1.0,
                           train_estimator=estimator)
    new, _ = convert(net, conv_names(net), example, init=init, freeze_rest=False)
    return new, variational_layers(new)


def theirs(net, estimator: str):
    """Every conv layer of ``net`` replaced by bayesian-torch's layer for ``estimator`` (same mu)."""
    import torch

    layers, get_kl_loss = _bayesian_torch()
    new = copy.deepcopy(net)
    for name in conv_names(new):
        conv = new.get_submodule(name)
        layer = layers[estimator](conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                         conv.padding, conv.dilation, conv.groups, prior_mean=0.0,
                                         prior_variance=1.0, posterior_rho_init=-5.0, bias=conv.bias is not None)
        with torch.no_grad():
            layer.mu_kernel.copy_(conv.weight)
            if conv.bias is not None:
                layer.mu_bias.copy_(conv.bias)
        layer.dnn_to_bnn_flag = True  # forward returns the output only; the KL is taken in the loss
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, layer)
    return new, get_kl_loss


def main(argv=None) -> list[Result]:
    args = parser(__doc__.splitlines()[0], repeats=5).parse_args(argv)
    _bayesian_torch()  # fail early, with the install hint
    import torch
    import torch.nn.functional as F

    from stf_eval.bayes import ElboLoss
    from stf_eval.training import fit, make_optimizer

    cfg, data, device = setup(args)
    torch.manual_seed(0)
    base = build_net_like(cfg, data)
    example = data.train.x[:1]
    n_train = len(data.train)

    flip_net, flip_layers = ours(base, example, "flipout")
    plain_net, plain_layers = ours(base, example, "weight_sample")
    bt_flip_net, get_kl_loss = theirs(base, "flipout")
    bt_plain_net, _ = theirs(base, "weight_sample")

    def bt_loss(net, x, y):
        return F.cross_entropy(net(x), y) + get_kl_loss(net) / n_train

    def epoch_of(net, loss_fn):
        opt = make_optimizer(net.parameters(), cfg.train)

        def run() -> float:  # fit times the epoch itself (time.perf_counter, CUDA synchronised)
            return fit(net, data.train, epochs=1, batch_size=cfg.train.batch_size, optimizer=opt, device=device,
                       seed=0, loss_fn=loss_fn, desc="epoch")
        return run

    sides = [epoch_of(flip_net, ElboLoss(flip_layers, n_train)), epoch_of(bt_flip_net, bt_loss),
             epoch_of(plain_net, ElboLoss(plain_layers, n_train)), epoch_of(bt_plain_net, bt_loss)]
    t_flip, t_bt_flip, t_plain, t_bt_plain = interleaved(
        sides, args.repeats, warmup=1,
        label="bench3 (ours flipout, bayesian-torch flipout, ours weight sampling, bayesian-torch reparameterization)")
    details = {"network": f"lenet {dict(cfg.net.options)}, conv layers variational: {conv_names(base)}",
               "epoch": f"{n_train} examples, batch {cfg.train.batch_size}, {cfg.train.optimizer}",
               "environment": environment()}
    return [
        result("3a variational conv (flipout) vs bayesian-torch",
               "ours / Conv2dFlipout epoch time", TARGET, t_flip, t_bt_flip, details=details),
        result("3b variational conv (weight sampling, same estimator) vs bayesian-torch",
               "ours / Conv2dReparameterization epoch time", TARGET, t_plain, t_bt_plain),
    ]


def build_net_like(cfg, data):
    from stf_eval.nets.common import build_net

    return build_net(cfg.net, data.input_shape, data.num_classes, data.mean, data.std)


if __name__ == "__main__":
    for result in main():
        result.report()
