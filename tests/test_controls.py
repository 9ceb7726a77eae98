"""The two controls (finetuned, sgd_twin) and the fixed input normalisation of DP-trained nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stf_eval.models.dp_sgd import FIXED_MEAN, FIXED_STD, DpSgdParams, non_private_loader
from stf_eval.models.finetuned import FinetunedParams
from stf_eval.models.sgd_twin import SgdTwinParams
from stf_eval.models.stf_bnn import ConvertedBNNParams
from stf_eval.nets.common import Normalize


def _normalize_of(net: nn.Module) -> Normalize:
    return next(m for m in net.modules() if isinstance(m, Normalize))


@pytest.mark.parametrize("name", ["dp_sgd", "sgd_twin"])
def test_dp_and_twin_normalise_with_fixed_constants_not_data_statistics(name, fitted_models, tiny_data):
    norm = _normalize_of(fitted_models(name).net)
    assert torch.allclose(norm.mean, torch.full_like(norm.mean, FIXED_MEAN))
    assert torch.allclose(norm.std, torch.full_like(norm.std, FIXED_STD))
    assert not torch.allclose(norm.mean.flatten(), torch.as_tensor(tiny_data.mean, dtype=torch.float32))
    # the deterministic base still uses the training split's statistics
    base = _normalize_of(fitted_models("deterministic").net)
    assert torch.allclose(base.mean.flatten(), torch.as_tensor(tiny_data.mean, dtype=torch.float32))


def test_twin_defaults_are_dp_sgd_recipe_and_finetune_budget_is_stf_stage_two():
    dp, twin = DpSgdParams(), SgdTwinParams()
    for field in ("epochs", "lr", "optimizer", "momentum", "batch_size"):
        assert getattr(twin, field) == getattr(dp, field)
    assert FinetunedParams().epochs == ConvertedBNNParams().svi_epochs


def test_twin_trains_without_privacy_is_cached_and_learns(fitted_models, tiny_data, tiny_cfg):
    from stf_eval.runner import build_model

    twin, dp = fitted_models("sgd_twin"), fitted_models("dp_sgd")
    notes = twin.capabilities().notes
    assert notes["private"] is False and "dp_epsilon" not in notes
    assert [type(m) for m in twin.net.modules()] == [type(m) for m in dp.net.modules()]  # same architecture
    acc = (twin.predict_samples(tiny_data.test.x)[0].argmax(1) == tiny_data.test.y).float().mean()
    assert acc > 0.3  # 3 tiny epochs of dp_sgd's recipe; chance is 0.1
    again = build_model(twin.ctx.spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), twin.ctx.cache)
    assert again.from_cache["train"]
    for a, b in zip(again.net.state_dict().values(), twin.net.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(twin.net.state_dict().values(), dp.net.state_dict().values()))


def test_twin_step_equals_opacus_step_with_clipping_off_and_no_noise():
    """The twin's loss scaling gives exactly opacus' update when clipping never binds and noise is 0."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    make = lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))  # noqa: E731
    ref = make()
    a, b = make(), make()
    a.load_state_dict(ref.state_dict())
    b.load_state_dict(ref.state_dict())
    loader = DataLoader(TensorDataset(x, y), batch_size=10)

    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    private, opt_a, _ = PrivacyEngine().make_private(module=a, optimizer=opt_a, data_loader=loader,
                                                    noise_multiplier=0.0, max_grad_norm=1e9)
    poisson = non_private_loader(loader)
    xb, yb = x[:13], y[:13]  # a Poisson batch larger than the expected 10
    opt_a.zero_grad()
    (F.cross_entropy(private(xb), yb, reduction="sum") / len(yb)).backward()
    opt_a.step()

    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    opt_b.zero_grad()
    (F.cross_entropy(b(xb), yb, reduction="sum") / poisson.expected_batch_size).backward()
    opt_b.step()
    assert poisson.expected_batch_size == opt_a.expected_batch_size == 10
    for pa, pb in zip(private._module.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_finetuned_trains_the_shared_base_further_and_leaves_it_intact(fitted_models, tiny_data, tiny_cfg):
    from stf_eval.runner import build_model

    det, ft = fitted_models("deterministic"), fitted_models("finetuned")
    for a, b in zip(ft.base_net.state_dict().values(), det.net.state_dict().values()):
        assert torch.equal(a, b)  # the same pretrained base, untouched by fine-tuning
    assert any(not torch.equal(a, b) for a, b in zip(ft.net.state_dict().values(), det.net.state_dict().values()))
    assert set(ft.train_seconds) == {"pretrain", "finetune"}
    acc = (ft.predict_samples(tiny_data.test.x)[0].argmax(1) == tiny_data.test.y).float().mean()
    assert acc > 0.5
    again = build_model(ft.ctx.spec, tiny_cfg, tiny_data, 0, torch.device("cpu"), ft.ctx.cache)
    assert again.from_cache == {"pretrain": True, "finetune": True}
    for a, b in zip(again.net.state_dict().values(), ft.net.state_dict().values()):
        assert torch.equal(a, b)
