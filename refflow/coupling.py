r"""Coupling flows: the general coupling layer, NICE's additive coupling and scaling, RealNVP.

A coupling layer splits z into a part z^B that is copied and conditions, and a part z^A
that an element-wise bijection transforms with parameters computed from z^B:

    x^A = f^(z^A; Theta(z^B)),     x^B = z^B.

The split is either an integer d (the first d coordinates of the last axis are z^B, as
RealNVP's y_{1:d} = x_{1:d}; on images (N, H, W, C) this is a channel split) or a binary
mask b of the event shape (b = 1 marks z^B: alternating, checkerboard and channel masks).
The integer split uses contiguous slices, the fast path; a mask multiplies by a fixed array.

Notes
-----
Lecture: "Coupling flows", RealNVP and NICE. The Jacobian is block triangular,

.. math::

    \mathbf{J}_f = \begin{bmatrix} \mathbf{J}_{\hat f} & \partial x^A / \partial z^B \\
                                    0 & \mathbf{1} \end{bmatrix},
    \qquad \log|\det \mathbf{J}_f| = \log|\det \mathbf{J}_{\hat f}(z^A; \Theta(z^B))|,

so with an element-wise f^ the log-det is a sum of log-derivatives, O(D); the conditioner
Theta is any network and never needs inverting.

References
----------
1. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
   ICLR Workshop, 2015.
2. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.
3. G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan.
   Normalizing Flows for Probabilistic Modeling and Inference. JMLR 22(57), 2021.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import autograd.numpy as np

from refflow import backend as B
from refflow.backend import is_array, to_numpy
from refflow.checks import check_array, check_int, check_positive
from refflow.fused import affine_coupling, affine_coupling_log_det, tanh_bound
from refflow.nn import MLP, ConvNet

__all__ = [
    "Coupling",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
    "half_mask",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
]


# ----------------------------------------------------------------------------- masks


def half_mask(dim: int, first: bool = True, dtype: Any = None):
    """b_i = 1 on the first floor(dim/2) coordinates (or on the rest when ``first=False``).

    >>> half_mask(4).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    dim = check_int("dim", dim, minimum=2)
    b = B.arange(dim) < dim // 2
    return B.asarray(b if first else ~b, dtype=dtype or "float64")


def alternating_mask(dim: int, parity: int = 0, dtype: Any = None):
    """b_i = 1 where i % 2 == parity: NICE's odd/even partition of the coordinates.

    >>> alternating_mask(5).tolist()
    [1.0, 0.0, 1.0, 0.0, 1.0]
    """
    dim = check_int("dim", dim, minimum=2)
    return B.asarray(B.arange(dim) % 2 == parity % 2, dtype=dtype or "float64")


def checkerboard_mask(shape: tuple, parity: int = 0, dtype: Any = None):
    """b_ijc = 1 where (i + j) % 2 == parity, for an (H, W, C) image: RealNVP's checkerboard.

    >>> checkerboard_mask((2, 2, 1))[..., 0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    h, w, c = _image_shape("shape", shape)
    i, j = B.arange(h)[:, None, None], B.arange(w)[None, :, None]
    board = (i + j) % 2 == parity % 2  # (H, W, 1)
    return B.asarray(board, dtype=dtype or "float64") * B.ones((h, w, c), dtype=dtype)


def channel_mask(shape: tuple, parity: int = 0, dtype: Any = None):
    """b_ijc = 1 on the first floor(C/2) channels (parity 0) or on the others (parity 1).

    >>> channel_mask((1, 1, 4))[0, 0].tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    h, w, c = _image_shape("shape", shape)
    if c < 2:
        raise ValueError(f"shape: a channel mask needs C >= 2 channels, got {c}")
    first = B.arange(c) < c // 2
    b = first if parity % 2 == 0 else ~first
    return B.asarray(b, dtype=dtype or "float64") * B.ones((h, w, c), dtype=dtype)


def _image_shape(name: str, shape) -> tuple:
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if len(shape) != 3:
        raise ValueError(f"{name}: expected an image shape (H, W, C), got {shape}")
    return tuple(check_int(name, s) for s in shape)


