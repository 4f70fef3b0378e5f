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
from refflow.fast import replaceable
from refflow.ops import maximum, minimum, where

__all__ = ["MLP", "MaskedMLP", "Conv2d", "ConvNet", "ACTIVATIONS", "DERIVATIVES", "activation",
           "derivative", "dense", "masked_dense", "sigmoid", "softplus", "softplus_inverse",
           "lipswish"]


def _relu(x):
    return maximum(x, 0.0)


def softplus(x):
    r"""Softplus log(1 + exp(x)), computed as logaddexp(x, 0): no overflow for large x.

    >>> round(float(softplus(0.0)), 12), float(softplus(1000.0))
    (0.69314718056, 1000.0)
    """
    return np.logaddexp(x, 0.0)


def softplus_inverse(y):
    r"""Inverse softplus log(exp(y) - 1) for y > 0, as y + log(-expm1(-y)).

    Written so that it neither overflows for large y nor cancels for small y.

    >>> bool(abs(softplus(softplus_inverse(1e-8)) - 1e-8) < 1e-20), float(softplus_inverse(800.0))
    (True, 800.0)
    """
    return y + np.log(-np.expm1(-y))


def sigmoid(x):
    r"""Logistic sigmoid 1 / (1 + exp(-x)), as (tanh(x / 2) + 1) / 2: no overflow for any x.

    >>> float(sigmoid(0.0)), float(sigmoid(-1000.0)), float(sigmoid(1000.0))
    (0.5, 0.0, 1.0)
    """
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _elu(x):
    return where(x > 0, x, np.expm1(minimum(x, 0.0)))


def lipswish(x):
    r"""LipSwish x sigmoid(x) / 1.1: |slope| <= 1 (a 1-Lipschitz activation).

    The largest slope of x sigmoid(x) is 1.0998 (at x ~ 2.4), so dividing by 1.1 bounds it
    by 1 (Chen et al., Residual Flows, NeurIPS 2019). Not monotone: it decreases below
    x ~ -1.28, with slope > -0.1 there.

    >>> float(lipswish(0.0)), round(float(lipswish(10.0)), 4)
    (0.0, 9.0905)
    """
    return x * sigmoid(x) / 1.1


def _identity(x):
    return x


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": _relu,
    "softplus": softplus,
    "sigmoid": sigmoid,
    "elu": _elu,
    "lipswish": lipswish,
    "identity": _identity,
}


def _d_tanh(x):
    return 1.0 - np.tanh(x) ** 2


def _d_sigmoid(x):
    s = sigmoid(x)
    return s * (1.0 - s)


def _d_lipswish(x):
    s = sigmoid(x)
    return (s + x * s * (1.0 - s)) / 1.1


# act'(x) written out, for code that needs the derivative itself (a Jacobian built by hand,
# as in residual blocks); relu' is [x > 0] (its value at the kink 0 is taken as 0)
DERIVATIVES = {
    "tanh": _d_tanh,
    "relu": lambda x: where(x > 0, np.ones_like(x), np.zeros_like(x)),
    "softplus": sigmoid,
    "sigmoid": _d_sigmoid,
    "elu": lambda x: np.exp(minimum(x, 0.0)),
    "lipswish": _d_lipswish,
    "identity": np.ones_like,
}


def activation(name: str):
    """The activation function called ``name`` (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def derivative(name: str):
    """The derivative act'(x) of the activation called ``name`` (one of ``DERIVATIVES``)."""
    if name not in DERIVATIVES:
        raise ValueError(f"activation: expected one of {sorted(DERIVATIVES)}, got {name!r}")
    return DERIVATIVES[name]


@replaceable("dense")
def dense(x, w, b, activation: str = "identity"):
    r"""One layer act(x W + b): x (..., D_in), W (D_in, D_out), b broadcasting to (..., D_out).

    Notes
    -----
    Lecture: "Coupling flows" (the conditioner Theta, an MLP). ``MLP`` is a loop of these.
    Cost O(N D_in D_out).
    """
    return ACTIVATIONS[activation](x @ w + b)


@replaceable("masked_dense")
def masked_dense(x, w, mask, b, activation: str = "identity"):
    r"""One MADE layer act(x (W * M) + b); the binary mask M (D_in, D_out) cuts connections.

    Notes
    -----
    Lecture: "Autoregressive flows" (masked conditioners). ``MaskedMLP`` is a loop of these.
    Cost O(N D_in D_out).
    """
    return ACTIVATIONS[activation](x @ (w * mask) + b)


