"""Benchmark 1: STF-BNN stage-2 (SVI) epoch time / full-BNN epoch time, same network and data.

Both are the registered model plugins fitted for one epoch on suites/quick.toml's mnist5k training
split with its LeNet and batch size; the seconds are those the plugins' own training stages measure
(``model.train_seconds``: stf_bnn's "svi" stage, full_bnn's "train" stage). STF-BNN's pretrained base
comes from the checkpoint cache (trained once, on the first run); its SVI stage and the full BNN are
never loaded from the cache, so every repetition trains afresh. Ratio A/B, target <= 0.4.

C, the floor: the pretrained base with only the layers STF-BNN converts trained (plain weights, cross
entropy, Adam), every other layer frozen, one epoch through the same ``fit``. Any method that fits
only those layers pays this much: the whole forward pass and the input gradients of every frozen
layer. C/B is printed as a second row ("1 floor"); when it is above 0.4, no estimator for the first
layer can bring A/B to the target on this network, however cheap.
The full BNN is the suite file's full_bnn recipe for one epoch, so `--set models.full_bnn.KEY=VALUE`
(its train_estimator, say) reaches it as `--set models.stf_bnn.KEY=VALUE` reaches STF-BNN.

    python benchmarks/svi_epoch_vs_full_bnn.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import copy
import statistics

from _common import Result, build, environment, interleaved, parser, result, setup, suite_params

TARGET = 0.4  # issue 17, row 1


def base_only_cache(root):
    """A checkpoint cache that serves and stores only networks without variational layers (the
    pretrained base), so the stage under test always trains."""
    from stf_eval.bayes import variational_layers
    from stf_eval.cache import CheckpointCache

    class BaseOnly(CheckpointCache):
        def load(self, key, module):
            return None if variational_layers(module) else super().load(key, module)

        def save(self, key, module, spec, meta):
            if not variational_layers(module):
                super().save(key, module, spec, meta)

    return BaseOnly(root)


def main(argv=None) -> list[Result]:
    args = parser(__doc__.splitlines()[0], repeats=5).parse_args(argv)
    cfg, data, device = setup(args)
    import torch

    from stf_eval.seeding import derive_seed
    from stf_eval.training import fit

    stf_kw = {**suite_params(cfg, "stf_bnn"), "svi_epochs": 1}
    # the suite's full_bnn recipe (and --set models.full_bnn.* overrides), one epoch
    full_kw = {**suite_params(cfg, "full_bnn"), "epochs": 1}
    cache = base_only_cache(cfg.cache_dir)
    base = build("deterministic", cfg, data, device).net  # the pretrained base, trained once (and cached)

    def fitted(name, **params):
        return build(name, cfg, data, device, cache=cache, **params)

    last = {}

    def stf_epoch() -> float:
        model = last["stf"] = fitted("stf_bnn", **stf_kw)
        assert not model.from_cache["svi"]
        return model.train_seconds["svi"]

    def full_epoch() -> float:
        model = last["full"] = build("full_bnn", cfg, data, device, cache=None, **full_kw)
        assert not model.from_cache["train"]
        return model.train_seconds["train"]

    def floor_epoch() -> float:
        net = copy.deepcopy(base)
        for p in net.parameters():
            p.requires_grad_(False)
        stf = last["stf"]  # the warm-up round runs A first: the layers it converted and its recipe
        trained = [p for name in stf.converted for p in net.get_submodule(name).parameters()]
        for p in trained:
            p.requires_grad_(True)
        opt = torch.optim.Adam(trained, lr=stf.params.svi_lr)
        return fit(net, data.train, epochs=1, batch_size=stf.params.batch_size or cfg.train.batch_size,
                   optimizer=opt, device=device, seed=derive_seed(0, "svi"), schedule=cfg.train.schedule,
                   desc="floor", train_mode=False)

    t_stf, t_full, t_floor = interleaved([stf_epoch, full_epoch, floor_epoch], args.repeats, warmup=1,
                                         label="bench1 (A stf_bnn svi epoch, B full_bnn epoch, C floor)")
    stf, full = last["stf"], last["full"]
    details = {"network": base_arch(cfg),
               "epoch": f"{len(data.train)} examples of {data.name}, batch {cfg.train.batch_size}",
               "trainable parameters": f"stf_bnn svi {stf.trainable_params()} "
                                       f"(layers {stf.converted}), full_bnn {full.trainable_params()}",
               "environment": environment()}
    floor_details = {"floor": f"{base_arch(cfg)} with layers {stf.converted} trained as plain weights, "
                              "the rest frozen: the forward pass and frozen input gradients alone",
                     "STF-BNN's estimator above the floor (A/C)":
                         f"{statistics.median(a / c for a, c in zip(t_stf, t_floor)):.3f}"}
    return [result("1 STF-BNN SVI epoch vs full-BNN epoch", "stf_bnn svi epoch / full_bnn epoch", TARGET,
                   t_stf, t_full, details=details),
            result("1 floor: first layer alone, no estimator, vs full-BNN epoch",
                   "first-layer-only deterministic epoch / full_bnn epoch", TARGET, t_floor, t_full,
                   details=floor_details)]


def base_arch(cfg) -> str:
    return f"{cfg.net.arch} {dict(cfg.net.options)}"


if __name__ == "__main__":
    for r in main():
        r.report()