def _event_shape(dim, minimum: int = 2) -> tuple:
    """``dim`` (an int D >= minimum or an image shape (H, W, C)) as an event shape tuple."""
    if isinstance(dim, (tuple, list)):
        return _image_shape("dim", dim)
    return (check_int("dim", dim, minimum=minimum),)


# ------------------------------------------------------------------ the shared split logic


def _check_split(split, event_ndim: int) -> None:
    if event_ndim not in (1, 3):
        raise ValueError(f"event_ndim: expected 1 (vectors) or 3 (images), got {event_ndim}")
    if is_array(split):
        host = to_numpy(split)
        if host.ndim != event_ndim or not ((host == 0) | (host == 1)).all():
            raise ValueError(f"split: expected a 0/1 mask with {event_ndim} dimensions")
        if host.all() or not host.any():
            raise ValueError("split: the mask must keep some coordinates and transform others")
    elif not isinstance(split, (int, np.integer)) or split < 1:
        raise ValueError(f"split: expected an integer d >= 1 or a 0/1 mask, got {split!r}")


class _CouplingParts:
    """z -> (conditioning input, transformed part) and back, for a split d or a mask b.

    Subclasses are dataclasses with the static fields ``split`` and ``event_ndim``.
    """

    def _axes(self) -> tuple:
        return tuple(range(-self.event_ndim, 0))

    def _masked(self) -> bool:
        return not isinstance(self.split, (int, np.integer))

    def _parts(self, z):
        """(z^B, z^A): with a mask, z^B is b * z and z^A is all of z (only 1 - b is kept)."""
        check_array("z", z, min_ndim=self.event_ndim, finite=False)
        if self._masked():
            return self.split * z, z
        return z[..., : self.split], z[..., self.split :]  # (..., d), (..., C - d)

    def _merge(self, z, x_a):
        """x = (z^B, x^A): x^B = z^B is copied."""
        if self._masked():
            return self.split * z + (1.0 - self.split) * x_a
        return np.concatenate([z[..., : self.split], x_a], axis=-1)

    def _active(self, per_coordinate):
        """Zero the per-coordinate values (log-derivatives, scales) outside z^A."""
        return (1.0 - self.split) * per_coordinate if self._masked() else per_coordinate


def _conditioner(rng, event_shape: tuple, n_in: int, n_out: int, hidden, activation: str,
                 zero_last: bool):
    """An MLP for vectors, a ConvNet for images (same spatial size, n_out channels)."""
    sizes = [n_in, *hidden, n_out]
    if len(event_shape) == 3:
        return ConvNet.init(rng, sizes, activation=activation, zero_last=zero_last)
    return MLP.init(rng, sizes, activation=activation, zero_last=zero_last)


def _default_split(split, event_shape: tuple):
    if split is None:
        return event_shape[-1] // 2
    if not is_array(split) and not 1 <= split < event_shape[-1]:
        raise ValueError(f"split: expected 1 <= d < {event_shape[-1]}, got {split}")
    return split


def _sizes(split, event_shape: tuple) -> tuple[int, int]:
    """(conditioner inputs, transformed coordinates) per position of the last axis."""
    c = event_shape[-1]
    return (c, c) if is_array(split) else (split, c - split)


# ------------------------------------------------------------------------------ layers