def _init_layers(rng, sizes, zero_last, dtype):
    weights, biases = [], []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        scale = 0.0 if (last and zero_last) else 1.0 / math.sqrt(fan_in)
        weights.append(scale * rng.standard_normal((fan_in, fan_out), dtype=dtype))
        biases.append(np.zeros_like(weights[-1], shape=(fan_out,)))
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
        last = len(self.weights) - 1
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = dense(h, w, b, self.activation if i < last else "identity")
        return h


@dataclass(frozen=True, eq=False)
class MaskedMLP:
    r"""An MLP whose weight matrices are multiplied by fixed binary masks (MADE).

    ``masks[l]`` has the shape of ``weights[l]``; entry (i, j) = 0 cuts the connection from
    unit i to unit j. With masks built from degrees (``refflow.autoregressive.MADE``),
    output block i depends only on inputs before i in the ordering.
    A conditional MADE adds C rows to every weight matrix, the context's weights U_l (mask
    rows of ones); ``conditioned(c)`` folds them into per-sample biases.
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

    def hidden(self, x):
        """The activations of the last hidden layer (x itself when there is none)."""
        for w, b, m in zip(self.weights[:-1], self.biases[:-1], self.masks[:-1]):
            x = masked_dense(x, w, m, b, self.activation)
        return x

    def output_units(self, h, units: slice):
        """The output layer's ``units`` alone, from the last hidden activations h: a MADE
        block costs a (H, P) product instead of (H, D P)."""
        return masked_dense(h, self.weights[-1][:, units], self.masks[-1][:, units],
                            self.biases[-1][..., units])

    def __call__(self, x):
        return masked_dense(self.hidden(x), self.weights[-1], self.masks[-1], self.biases[-1])

    def conditioned(self, context) -> MaskedMLP:
        r"""This network at a fixed context c: the last C rows of each layer fold into its bias.

        A conditional network (MADE with a context) reads [h_{l-1}, c] in every layer l, the
        last C rows U_l of ``weights[l]`` weighting c. At a given c the layer is
        h_{l-1} (W_l * M_l) + (b_l + c (U_l * M^c_l)): a masked layer of the same kind whose
        bias has one row per sample, so the layers (and their fast kernels) run unchanged.

        Parameters
        ----------
        context : (..., C) array, one row per sample of the batch or a single (C,) row.

        Returns
        -------
        MaskedMLP without the context rows; its biases have shape (..., out).
        """
        c = context.shape[-1]
        rows = [w.shape[0] - c for w in self.weights]  # the inputs that are not the context
        return MaskedMLP(
            tuple(w[:n] for w, n in zip(self.weights, rows)),
            # b + c (U * M^c), one fused masked layer with the identity activation
            tuple(masked_dense(context, w[n:], m[n:], b)
                  for w, m, b, n in zip(self.weights, self.masks, self.biases, rows)),
            tuple(m[:n] for m, n in zip(self.masks, rows)),
            self.activation,
        )


# ------------------------------------------------------------------ convolutions for images


def _init_conv(rng, c_in: int, c_out: int, kernel_size: int, zero: bool, dtype: Any):
    fan_in = kernel_size * kernel_size * c_in
    scale = 0.0 if zero else 1.0 / math.sqrt(fan_in)
    weight = scale * rng.standard_normal((kernel_size, kernel_size, c_in, c_out), dtype=dtype)
    return weight, np.zeros_like(weight, shape=(c_out,))


@dataclass(frozen=True, eq=False)
class Conv2d:
    r"""A k x k convolution, zero padded to the same size: y_ij = b + sum_ac x_{i+a-p,j+c-p} W_ac.

    Parameters
    ----------
    weight : (k, k, C_in, C_out) array, k odd; p = k // 2.
    bias : (C_out,) array.

    Notes
    -----
    Images are channels-last, (..., H, W, C). The convolution is written as im2col: the
    k*k shifted windows of the padded image are laid side by side on the channel axis,
    (N, H, W, k*k*C_in), and multiplied by the weight reshaped to (k*k*C_in, C_out), one
    matrix product for the whole batch. When C_out < C_in (a conditioner's last layer) the
    same sum is taken the other way round: one product x W_ac for all k*k offsets, then
    the k*k shifted (N, H, W, C_out) blocks are added, so the copies stay C_out wide. The
    windows are contiguous slices, whose gradient is a slice too (no scatter).
    Cost: O(N H W k^2 C_in C_out).

    .. math::

        y_{n,i,j,:} = b + \sum_{a=0}^{k-1} \sum_{c=0}^{k-1} x_{n,\,i+a-p,\,j+c-p,\,:} W_{a,c},
        \qquad x = 0 \text{ outside the image}

    Examples
    --------
    >>> from refflow.backend import rng
    >>> conv = Conv2d.init(rng(0), 2, 5)
    >>> conv(rng(1).standard_normal((3, 4, 4, 2))).shape
    (3, 4, 4, 5)
    """

    weight: Any
    bias: Any

    def __post_init__(self):
        shape = tuple(getattr(self.weight, "shape", ()))
        if len(shape) != 4 or shape[0] != shape[1] or shape[0] % 2 == 0:
            raise ValueError(f"weight: expected shape (k, k, C_in, C_out) with k odd, got {shape}")
        if tuple(getattr(self.bias, "shape", ())) != (shape[3],):
            raise ValueError(f"bias: expected shape ({shape[3]},), got {self.bias.shape}")

    @classmethod
    def init(cls, rng, c_in: int, c_out: int, kernel_size: int = 3, zero: bool = False,
             dtype: Any = None) -> Conv2d:
        """Weights N(0, 1/(k^2 C_in)), zero bias; ``zero`` makes the output 0."""
        c_in, c_out, k = (check_int(n, v) for n, v in
                          (("c_in", c_in), ("c_out", c_out), ("kernel_size", kernel_size)))
        return cls(*_init_conv(rng, c_in, c_out, k, zero, dtype))

    def __call__(self, x):
        k, _, c_in, c_out = self.weight.shape
        if k == 1:
            return x @ self.weight[0, 0] + self.bias
        p = k // 2
        lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
        x4 = np.reshape(x, (-1, h, w, c_in))  # (N, H, W, C_in)
        pads = ((0, 0), (p, p), (p, p), (0, 0))
        if c_in <= c_out:
            # gather: the k*k shifted windows side by side, then one product
            padded = np.pad(x4, pads, mode="constant")  # (N, H + 2p, W + 2p, C_in)
            columns = np.concatenate(
                [padded[:, a : a + h, c : c + w, :] for a in range(k) for c in range(k)],
                axis=-1,
            )  # (N, H, W, k*k*C_in), ordered like the rows of the reshaped weight
            y = columns @ np.reshape(self.weight, (k * k * c_in, c_out))
        else:
            # scatter: u_ac = x W_ac for all offsets in one product, then the k*k shifted
            # blocks of u are summed; cheaper when C_out < C_in (the windows are narrower)
            w_all = np.reshape(np.moveaxis(self.weight, 2, 0), (c_in, k * k * c_out))
            u = np.pad(x4 @ w_all, pads, mode="constant")  # (N, H + 2p, W + 2p, k*k*C_out)
            y = 0.0
            for a in range(k):
                for c in range(k):
                    block = (a * k + c) * c_out
                    y = y + u[:, a : a + h, c : c + w, block : block + c_out]
        return np.reshape(y + self.bias, lead + (h, w, c_out))


@dataclass(frozen=True, eq=False)
class ConvNet:
    r"""A stack of convolutions with an activation between them: the image conditioner.

    Parameters
    ----------
    layers : tuple of ``Conv2d``, channels matching.
    activation : name of the hidden activation (``ACTIVATIONS``).

    Notes
    -----
    Glow's coupling network is 3x3 conv -> act -> 1x1 conv -> act -> 3x3 conv, the last
    one initialised to zero so that every coupling starts as the identity [1].
    ``ConvNet.init(rng, [C_in, hidden, hidden, C_out])`` builds exactly that.

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> net = ConvNet.init(rng(0), [1, 8, 8, 2])
    >>> net(rng(1).standard_normal((3, 4, 4, 1))).shape
    (3, 4, 4, 2)
    """

    layers: tuple
    activation: str = field(default="relu", metadata={"static": True})

    def __post_init__(self):
        activation(self.activation)
        if not self.layers:
            raise ValueError("layers: expected at least one Conv2d")

    @classmethod
    def init(cls, rng, channels, kernel_sizes=None, activation: str = "relu",
             zero_last: bool = False, dtype: Any = None) -> ConvNet:
        """Layers C_0 -> C_1 -> ... -> C_L; kernels 3 at both ends and 1 inside by default."""
        channels = [check_int("channels", c) for c in channels]
        n = len(channels) - 1
        if n < 1:
            raise ValueError("channels: expected at least input and output channels")
        if kernel_sizes is None:
            kernel_sizes = [3 if i in (0, n - 1) else 1 for i in range(n)]
        if len(kernel_sizes) != n:
            raise ValueError(f"kernel_sizes: expected {n} sizes, got {len(kernel_sizes)}")
        layers = tuple(
            Conv2d.init(rng, c_in, c_out, k, zero=zero_last and i == n - 1, dtype=dtype)
            for i, (c_in, c_out, k) in enumerate(zip(channels[:-1], channels[1:], kernel_sizes))
        )
        return cls(layers, activation)

    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = act(h)
        return h
