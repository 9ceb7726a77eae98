"""Mean-field Gaussian variational Linear and Conv2d layers.

q(w) = N(mu, sigma^2) per weight, sigma = softplus(rho). Every forward call draws a fresh sample,
whatever the module's train()/eval() mode (attack libraries call eval(); STF-BNN's SVI runs in eval
mode to keep batch-norm frozen): the mode never decides how a layer samples.

**Prediction is always exact weight sampling** (Blundell et al. 2015): w = mu + sigma * eps, out =
op(x, w), one weight draw shared by every position (and every row) of a group of the batch.
``sample_groups`` = G gives G independent draws, row r of the batch using draw r mod G (the S-sample
pass sets G = S and lays the batch out example-major, so draw s is sample s). Every prediction,
attack and membership query therefore sees the noise model of q itself, including the correlation
of the output positions of a convolution, which share one weight draw.

**Training estimators** (``train_estimator``), used only while ``estimating`` is set (the ELBO loss
sets it around its forward pass, see sampling.ElboLoss); all give unbiased gradients of the ELBO
except local reparameterisation on a convolution:

* ``"weight_sample"``: the predictive above, one draw per batch (per sample index): exact, but the
  whole batch shares one draw, so gradients are noisy.
* ``"local_reparam"`` (Kingma et al. 2015): the pre-activation of each unit is Gaussian given the
  input: mean = op(x, mu), var = op(x^2, sigma^2), out = mean + sqrt(var) * eps, independent per
  example and output unit. Exact for a Linear layer on [B, in] inputs. For a convolution it treats
  the output positions as independent (under q they share a draw): it optimises a different
  objective, so it is a training estimator only, never a predictive.
* ``"flipout"`` (Wen et al. 2018): one draw dW = sigma * eps per batch, decorrelated across examples
  by random signs: out = op(x, mu) + s_out * op(x * s_in, dW), s_in, s_out independent +-1 per
  example and channel (shared by the positions of an example). Each example sees an exact draw
  from q (spatial correlation included); the examples of a batch are nearly independent.
* ``"auto"``: local reparameterisation for Linear layers on 2-D inputs (exact and cheapest there),
  ``DEFAULT_CONV_ESTIMATOR`` otherwise (chosen by benchmarks/estimator_variance.py; docs/models.md).

A layer that the input reaches through deterministic, parameter-free modules only (STF-BNN's first
layer) sees S identical copies of each example in the S-sample pass. ``fed_by_input`` marks it (the
converter sets it), and then the convolution runs once on the original batch instead of S times:
weight sampling applies the S weight draws stacked along the output channels (exact: row i * S + s is
example i under draw s); local reparameterisation broadcasts mean and variance over S noise draws.

KL(q || p) to a Gaussian prior N(m, s^2) is closed form; m is zero or a given tensor (for STF-BNN:
the trained weights). It is computed only when asked (``kl()``), never inside forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_VAR_FLOOR = 1e-16  # keeps sqrt differentiable where an input patch is exactly zero

#: the training estimators a layer accepts (``"auto"`` resolves per layer, see the module docstring)
TRAIN_ESTIMATORS = ("auto", "flipout", "local_reparam", "weight_sample")
#: the estimator ``"auto"`` uses for convolutions (and Linear layers on inputs with extra dimensions)
DEFAULT_CONV_ESTIMATOR = "flipout"


def softplus_inverse(sigma: torch.Tensor | float) -> torch.Tensor:
    """rho such that softplus(rho) = sigma (sigma > 0), stable for small and large sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return torch.where(sigma > 20.0, sigma, torch.log(torch.expm1(sigma.clamp_max(20.0))))


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_mu: torch.Tensor | None,
                prior_sigma: float) -> torch.Tensor:
    """sum_i KL(N(mu_i, sigma_i^2) || N(m_i, s^2)) with m = prior_mu (zero when None)."""
    diff2 = mu.square() if prior_mu is None else (mu - prior_mu).square()
    var_p = prior_sigma * prior_sigma
    return (math.log(prior_sigma) - torch.log(sigma) + (sigma.square() + diff2) / (2.0 * var_p) - 0.5).sum()


def total_kl(layers) -> torch.Tensor:
    """Sum of the closed-form KL terms of the given variational layers."""
    layers = list(layers)
    if not layers:
        raise ValueError("no variational layer to take the KL of")
    total = layers[0].kl()
    for layer in layers[1:]:
        total = total + layer.kl()
    return total


