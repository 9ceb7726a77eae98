"""Variational layers, the converter that makes chosen layers of a trained net Bayesian, KL and ELBO."""

from .convert import (
    VariationalInit,
    convert,
    convertible_layers,
    distribution_param_count,
    kl_divergence,
    replace_module,
    select_layers,
    trace_call_order,
    traced_calls,
    variational_layers,
)
from .layers import (
    DEFAULT_CONV_ESTIMATOR,
    TRAIN_ESTIMATORS,
    VariationalConv2d,
    VariationalLayer,
    VariationalLinear,
    gaussian_kl,
    softplus_inverse,
    total_kl,
)
from .sampling import ElboLoss, estimating, repeat_batch, sample_logits

__all__ = [
    "DEFAULT_CONV_ESTIMATOR", "ElboLoss", "TRAIN_ESTIMATORS", "VariationalConv2d", "VariationalInit",
    "VariationalLayer", "VariationalLinear", "convert", "convertible_layers", "distribution_param_count",
    "estimating", "gaussian_kl", "kl_divergence", "repeat_batch", "replace_module", "sample_logits",
    "select_layers", "softplus_inverse", "total_kl", "trace_call_order", "traced_calls", "variational_layers",
]
