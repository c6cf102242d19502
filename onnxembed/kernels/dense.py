"""sentence-transformers' Dense module in numpy: a linear layer and its activation, after pooling.

In scope: ``activation(x @ weight.T + bias)`` for the activations the exporter carries, in float32 (float64
inside the exponentials and GELU's erf approximation), within ~3e-7 of torch.
Not in scope: reading the weights (runtime/weights.py).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from onnxembed.errors import InvalidArgumentError

Activation = Literal["identity", "tanh", "relu", "gelu", "sigmoid", "silu"]
DENSE_ACTIVATIONS: tuple[str, ...] = get_args(Activation)

# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7 in erf, so GELU's absolute error stays below ~3.3e-7.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (numpy has none and scipy is not a runtime dependency)."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * x)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    return sign * (1.0 - poly * np.exp(-x * x))  # type: ignore[no-any-return]


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    """``activation`` applied elementwise to float32 ``x``; the names are torch.nn's, lowercased."""
    if activation == "identity":
        return x
    if activation == "tanh":
        return np.tanh(x)
    if activation == "relu":
        return np.maximum(x, np.float32(0))
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if activation == "silu":
        return (x / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if activation == "gelu":  # torch.nn.GELU() is the exact, erf form
        wide = x.astype(np.float64)
        return (0.5 * wide * (1.0 + _erf(wide / np.sqrt(2.0)))).astype(np.float32)
    raise InvalidArgumentError(f"activation {activation!r} is not supported; choose from {DENSE_ACTIVATIONS}")


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str) -> np.ndarray:
    """One Dense layer: (batch, in) float32 -> (batch, out) float32.

    Args:
        x: (batch, in_features) float32.
        weight: (out_features, in_features) float32, as torch.nn.Linear stores it.
        bias: (out_features,) float32, or None.
        activation: One of DENSE_ACTIVATIONS.
    """
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise InvalidArgumentError(f"dense: input {x.shape} does not fit weight {weight.shape} (out, in)")
    out = x.astype(np.float32, copy=False) @ weight.T
    if bias is not None:
        out += bias
    return activate(out, activation)
