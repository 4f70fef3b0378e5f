r"""Coupling flows: the general coupling layer, NICE's additive coupling and scaling, RealNVP.

A coupling layer splits z into a part z^B that is copied and conditions, and a part z^A
that an element-wise bijection transforms with parameters computed from z^B:

    x^A = f^(z^A; Theta(z^B)),     x^B = z^B.

The split is either an integer d (the first d coordinates of the last axis are z^B, as
RealNVP's y_{1:d} = x_{1:d}; on images (N, H, W, C) this is a channel split) or a binary
mask b of the event shape (b = 1 marks z^B: alternating, checkerboard and channel masks).
The integer split uses contiguous slices, the fast path; a mask multiplies by a fixed array.

A conditional coupling (``init(..., context_dim=C)``) models p(x | c): the context c is one
more input of the conditioner, x^A = f^(z^A; Theta(z^B, c)), concatenated after z^B (as C
extra channels, c broadcast over H and W, for images). The Jacobian in z keeps its block
triangular form for every fixed c, so the log-det is unchanged.

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
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.backend import is_array, to_numpy
from refflow.checks import check_array, check_context, check_int, check_positive
from refflow.fast import replaceable
from refflow.nn import MLP, ConvNet
from refflow.ops import take_last

__all__ = [
    "Coupling",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
    "half_mask",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "affine_coupling",
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


# ------------------------------------------------------------------------------ context


def _context_input(context: Any, z: Any, context_dim: int, event_ndim: int, owner: str) -> Any:
    r"""The context c laid out as extra conditioner inputs: c at every row (and pixel) of z.

    Parameters
    ----------
    context : (..., C) array with the batch shape of z (one row per data row), or (C,)
        (the same context for every row).
    z : (..., D) vectors or (..., H, W, ch) images: gives the batch shape and the layout.
    context_dim : C >= 1, the context dimension the conditioner was built for.
    event_ndim : 1 for vectors, 3 for images.
    owner : the class name, for the error message.

    Returns
    -------
    (..., C) for vectors, (..., H, W, C) for images (c broadcast over H and W), to be
    concatenated with z^B on the last axis.

    Notes
    -----
    Lecture: "Coupling flows". The context is an input of Theta like z^B, never a parameter:
    x^A = f^(z^A; Theta(z^B, c)), and for each fixed c the map z -> x is a coupling.
    """
    z_shape = tuple(z.shape)
    batch = z_shape[: len(z_shape) - event_ndim]
    context = check_context(f"this {owner}", context, context_dim, batch)
    shape = tuple(context.shape)
    if event_ndim == 1 and shape[:-1] == batch:
        return context
    if event_ndim == 3 and len(shape) > 1:
        context = context[..., None, None, :]  # (..., 1, 1, C)
    # zeros of z's layout (values not read) spread c over every row and pixel
    return np.zeros_like(z[..., :1]) + context  # (..., C) or (..., H, W, C)


# ------------------------------------------------------------------ the shared split logic


def _check_split(split, event_ndim: int, context_dim: int) -> None:
    check_int("context_dim", context_dim, minimum=0)
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

    Subclasses are dataclasses with the static fields ``split``, ``event_ndim`` and
    ``context_dim``.
    """

    def _axes(self) -> tuple:
        return tuple(range(-self.event_ndim, 0))

    def _masked(self) -> bool:
        return not isinstance(self.split, (int, np.integer))

    def _parts(self, z, name: str = "z"):
        """(z^B, z^A): with a mask, z^B is b * z and z^A is all of z (only 1 - b is kept)."""
        z_b = self._conditioning(z, name)
        return z_b, (z if self._masked() else take_last(z, self.split))  # (..., C - d)

    def _conditioning(self, z, name: str = "z"):
        """z^B, the conditioner's input (b * z for a mask), after checking z's shape."""
        check_array(name, z, min_ndim=self.event_ndim, finite=False)
        if self._masked():
            # shapes only, so traced values are checked too: a wrong event shape would
            # otherwise broadcast against the mask or fail deep inside NumPy
            event = tuple(self.split.shape)
            if tuple(z.shape[-self.event_ndim:]) != event:
                raise ValueError(f"{name}: expected the event shape {event} of the mask, got "
                                 f"shape {tuple(z.shape)}")
            return self.split * z
        if z.shape[-1] <= self.split:
            raise ValueError(f"{name}: expected more than split = {self.split} coordinates on "
                             f"the last axis, got shape {tuple(z.shape)}")
        return take_last(z, 0, self.split)  # (..., d)

    def _with_context(self, z_b, z, context):
        """The conditioner's input: z^B, then the context (none for an unconditional layer,
        which passes a context by)."""
        if self.context_dim == 0:
            return z_b
        c = _context_input(context, z, self.context_dim, self.event_ndim, type(self).__name__)
        return np.concatenate([z_b, c], axis=-1)  # (..., d + C)

    def _check_output(self, name: str, z, out, per_coordinate: int) -> None:
        """The conditioner's output must hold ``per_coordinate`` numbers per coordinate of z^A:
        otherwise z has the wrong size (the conditioner reads only z^B, so it cannot tell)."""
        c = z.shape[-1]
        n_a = c if self._masked() else c - self.split
        if out.shape[-1] != per_coordinate * n_a:
            expected = out.shape[-1] // per_coordinate + (0 if self._masked() else self.split)
            raise ValueError(f"{name}: expected {expected} coordinates on the last axis (the "
                             f"size the conditioner was built for), got shape {tuple(z.shape)}")

    def _merge(self, z, x_a):
        """x = (z^B, x^A): x^B = z^B is copied."""
        if self._masked():
            return self.split * z + (1.0 - self.split) * x_a
        return np.concatenate([take_last(z, 0, self.split), x_a], axis=-1)

    def _active(self, per_coordinate, halves: int = 1):
        """Zero the per-coordinate values (log-derivatives, scales) outside z^A; ``halves``
        blocks of them side by side on the last axis (RealNVP's (s, t): 2)."""
        if not self._masked():
            return per_coordinate
        keep = 1.0 - self.split
        return per_coordinate * (np.concatenate([keep] * halves, axis=-1) if halves > 1 else keep)

    def _sum_event(self, log_det):
        """Sum a log-det already summed over the last axis over the other event axes."""
        return np.sum(log_det, axis=self._axes()[1:]) if self.event_ndim > 1 else log_det


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
        per coordinate; its instances' ``forward_elementwise(z) -> (x, log h'(z))`` and
        ``inverse_elementwise(x) -> (z, -log h'(z))`` are called once per call.
    split : int d (the first d coordinates of the last axis are z^B) or a 0/1 mask of the
        event shape (1 = z^B) (static).
    event_ndim : 1 for vectors (N, D), 3 for images (N, H, W, C) (static).
    static : keyword arguments passed on to ``transformer.from_unconstrained`` (static).
    context_dim : C > 0 for a conditional coupling, whose conditioner reads (z^B, c): d + C
        inputs (channels for images); 0 (default) for none (static).

    Notes
    -----
    Lecture: "Coupling flows".

    .. math::

        x^A = \hat f(z^A; \Theta(z^B)), \quad x^B = z^B; \qquad
        z^A = \hat f^{-1}(x^A; \Theta(x^B)), \quad z^B = x^B; \qquad
        \log|\det \mathbf{J}_f| = \sum_{i \in A} \log|\hat f_i'(z_i)|

    Invertible whenever f^ is, for every theta: Theta is evaluated on z^B = x^B, which the
    inverse knows. Cost: one conditioner pass plus O(D) in either direction. Conditional:
    Theta(z^B, c), the same formulas at each fixed context c.

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
    context_dim: int = field(default=0, metadata={"static": True})

    def __post_init__(self):
        _check_split(self.split, self.event_ndim, self.context_dim)
        needed = ("from_unconstrained", "num_params", "forward_elementwise",
                  "inverse_elementwise")
        if not all(hasattr(self.transformer, name) for name in needed):
            raise ValueError("transformer: expected an element-wise bijection class of "
                             f"refflow.elementwise (with {', '.join(needed)})")

    @classmethod
    def init(cls, rng, dim, transformer: type, static: dict | None = None, split=None,
             hidden=(32, 32), activation: str = "tanh", zero_last: bool = False,
             context_dim: int = 0) -> Coupling:
        """A coupling with an MLP (vectors) or ConvNet (images) conditioner, half split default;
        ``context_dim`` C > 0 adds C inputs (channels) for the context."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        static = dict(static or {})
        p = transformer.num_params(**static)
        context_dim = check_int("context_dim", context_dim, minimum=0)
        net = _conditioner(rng, event_shape, n_in + context_dim, n_out * p, hidden, activation,
                           zero_last)
        return cls(net, transformer, split, len(event_shape), static, context_dim)

    def _transform(self, name: str, z, context, inverse: bool):
        z_b, z_a = self._parts(z, name)
        p = self.transformer.num_params(**self.static)
        out = self.conditioner(self._with_context(z_b, z, context))
        self._check_output(name, z, out, p)
        theta = np.reshape(out, z_a.shape + (p,))  # (..., |A|, P)
        h = self.transformer.from_unconstrained(theta, **self.static)
        # one call gives the value and the per-coordinate log-derivatives (a mask then drops
        # those of z^B)
        x_a, log_d = h.inverse_elementwise(z_a) if inverse else h.forward_elementwise(z_a)
        return self._merge(z, x_a), np.sum(self._active(log_d), axis=self._axes())

    def forward(self, z, context=None):
        return self._transform("z", z, context, inverse=False)

    def inverse(self, x, context=None):
        return self._transform("x", x, context, inverse=True)


@dataclass(frozen=True, eq=False)
class AdditiveCoupling(_CouplingParts):
    r"""NICE's additive coupling: x^A = z^A + m(z^B), x^B = z^B, log|det J| = 0.

    Parameters
    ----------
    conditioner : network m, (..., d) -> (..., C - d) for a split, (..., C) -> (..., C)
        for a mask.
    split : int d or 0/1 mask of the event shape, 1 = copied (static).
    event_ndim : 1 for vectors, 3 for images (static).
    context_dim : C > 0 for a conditional coupling, m(z^B, c); 0 (default) for none (static).

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
    context_dim: int = field(default=0, metadata={"static": True})

    def __post_init__(self):
        _check_split(self.split, self.event_ndim, self.context_dim)

    @classmethod
    def init(cls, rng, dim, split=None, hidden=(32, 32), activation: str = "relu",
             zero_last: bool = False, context_dim: int = 0) -> AdditiveCoupling:
        """A NICE coupling with a ReLU MLP (vectors) or ConvNet (images), half split default;
        ``context_dim`` C > 0 adds C inputs (channels) for the context."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        context_dim = check_int("context_dim", context_dim, minimum=0)
        net = _conditioner(rng, event_shape, n_in + context_dim, n_out, hidden, activation,
                           zero_last)
        return cls(net, split, len(event_shape), context_dim)

    def _shift(self, name: str, z, context, sign: float):
        z_b, z_a = self._parts(z, name)
        m = self.conditioner(self._with_context(z_b, z, context))
        self._check_output(name, z, m, 1)
        x_a = z_a + sign * self._active(m)
        batch = z[(Ellipsis,) + (0,) * self.event_ndim]
        return self._merge(z, x_a), np.zeros_like(batch)

    def forward(self, z, context=None):
        return self._shift("z", z, context, 1.0)

    def inverse(self, x, context=None):
        return self._shift("x", x, context, -1.0)


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
    context_dim : C > 0 for a conditional coupling, (s, t) = conditioner(z^B, c); 0
        (default) for none (static).

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
    context_dim: int = field(default=0, metadata={"static": True})

    def __post_init__(self):
        _check_split(self.split, self.event_ndim, self.context_dim)
        if self.scale_bound is not None and not self.scale_bound > 0:
            raise ValueError(f"scale_bound: expected a positive bound or None, got "
                             f"{self.scale_bound!r}")

    @classmethod
    def init(cls, rng, dim, split=None, hidden=(32, 32), activation: str = "tanh",
             zero_last: bool = False, scale_bound: float | None = 2.0,
             context_dim: int = 0) -> AffineCoupling:
        """A RealNVP coupling with an MLP (vectors) or ConvNet (images), half split default;
        ``context_dim`` C > 0 adds C inputs (channels) for the context."""
        event_shape = _event_shape(dim)
        split = _default_split(split, event_shape)
        n_in, n_out = _sizes(split, event_shape)
        context_dim = check_int("context_dim", context_dim, minimum=0)
        net = _conditioner(rng, event_shape, n_in + context_dim, 2 * n_out, hidden, activation,
                           zero_last)
        return cls(net, split, len(event_shape), scale_bound, context_dim)

    def _couple(self, name: str, v, context, inverse: bool):
        out = self.conditioner(self._with_context(self._conditioning(v, name), v, context))
        self._check_output(name, v, out, 2)
        out = self._active(out, halves=2)  # (..., 2 |A|): (s, t)
        # a mask zeroes s and t on z^B, where z exp(0) + 0 = z copies z^B: with the mask
        # applied to the conditioner's output, the whole z is "z^A" (split 0)
        first = 0 if self._masked() else self.split
        u, log_det = affine_coupling(v, out, first, self.scale_bound, inverse)
        return u, self._sum_event(log_det)

    def forward(self, z, context=None):
        return self._couple("z", z, context, inverse=False)

    def inverse(self, x, context=None):
        return self._couple("x", x, context, inverse=True)


@replaceable("affine_coupling")
def affine_coupling(z, out, split: int, bound: float | None, inverse: bool = False):
    r"""RealNVP's coupling step on the last axis: x = (z^B, z^A exp(s) + t), log|det J| = sum s.

    Parameters
    ----------
    z : (..., C) array; z^B = z[..., :split] is copied, z^A = z[..., split:] transformed.
    out : (..., 2 (C - split)) array, the conditioner's output on z^B, (s_raw, t).
    split : int, 0 <= split < C.
    bound : the soft bound a of s = a tanh(s_raw / a), or None for s = s_raw.
    inverse : bool; True gives z from x = (x^B, x^A), with out computed on x^B = z^B.

    Returns
    -------
    (x, log_det) : (..., C) and (...,): the log-det summed over the last axis.

    Notes
    -----
    Lecture: "Coupling flows", RealNVP.

    .. math::

        x^A = z^A \odot \exp(s) + t, \qquad z^A = (x^A - t) \odot \exp(-s), \qquad
        \log|\det \mathbf{J}_f| = \sum_j s_j

    s and the update are computed once and shared by the value and the log-det.
    """
    k = out.shape[-1] // 2
    s, t = take_last(out, 0, k), take_last(out, k)  # (..., C - split) each
    if bound is not None:
        s = bound * np.tanh(s / bound)
    z_b, z_a = take_last(z, 0, split), take_last(z, split)
    if inverse:
        return np.concatenate([z_b, (z_a - t) * np.exp(-s)], axis=-1), -np.sum(s, axis=-1)
    return np.concatenate([z_b, z_a * np.exp(s) + t], axis=-1), np.sum(s, axis=-1)


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

    def _log_det(self, name: str, z):
        check_array(name, z, min_ndim=self.scale.ndim, last=self.scale.shape, finite=False)
        batch = z[(Ellipsis,) + (0,) * self.scale.ndim]
        return np.zeros_like(batch) + np.sum(np.log(self.scale))

    def forward(self, z, context=None):
        log_det = self._log_det("z", z)  # checks z before the product can raise TypeError
        return z * self.scale, log_det

    def inverse(self, x, context=None):
        log_det = self._log_det("x", x)
        return x / self.scale, -log_det
