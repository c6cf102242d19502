"""Dense layer kernels against hand-computed values and the standard library (numpy only), and torch when present."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxembed.kernels import DENSE_ACTIVATIONS, dense
from onnxembed.kernels.dense import activate

X = np.linspace(-9, 9, 721, dtype=np.float32).reshape(-1, 1)

REFERENCE = {
    "identity": lambda v: v,
    "tanh": math.tanh,
    "relu": lambda v: max(v, 0.0),
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)),
    "silu": lambda v: v / (1.0 + math.exp(-v)),
}


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
def test_activation_matches_the_standard_library(activation: str) -> None:
    expected = np.array([[REFERENCE[activation](float(v))] for v in X[:, 0]], dtype=np.float64)
    actual = activate(X, activation)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
def test_activation_matches_torch(activation: str) -> None:
    torch = pytest.importorskip("torch")
    module = {
        "identity": torch.nn.Identity(),
        "tanh": torch.nn.Tanh(),
        "relu": torch.nn.ReLU(),
        "gelu": torch.nn.GELU(),
        "sigmoid": torch.nn.Sigmoid(),
        "silu": torch.nn.SiLU(),
    }[activation]
    np.testing.assert_allclose(activate(X, activation), module(torch.from_numpy(X)).numpy(), rtol=0, atol=1e-6)


def test_dense_by_hand() -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    weight = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 0.0]], dtype=np.float32)  # (out 3, in 2)
    bias = np.array([0.0, 0.0, -1.0], dtype=np.float32)
    np.testing.assert_array_equal(dense(x, weight, bias, "relu"), [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dense(x, weight, None, "identity"), [[1.0, -1.5, 0.0]])


def test_wrong_shapes_and_names_are_errors() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        dense(np.ones((1, 3), np.float32), np.ones((2, 2), np.float32), None, "identity")
    with pytest.raises(ValueError, match="softplus"):
        activate(X, "softplus")
