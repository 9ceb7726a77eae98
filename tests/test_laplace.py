"""The last-layer Laplace example plugin (laplace-torch): samples match the library's own predictive."""

from __future__ import annotations

import pytest
import torch

from stf_eval.errors import ConfigError

pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install 'stf-eval[laplace]')")


@pytest.fixture(scope="module")
def laplace_model(fitted_models):
    return fitted_models("laplace")


def test_logit_samples_follow_the_libraries_glm_predictive(laplace_model, tiny_data):
    """Mean and covariance of our S weight-sample logits = laplace-torch's linearised predictive.

    For a last-layer posterior the network is linear in the sampled weights, so the logits' exact
    distribution is N(f_mu, f_var) from the library's GLM predictive: an independent check of how
    the sampled parameter vector is mapped back onto the layer (weight rows, then the bias).
    """
    model = laplace_model
    x = tiny_data.test.x[:6]
    torch.manual_seed(0)
    with torch.no_grad():
        s = model.sample_logits(x, 4000)  # [S, B, C]
        f_mu, f_var = model.la._glm_predictive_distribution(x)
    f_mu, f_var = f_mu.detach(), f_var.detach()
    assert s.shape == (4000, 6, tiny_data.num_classes)
    sd = f_var.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.allclose(s.mean(0), f_mu, atol=float(5 * sd.max() / 4000 ** 0.5))
    centred = s - s.mean(0)
    cov = torch.einsum("sbc,sbd->bcd", centred, centred) / (s.shape[0] - 1)
    scale = f_var.diagonal(dim1=-2, dim2=-1).amax(-1)[:, None, None]
    assert torch.allclose(cov / scale, f_var / scale, atol=0.1)


def test_samples_are_differentiable_and_seeded(laplace_model, tiny_data):
    from stf_eval.seeding import seeded

    x = tiny_data.test.x[:4].clone().requires_grad_(True)
    with seeded(0, "t"):
        a = laplace_model.sample_logits(x, 3)
    with seeded(0, "t"):
        b = laplace_model.sample_logits(x, 3)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    a.logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    caps = laplace_model.capabilities()
    assert caps.stochastic and caps.differentiable and caps.retrainable
    assert "prior precision" in caps.notes["laplace"]


def test_missing_library_is_one_line(monkeypatch):
    import stf_eval.models.laplace as lp
    from stf_eval.config import load_config

    monkeypatch.setattr(lp, "laplace_missing", lambda: "the laplace model needs laplace-torch, which is not "
                                                        "installed: " + lp.INSTALL_HINT)
    with pytest.raises(ConfigError, match=r"models\.la\.plugin: the laplace model needs laplace-torch.*"
                                          r"stf-eval\[laplace\]") as err:
        load_config(text="[models.la]\nplugin = 'laplace'\n")
    assert "\n" not in str(err.value)