@dataclass(frozen=True, eq=False)
class Coupling(_CouplingParts):
    r"""The general coupling layer: x^A = f^(z^A; Theta(z^B)), x^B = z^B, f^ any element-wise map.

    Parameters
    ----------
    conditioner : callable network, z^B -> theta with P numbers per transformed coordinate:
        (..., d) -> (..., (C - d) P) for a split, (..., C) -> (..., C P) for a mask, where C
        is the last axis (channels for images).
    transformer : an element-wise bijection class of ``refflow.elementwise`` (static):
        ``from_unconstrained(theta, **static)`` with P = ``num_params(**static)`` raw numbers
        per coordinate, ``transform``, ``inverse_transform`` and ``log_derivative``.
    split : int d (the first d coordinates of the last axis are z^B) or a 0/1 mask of the
        event shape (1 = z^B) (static).
    event_ndim : 1 for vectors (N, D), 3 for images (N, H, W, C) (static).
    static : keyword arguments passed on to ``transformer.from_unconstrained`` (static).

    Notes
    -----
    Lecture: "Coupling flows".

    .. math::

        x^A = \hat f(z^A; \Theta(z^B)), \quad x^B = z^B; \qquad
        z^A = \hat f^{-1}(x^A; \Theta(x^B)), \quad z^B = x^B; \qquad
        \log|\det \mathbf{J}_f| = \sum_{i \in A} \log|\hat f_i'(z_i)|

    Invertible whenever f^ is, for every theta: Theta is evaluated on z^B = x^B, which the
    inverse knows. Cost: one conditioner pass plus O(D) in either direction.

    References
    ----------
    1. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.
    2. C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows. NeurIPS, 2019.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> from refflow.elementwise import ScalarAffine
    >>> f = Coupling.init(rng(0), 4, ScalarAffine)
    >>> z = rng(1).standard_normal((3, 4))
    >>> x, log_det = f.forward(z)
    >>> bool(abs(f.inverse(x)[0] - z).max() < 1e-12 and (x[:, :2] == z[:, :2]).all())
    True
    """

    conditioner: Any
    transformer: type = field(metadata={"static": True})
    split: Any = field(default=1, metadata={"static": True})
    event_ndim: int = field(default=1, metadata={"static": True})
    static: dict = field(default_factory=dict, metadata={"static": True})

    def __post_init__(self):
        _check_split(self.split, self.event_ndim)
        needed = ("from_unconstrained", "num_params", "transform", "inverse_transform",
                  "log_derivative")
        if not all(hasattr(self.transformer, name) for name in needed):
            raise ValueError("transformer: expected an element-wise bijection class of "
                             f"refflow.elementwise (with {', '.join(needed)})")

    @classmethod
    def init(cls, rng, dim, transformer: type, static: dict | None = None, split=None,
             hidden=(32, 32), activation: str = "tanh", zero_last: bool = False) -> Coupling:
        """A coupling with an MLP (vectors) or ConvNet (images) conditioner, half split default."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        static = dict(static or {})
        p = transformer.num_params(**static)
        net = _conditioner(rng, event_shape, n_in, n_out * p, hidden, activation, zero_last)
        return cls(net, transformer, split, len(event_shape), static)

    def _transform(self, z, inverse: bool):
        z_b, z_a = self._parts(z)
        p = self.transformer.num_params(**self.static)
        theta = np.reshape(self.conditioner(z_b), z_a.shape + (p,))  # (..., |A|, P)
        f = self.transformer.from_unconstrained(theta, **self.static)
        # per-coordinate log-derivatives, so that a mask can drop those of z^B
        if inverse:
            x_a = f.inverse_transform(z_a)
            log_d = -f.log_derivative(x_a)
        else:
            x_a = f.transform(z_a)
            log_d = f.log_derivative(z_a)
        return self._merge(z, x_a), np.sum(self._active(log_d), axis=self._axes())

    def forward(self, z):
        return self._transform(z, inverse=False)

    def inverse(self, x):
        return self._transform(x, inverse=True)


@dataclass(frozen=True, eq=False)
class AdditiveCoupling(_CouplingParts):
    r"""NICE's additive coupling: x^A = z^A + m(z^B), x^B = z^B, log|det J| = 0.

    Parameters
    ----------
    conditioner : network m, (..., d) -> (..., C - d) for a split, (..., C) -> (..., C)
        for a mask.
    split : int d or 0/1 mask of the event shape, 1 = copied (static).
    event_ndim : 1 for vectors, 3 for images (static).

    Notes
    -----
    Lecture: "Coupling flows", NICE: "the affine coupling layer without the scale term".

    .. math::

        y_{d+1:D} = x_{d+1:D} + m(x_{1:d}) \;\Leftrightarrow\;
        x_{d+1:D} = y_{d+1:D} - m(y_{1:d}), \qquad \det \mathbf{J} = 1

    Always invertible, for any m; volume preserving, so a stack of them needs ``Scaling``
    on top to change volume. Cost: one pass of m plus O(D).

    References
    ----------
    1. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
       ICLR Workshop, 2015.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = AdditiveCoupling.init(rng(0), 4)
    >>> x, log_det = f.forward(rng(1).standard_normal((2, 4)))
    >>> log_det.tolist()
    [0.0, 0.0]
    """

    conditioner: Any
    split: Any = field(default=1, metadata={"static": True})
    event_ndim: int = field(default=1, metadata={"static": True})

    def __post_init__(self):
        _check_split(self.split, self.event_ndim)

    @classmethod
    def init(cls, rng, dim, split=None, hidden=(32, 32), activation: str = "relu",
             zero_last: bool = False) -> AdditiveCoupling:
        """A NICE coupling with a ReLU MLP (vectors) or ConvNet (images), half split default."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        net = _conditioner(rng, event_shape, n_in, n_out, hidden, activation, zero_last)
        return cls(net, split, len(event_shape))

    def _shift(self, z, sign: float):
        z_b, z_a = self._parts(z)
        x_a = z_a + sign * self._active(self.conditioner(z_b))
        batch = z[(Ellipsis,) + (0,) * self.event_ndim]
        return self._merge(z, x_a), np.zeros_like(batch)

    def forward(self, z):
        return self._shift(z, 1.0)

    def inverse(self, x):
        return self._shift(x, -1.0)