class VariationalLayer(nn.Module):
    """Parameters, prior and KL shared by the variational Linear and Conv2d layers."""

    def __init__(self, weight_shape: tuple[int, ...], out_features: int, bias: bool, *, rho_init: float = -5.0,
                 prior_sigma: float = 1.0, train_estimator: str = "auto"):
        super().__init__()
        if prior_sigma <= 0:
            raise ValueError(f"prior_sigma must be positive, got {prior_sigma}")
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, float(rho_init)))
        if bias:
            self.bias_mu = nn.Parameter(torch.zeros(out_features))
            self.bias_rho = nn.Parameter(torch.full((out_features,), float(rho_init)))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        # prior means: None = zero-mean prior (the buffers then stay out of the state dict)
        self.register_buffer("weight_prior_mu", None)
        self.register_buffer("bias_prior_mu", None)
        self.prior_sigma = float(prior_sigma)
        if train_estimator not in TRAIN_ESTIMATORS:
            raise ValueError(f"train_estimator must be one of {TRAIN_ESTIMATORS}, got {train_estimator!r}")
        self.train_estimator = train_estimator
        self.estimating = False  # set by the ELBO loss around its forward pass: use train_estimator
        self.sample_groups = 1  # set by the S-sample pass (see sampling.sample_logits)
        self.fed_by_input = False  # set by the converter: upstream of this layer is deterministic
        self.shared_input = False  # set by the S-sample pass: the sample_groups groups are identical

    # -- distribution -------------------------------------------------------------------------
    def set_prior(self, sigma: float, weight_mean: torch.Tensor | None = None,
                  bias_mean: torch.Tensor | None = None) -> None:
        """Prior N(mean, sigma^2) per weight; means None give N(0, sigma^2)."""
        if sigma <= 0:
            raise ValueError(f"prior sigma must be positive, got {sigma}")
        self.prior_sigma = float(sigma)
        self.weight_prior_mu = None if weight_mean is None else weight_mean.detach().clone()
        if self.bias_mu is not None:
            self.bias_prior_mu = None if bias_mean is None else bias_mean.detach().clone()

    def kl(self) -> torch.Tensor:
        """Closed-form KL(q || prior) summed over this layer's weights and biases."""
        total = gaussian_kl(self.weight_mu, F.softplus(self.weight_rho), self.weight_prior_mu, self.prior_sigma)
        if self.bias_mu is not None:
            total = total + gaussian_kl(self.bias_mu, F.softplus(self.bias_rho), self.bias_prior_mu,
                                        self.prior_sigma)
        return total

    def distribution_numel(self) -> int:
        """Number of mu and rho entries."""
        return sum(p.numel() for p in (self.weight_mu, self.weight_rho, self.bias_mu, self.bias_rho)
                   if p is not None)

    def variational_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.weight_mu, self.weight_rho, self.bias_mu, self.bias_rho) if p is not None]

    # -- sampling -----------------------------------------------------------------------------
    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _op_grouped(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``_op`` with weight [G, *w] and bias [G, out]: row r of the batch uses draw r mod G."""
        raise NotImplementedError

    def _op_stacked(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``_op`` of a batch [b, ...] under G draws -> [b * G, ...], row i * G + g using draw g."""
        raise NotImplementedError

    def estimator_for(self, x: torch.Tensor) -> str:
        """The sampling rule of a forward call on ``x``: "weight_sample" unless the ELBO is estimating."""
        if not self.estimating:
            return "weight_sample"
        if self.train_estimator != "auto":
            return self.train_estimator
        return "local_reparam" if isinstance(self, VariationalLinear) and x.dim() == 2 else DEFAULT_CONV_ESTIMATOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_sigma = F.softplus(self.weight_rho)
        b_sigma = None if self.bias_rho is None else F.softplus(self.bias_rho)
        groups = self.sample_groups
        if groups > 1 and x.shape[0] % groups:
            raise ValueError(f"batch of {x.shape[0]} cannot be split into {groups} sample groups")
        estimator = self.estimator_for(x)
        shared = groups > 1 and self.shared_input
        if estimator == "flipout":
            return self._flipout(x, w_sigma, b_sigma)
        if shared:  # rows i*G .. i*G+G-1 are copies of example i: compute on one copy of each
            x = x.reshape(x.shape[0] // groups, groups, *x.shape[1:])[:, 0]
        if estimator == "local_reparam":
            mean = self._op(x, self.weight_mu, self.bias_mu)
            var = self._op(x * x, w_sigma * w_sigma, None if b_sigma is None else b_sigma * b_sigma)
            std = torch.sqrt(var + _VAR_FLOOR)
            if not shared:
                return _add_noise(mean, std, torch.randn_like(mean))
            eps = torch.randn((mean.shape[0], groups, *mean.shape[1:]), device=mean.device, dtype=mean.dtype)
            return _add_noise(mean.unsqueeze(1), std.unsqueeze(1), eps).reshape(-1, *mean.shape[1:])
        if groups == 1:
            weight = torch.addcmul(self.weight_mu, w_sigma, torch.randn_like(w_sigma))
            bias = None if b_sigma is None else torch.addcmul(self.bias_mu, b_sigma, torch.randn_like(b_sigma))
            return self._op(x, weight, bias)
        weight = self.weight_mu + w_sigma * torch.randn((groups, *w_sigma.shape), device=x.device, dtype=x.dtype)
        bias = None
        if b_sigma is not None:
            bias = self.bias_mu + b_sigma * torch.randn((groups, *b_sigma.shape), device=x.device, dtype=x.dtype)
        return self._op_stacked(x, weight, bias) if shared else self._op_grouped(x, weight, bias)

    def _flipout(self, x: torch.Tensor, w_sigma: torch.Tensor, b_sigma: torch.Tensor | None) -> torch.Tensor:
        """Flipout: op(x, mu) + s_out * op(x * s_in, sigma * eps), signs per example and channel.

        One perturbation sigma * eps per call; example n sees it multiplied elementwise by the rank-one
        sign matrix s_out(n) s_in(n)^T, which leaves its distribution (a symmetric Gaussian) unchanged,
        so each example's output is an exact weight-sampling draw. The bias noise is drawn per example.
        """
        mean = self._op(x, self.weight_mu, self.bias_mu)
        delta = w_sigma * torch.randn_like(w_sigma)
        pert = self._op(x * _rademacher(self._sign_shape(x), x), delta, None)
        out = torch.addcmul(mean, pert, _rademacher(self._sign_shape(pert), pert))  # one pass, not mul + add
        if b_sigma is not None:
            noise = b_sigma * torch.randn((out.shape[0], b_sigma.shape[0]), device=out.device, dtype=out.dtype)
            out = out + noise.reshape(self._sign_shape(out))
        return out

    def _channel_dim(self, t: torch.Tensor) -> int:
        return 1 if isinstance(self, VariationalConv2d) else t.dim() - 1

    def _sign_shape(self, t: torch.Tensor) -> tuple[int, ...]:
        """[B, C, 1, 1] for a conv tensor, [B, 1, ..., C] for a linear one: one sign per example and
        channel, shared by every position of the example."""
        shape = [1] * t.dim()
        dim = self._channel_dim(t)
        shape[0], shape[dim] = t.shape[0], t.shape[dim]
        return tuple(shape)


def _rademacher(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Independent +-1 entries of ``shape`` (dtype and device of ``like``)."""
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype).mul_(2).sub_(1)


def _add_noise(mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """mean + std * eps; without autograd it is written into eps (no new allocation: large fresh
    allocations cost page faults on CPU)."""
    if torch.is_grad_enabled() and (mean.requires_grad or std.requires_grad):
        return torch.addcmul(mean, std, eps)
    return torch.addcmul(mean, std, eps, out=eps)


class VariationalLinear(VariationalLayer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        super().__init__((out_features, in_features), out_features, bias, **kwargs)
        self.in_features, self.out_features = in_features, out_features
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))  # nn.Linear's default init

    @classmethod
    def from_module(cls, layer: nn.Linear, **kwargs) -> VariationalLinear:
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, **kwargs)
        return new.to(layer.weight.device)

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def _op_grouped(self, x, weight, bias):
        g = weight.shape[0]
        xg = x.reshape(x.shape[0] // g, g, -1, x.shape[-1])  # [b, G, rest, in]
        out = torch.einsum("bgri,goi->bgro", xg, weight)
        if bias is not None:
            out = out + bias[:, None, :]
        return out.reshape(*x.shape[:-1], self.out_features)

    def _op_stacked(self, x, weight, bias):
        g = weight.shape[0]
        out = F.linear(x, weight.reshape(-1, weight.shape[-1]), None if bias is None else bias.reshape(-1))
        out = out.reshape(*x.shape[:-1], g, self.out_features).movedim(-2, 1)  # [b, G, rest..., out]
        return out.reshape(g * x.shape[0], *out.shape[2:])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias_mu is not None}, train_estimator={self.train_estimator!r}")


class VariationalConv2d(VariationalLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, **kwargs):
        k = nn.modules.utils._pair(kernel_size)
        super().__init__((out_channels, in_channels // groups, *k), out_channels, bias, **kwargs)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = nn.modules.utils._pair(stride), padding if isinstance(padding, str) \
            else nn.modules.utils._pair(padding)
        self.dilation, self.groups = nn.modules.utils._pair(dilation), groups
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))  # nn.Conv2d's default init

    @classmethod
    def from_module(cls, layer: nn.Conv2d, **kwargs) -> VariationalConv2d:
        if layer.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got padding_mode={layer.padding_mode!r}")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, bias=layer.bias is not None, **kwargs)
        return new.to(layer.weight.device)

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _op_grouped(self, x, weight, bias):
        # G weight draws as one grouped convolution: the G rows of each example become channel groups
        g = weight.shape[0]
        n, c, h, w = x.shape
        out = F.conv2d(x.reshape(n // g, g * c, h, w), weight.reshape(-1, *weight.shape[2:]),
                       None if bias is None else bias.reshape(-1), self.stride, self.padding, self.dilation,
                       self.groups * g)
        return out.reshape(n, self.out_channels, *out.shape[-2:])

    def _op_stacked(self, x, weight, bias):
        # G weight draws on one batch: one convolution with G * out_channels filters
        g = weight.shape[0]
        if self.groups != 1:  # stacking filters would mix channel groups; use copies instead
            return self._op_grouped(x.repeat_interleave(g, dim=0), weight, bias)
        out = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                       self.stride, self.padding, self.dilation)
        return out.reshape(g * x.shape[0], self.out_channels, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias_mu is not None}, "
                f"train_estimator={self.train_estimator!r}")
