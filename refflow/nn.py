r"""Small neural networks for conditioners: ``MLP`` and ``MaskedMLP`` (MADE's building block).

Networks are dataclasses of weight and bias arrays, so ``refflow.tree`` sees their
parameters like any bijection's, and they run on any backend.

Notes
-----
Lecture: "Coupling flows" (the conditioner Theta is an arbitrary function, "in this case a
ReLU MLP" for NICE) and "Autoregressive flows" (masked conditioners).

.. math::

    h_0 = x, \quad h_\ell = \sigma(h_{\ell-1} W_\ell + b_\ell), \quad
    \mathrm{MLP}(x) = h_{L-1} W_L + b_L

References
----------
1. M. Germain, K. Gregor, I. Murray, H. Larochelle. MADE: Masked Autoencoder for
   Distribution Estimation. ICML, 2015.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np

from refflow.checks import check_int

__all__ = ["MLP", "MaskedMLP", "ACTIVATIONS", "activation"]


def _relu(x):
    return np.maximum(x, 0.0)


def _softplus(x):
    return np.logaddexp(x, 0.0)


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": _relu,
    "softplus": _softplus,
    "sigmoid": _sigmoid,
    "elu": _elu,
    "identity": lambda x: x,
}


def activation(name: str):
    """The activation function called ``name`` (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _init_layers(rng, sizes, zero_last, dtype):
    weights, biases = [], []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        scale = 0.0 if (last and zero_last) else 1.0 / math.sqrt(fan_in)
        weights.append(scale * rng.standard_normal((fan_in, fan_out), dtype=dtype))
        biases.append(0.0 * rng.standard_normal((fan_out,), dtype=dtype))
    return tuple(weights), tuple(biases)


@dataclass(frozen=True, eq=False)
class MLP:
    r"""A multilayer perceptron x -> h_{L-1} W_L + b_L with a fixed activation between layers.

    Parameters
    ----------
    weights : tuple of (in, out) arrays.
    biases : tuple of (out,) arrays.
    activation : name of the hidden activation (``ACTIVATIONS``).

    Examples
    --------
    >>> from refflow.backend import rng
    >>> net = MLP.init(rng(0), [2, 8, 3])
    >>> net(rng(1).standard_normal((5, 2))).shape
    (5, 3)
    """

    weights: tuple
    biases: tuple
    activation: str = field(default="tanh", metadata={"static": True})

    def __post_init__(self):
        activation(self.activation)
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("weights: expected as many weight matrices as bias vectors (>= 1)")

    @classmethod
    def init(cls, rng, sizes, activation: str = "tanh", zero_last: bool = False,
             dtype: Any = None) -> MLP:
        """Random weights N(0, 1/fan_in), zero biases; ``zero_last`` makes the output 0."""
        sizes = [check_int("sizes", s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError("sizes: expected at least input and output sizes")
        weights, biases = _init_layers(rng, sizes, zero_last, dtype)
        return cls(weights, biases, activation)

    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            # a matmul with inner dimension 1 is slow in BLAS: broadcast instead
            h = h * w[0] + b if w.shape[0] == 1 else h @ w + b
            if i < last:
                h = act(h)
        return h


@dataclass(frozen=True, eq=False)
class MaskedMLP:
    r"""An MLP whose weight matrices are multiplied by fixed binary masks (MADE).

    ``masks[l]`` has the shape of ``weights[l]``; entry (i, j) = 0 cuts the connection from
    unit i to unit j. With masks built from degrees (``refflow.autoregressive.MADE``),
    output block i depends only on inputs before i in the ordering.
    """

    weights: tuple
    biases: tuple
    masks: tuple = field(metadata={"static": True})
    activation: str = field(default="tanh", metadata={"static": True})

    def __post_init__(self):
        activation(self.activation)
        if not (len(self.weights) == len(self.biases) == len(self.masks)):
            raise ValueError("masks: expected one mask per weight matrix")
        for i, (w, m) in enumerate(zip(self.weights, self.masks)):
            if tuple(w.shape) != tuple(m.shape):
                raise ValueError(f"masks[{i}]: expected shape {w.shape}, got {m.shape}")

    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x
        last = len(self.weights) - 1
        for i, (w, b, m) in enumerate(zip(self.weights, self.biases, self.masks)):
            h = h @ (w * m) + b
            if i < last:
                h = act(h)
        return h