@dataclass(frozen=True, eq=False)
class AffineCoupling(_CouplingParts):
    r"""RealNVP's affine coupling: x^A = z^A * exp(s(z^B)) + t(z^B), x^B = z^B.

    Parameters
    ----------
    conditioner : network z^B -> (s_raw, t) concatenated on the last axis:
        (..., d) -> (..., 2 (C - d)) for a split, (..., C) -> (..., 2 C) for a mask.
    split : int d or 0/1 mask of the event shape, 1 = copied (static).
    event_ndim : 1 for vectors, 3 for images (static).
    scale_bound : the bound on |s|, or None for s = s_raw (static).

    Notes
    -----
    Lecture: "Coupling flows", RealNVP.

    .. math::

        y_{d+1:D} = x_{d+1:D} \odot \exp(s(x_{1:d})) + t(x_{1:d}) \;\Leftrightarrow\;
        x_{d+1:D} = (y_{d+1:D} - t(y_{1:d})) \odot \exp(-s(y_{1:d})),
        \qquad \log|\det \mathbf{J}| = \sum_j s(x_{1:d})_j

    The raw log-scale is softly bounded, s = a tanh(s_raw / a) with a = ``scale_bound``
    (default 2): it equals s_raw near 0 and keeps every step's scale within [e^-a, e^a],
    which stops a few early gradient steps from blowing activations up (RealNVP bounds s
    with a tanh as well [1]; Glow uses a sigmoid [2]). Always invertible (exp(s) > 0).
    Cost: one conditioner pass plus O(D), either direction.

    References
    ----------
    1. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.
    2. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = AffineCoupling.init(rng(0), 4)
    >>> z = rng(1).standard_normal((3, 4))
    >>> x, log_det = f.forward(z)
    >>> z_back, log_det_inv = f.inverse(x)
    >>> bool(abs(z_back - z).max() < 1e-12 and abs(log_det + log_det_inv).max() < 1e-12)
    True
    """

    conditioner: Any
    split: Any = field(default=1, metadata={"static": True})
    event_ndim: int = field(default=1, metadata={"static": True})
    scale_bound: float | None = field(default=2.0, metadata={"static": True})
    # the fast path for vectors split in two (refflow.fused: one primitive for the update and
    # the merge, one for the log-det); False, a mask or an image runs the readable code
    fused: ClassVar[bool] = True

    def __post_init__(self):
        _check_split(self.split, self.event_ndim)
        if self.scale_bound is not None and not self.scale_bound > 0:
            raise ValueError(f"scale_bound: expected a positive bound or None, got "
                             f"{self.scale_bound!r}")

    @classmethod
    def init(cls, rng, dim, split=None, hidden=(32, 32), activation: str = "tanh",
             zero_last: bool = False, scale_bound: float | None = 2.0) -> AffineCoupling:
        """A RealNVP coupling with an MLP (vectors) or ConvNet (images), half split default."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        net = _conditioner(rng, event_shape, n_in, 2 * n_out, hidden, activation, zero_last)
        return cls(net, split, len(event_shape), scale_bound)

    def _scale_shift(self, z_b):
        out = self.conditioner(z_b)
        k = out.shape[-1] // 2
        s, t = out[..., :k], out[..., k:]  # (..., |A|) each
        if self.scale_bound is not None:
            # a tanh(s / a), with a VJP from the output (fused.tanh_bound); no cosh overflow
            s = tanh_bound(s, self.scale_bound)
        return self._active(s), self._active(t)

    def _fast(self) -> bool:
        return self.fused and self.event_ndim == 1 and not self._masked()

    def forward(self, z):
        if self._fast():
            check_array("z", z, min_ndim=1, finite=False)
            out = self.conditioner(z[..., : self.split])
            return (affine_coupling(z, out, self.split, self.scale_bound),
                    affine_coupling_log_det(out, self.scale_bound))
        z_b, z_a = self._parts(z)
        s, t = self._scale_shift(z_b)
        x_a = z_a * np.exp(s) + t
        return self._merge(z, x_a), np.sum(s, axis=self._axes())

    def inverse(self, x):
        if self._fast():
            check_array("x", x, min_ndim=1, finite=False)
            out = self.conditioner(x[..., : self.split])
            return (affine_coupling(x, out, self.split, self.scale_bound, True),
                    affine_coupling_log_det(out, self.scale_bound, True))
        x_b, x_a = self._parts(x)
        s, t = self._scale_shift(x_b)
        z_a = (x_a - t) * np.exp(-s)
        return self._merge(x, z_a), -np.sum(s, axis=self._axes())


@dataclass(frozen=True, eq=False)
class Scaling:
    r"""NICE's diagonal top layer: x_j = s_j z_j, log|det J| = sum_j log s_j.

    Parameters
    ----------
    scale : (D,) or (H, W, C) array of positive scales s (its rank is the event rank).

    Notes
    -----
    Lecture: "Coupling flows", NICE: "a diagonal scaling matrix S as the top layer".

    .. math::

        x_j = s_j z_j, \qquad z_j = x_j / s_j, \qquad
        \mathbf{J} = \mathrm{diag}(s), \quad \log|\det \mathbf{J}| = \sum_j \log |s_j|

    Invertible iff every s_j != 0; s is kept positive (trained as log s, as NICE's
    exp(S)), so |s_j| = s_j and no gradient step reaches 0. The only volume change in a
    NICE model. Cost: O(D).

    References
    ----------
    1. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
       ICLR Workshop, 2015.

    Examples
    --------
    >>> import numpy
    >>> x, log_det = Scaling(numpy.array([2.0, 0.5, 4.0])).forward(numpy.ones((1, 3)))
    >>> x.tolist(), round(float(log_det[0]), 6) == round(float(numpy.log(4.0)), 6)
    ([[2.0, 0.5, 4.0]], True)
    """

    scale: Any = field(metadata={"constraint": "positive"})

    def __post_init__(self):
        check_positive("scale", self.scale)
        if self.scale.ndim not in (1, 3):
            raise ValueError(f"scale: expected shape (D,) or (H, W, C), got {self.scale.shape}")

    @classmethod
    def init(cls, rng, dim) -> Scaling:
        """Scales exp(N(0, 0.1^2)) of the event shape."""
        return cls(np.exp(0.1 * rng.standard_normal(_event_shape(dim, minimum=1))))

    def _log_det(self, z):
        check_array("z", z, min_ndim=self.scale.ndim, last=self.scale.shape, finite=False)
        batch = z[(Ellipsis,) + (0,) * self.scale.ndim]
        return np.zeros_like(batch) + np.sum(np.log(self.scale))

    def forward(self, z):
        return z * self.scale, self._log_det(z)

    def inverse(self, x):
        return x / self.scale, -self._log_det(x)
