"""The training loop's device path and options (augmentation, channels-last, bf16), numerics flags,
the device in the cache key, and device checks. All run on the CPU; the CUDA run is in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stf_eval.config import TrainConfig
from stf_eval.data.base import Split
from stf_eval.training import StepOptions, augment_batch, fit, stage


def _net(channels=(4, 8)):
    from stf_eval.nets.lenet import lenet

    torch.manual_seed(0)
    return lenet((1, 12, 12), 3, [0.5], [0.25], channels=channels, hidden=16)


def _split(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, 1, 12, 12, generator=g), torch.randint(0, 3, (n,), generator=g), None)


def _train(options: StepOptions, epochs=2, seed=3, net=None):
    net = net or _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with stage() as log:
        fit(net, _split(), epochs=epochs, batch_size=32, optimizer=opt, device=torch.device("cpu"), seed=seed,
            options=options)
    return net, log


# -- augmentation ------------------------------------------------------------------------------------------
def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5) + 1
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = augment_batch(x, ("crop",), 2, g)
        assert out.shape == x.shape
        padded = F.pad(x, (2, 2, 2, 2))
        for i in range(2):  # independent check: the crop is one of the 25 windows of the padded image
            windows = [padded[i, :, r:r + 5, c:c + 5] for r in range(5) for c in range(5)]
            assert any(torch.equal(out[i], w) for w in windows)
    flips = [augment_batch(x, ("flip",), 0, g) for _ in range(40)]
    for out in flips:
        for i in range(2):
            assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    flipped = sum(int(torch.equal(out[0], x[0].flip(-1))) for out in flips)
    assert 8 <= flipped <= 32  # p = 1/2 over 40 draws


def test_augmented_training_depends_on_the_seed_only_not_on_what_ran_before():
    opts = StepOptions(augment=("crop", "flip"), crop_padding=2)
    torch.manual_seed(123)
    a, _ = _train(opts)
    torch.manual_seed(999)
    torch.rand(1000)  # a different global RNG history
    b, _ = _train(opts)
    plain, _ = _train(StepOptions())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pp) for pa, pp in zip(a.parameters(), plain.parameters()))


def test_augment_options_are_validated():
    from stf_eval.errors import ConfigError
    from stf_eval.params import parse_params

    cfg = parse_params(TrainConfig, {"augment": ["crop", "flip"], "crop_padding": 4}, "train")
    assert StepOptions.of(cfg).augment == ("crop", "flip")
    with pytest.raises(ConfigError, match="augment"):
        parse_params(TrainConfig, {"augment": ["rotate"]}, "train")


def test_shipped_recipes_augment_cifar_only():
    from pathlib import Path

    from stf_eval.config import load_config

    root = Path(__file__).resolve().parent.parent / "suites"
    assert set(load_config(root / "paper_cifar10.toml").train.augment) == {"crop", "flip"}
    for name in ("quick.toml", "smoke.toml"):
        assert load_config(root / name).train.augment == ()


# -- channels-last, bf16, epochs --------------------------------------------------------------------------
def test_channels_last_gives_the_nchw_numbers():
    x = torch.rand(16, 1, 12, 12)
    net = _net()
    ref = net(x)
    cl = _net().to(memory_format=torch.channels_last)
    assert torch.allclose(cl(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5)
    a, _ = _train(StepOptions(), epochs=1)
    b, _ = _train(StepOptions(channels_last=True), epochs=1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert b[1].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_variational_prediction_matches_nchw():
    """The S-sample pass of a variational first layer is the same under channels-last (same draws)."""
    from stf_eval.bayes import VariationalInit, convert, sample_logits, variational_layers

    x = torch.rand(8, 1, 12, 12)
    nets = []
    for channels_last in (False, True):
        net, _ = convert(_net(), "first", x[:1], VariationalInit(rho_init=-3.0))
        if channels_last:
            net.to(memory_format=torch.channels_last)
        nets.append(net)
    outs = []
    for net, xin in ((nets[0], x), (nets[1], x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(5)
        outs.append(sample_logits(net, xin, 4, variational_layers(net)))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_bf16_autocast_trains_on_cpu_and_epochs_are_timed():
    net, log = _train(StepOptions(amp="bf16"), epochs=2)
    assert len(log.epoch_seconds) == 2 and all(t > 0 for t in log.epoch_seconds)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert log.step is not None and log.step["batch_size"] == 32


def test_divergence_is_still_caught_once_per_epoch():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)

    def bad_loss(net, x, y):
        return F.cross_entropy(net(x), y) * float("nan")

    with pytest.raises(FloatingPointError, match="became nan"):
        fit(net, _split(), epochs=2, batch_size=32, optimizer=opt, device=torch.device("cpu"), seed=0,
            loss_fn=bad_loss)


def test_fit_does_not_read_the_loss_on_the_host_each_step(monkeypatch):
    """One host read of the loss per epoch (Tensor.__float__), not one per step."""
    reads = []
    original = torch.Tensor.__float__

    def counting(self):
        reads.append(1)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counting)
    _train(StepOptions(), epochs=2)  # 3 steps per epoch
    assert len(reads) == 2


def test_the_order_of_batches_is_drawn_on_the_cpu_for_every_device():
    from stf_eval.training import batches

    split = _split(10)
    a = [yb.tolist() for _, yb in batches(split, 4, torch.Generator().manual_seed(0))]
    b = [yb.tolist() for _, yb in batches(split, 4, torch.Generator().manual_seed(0), x=split.x.clone(),
                                           y=split.y.clone())]
    assert a == b


# -- numerics, cache key, device ------------------------------------------------------------------------
def test_cache_key_includes_device_type_and_numerics(tiny_cfg, tiny_data):
    from stf_eval.cache import CheckpointCache, cache_key
    from stf_eval.config import PluginSpec
    from stf_eval.models.base import BuildContext

    spec = PluginSpec(name="d", plugin="deterministic", params=None)

    def key(device):
        ctx = BuildContext(spec=spec, net=tiny_cfg.net, train=tiny_cfg.train, device=torch.device(device), seed=0,
                           cache=CheckpointCache(None))
        return ctx.key_spec(tiny_data)

    cpu, cuda = key("cpu"), key("cuda")
    assert cpu["numerics"]["device"] == "cpu" and cuda["numerics"]["device"] == "cuda"
    assert cpu["numerics"]["torch"] == torch.__version__.split("+")[0]
    assert "tf32_matmul" in cuda["numerics"] and "deterministic" in cuda["numerics"]
    assert cache_key(cpu) != cache_key(cuda)


def test_deterministic_option_sets_and_records_the_flags():
    from stf_eval.device import apply_numerics
    from stf_eval.environment import describe

    try:
        flags = apply_numerics(torch.device("cuda"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert flags["deterministic"] is True and flags["tf32_matmul"] is False
        import os

        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        env = describe(torch.device("cpu"), deterministic=True)
        assert env["deterministic"] is True and env["numerics"]["device"] == "cpu"
    finally:
        apply_numerics(torch.device("cpu"), deterministic=False)
        torch.backends.cudnn.allow_tf32 = True
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_is_a_top_level_option():
    from conftest import tiny_toml

    from stf_eval.config import load_config, resolved_dict

    cfg = load_config(text="deterministic = true\n" + tiny_toml())
    assert cfg.deterministic and resolved_dict(cfg)["deterministic"] is True


def test_bad_cuda_ordinal_is_a_one_line_config_error(monkeypatch):
    from stf_eval.device import resolve_device
    from stf_eval.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"cuda:7.*has 2") as info:
        resolve_device("cuda:7")
    assert "\n" not in str(info.value)


def test_row_cap_comes_from_the_device():
    from stf_eval.bayes.sampling import max_expanded_rows

    assert max_expanded_rows("cpu") == 512
    assert max_expanded_rows("cpu", gradient=True) == 256  # an attack's pass keeps its activations for backward
    assert max_expanded_rows(torch.device("cuda")) > 4 * 1000  # a GPU pass reaches 4 x the eval batch


def test_prediction_batch_follows_the_device_cap(tiny_cfg):
    from stf_eval.cache import CheckpointCache
    from stf_eval.config import PluginSpec
    from stf_eval.models.base import BuildContext, ModelPlugin

    def batch(device, s, gradient=False):
        ctx = BuildContext(spec=PluginSpec(name="m", plugin="m", params=None), net=tiny_cfg.net,
                           train=tiny_cfg.train, device=torch.device(device), seed=0, cache=CheckpointCache(None))
        return ModelPlugin(None, ctx).prediction_batch_size(s, gradient)

    eval_bs = tiny_cfg.train.eval_batch_size
    assert batch("cpu", 16) == 512 // 16 and batch("cpu", 1) == eval_bs
    assert batch("cpu", 16, gradient=True) == 256 // 16 and batch("cpu", 1, gradient=True) == eval_bs
    assert batch("cuda", 16) == min(eval_bs * 16, 16384) // 16  # only the sizing; nothing runs on it
