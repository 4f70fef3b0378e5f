r"""Glow: actnorm, invertible 1x1 convolutions, squeeze, the step of flow and the multi-scale flow.

Images are channels-last, (N, H, W, C). As everywhere in refflow, ``forward`` is the
generative direction z -> x; the Glow paper writes its layers in the data direction
x -> z, which is our ``inverse``. So a ``GlowStep`` read from data to latent is the paper's
"actnorm -> invertible 1x1 convolution -> affine coupling".

Notes
-----
Lecture: "Coupling flows", Glow: "three substeps in one step of flow": actnorm (a per-channel
affine map initialised from data so that its outputs have zero mean and unit variance), an
invertible 1x1 convolution in place of a fixed channel permutation, and RealNVP's affine
coupling. A map applied at each of the H * W positions multiplies its log|det| by H * W.

A conditional Glow (``init(..., context_dim=C)``) models p(x | c): the context enters each
coupling's conv net as C extra input channels, c broadcast over H and W; actnorm, the 1x1
convolutions and squeeze take a context and pass it by.

References
----------
1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
   NeurIPS, 2018.
2. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017
   (squeezing and the multi-scale architecture).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.backend import to_numpy
from refflow.checks import check_array, check_int, check_positive
from refflow.core import Flow
from refflow.coupling import AffineCoupling
from refflow.linalg import lu, slogdet, solve, solve_triangular

__all__ = [
    "ActNorm",
    "Invertible1x1Conv",
    "LUInvertible1x1Conv",
    "Squeeze",
    "GlowStep",
    "Glow",
    "init_from_data",
]


def _event_shape(dim) -> tuple:
    if isinstance(dim, (tuple, list)):
        if len(dim) != 3:
            raise ValueError(f"dim: expected an image shape (H, W, C), got {tuple(dim)}")
        return tuple(check_int("dim", d) for d in dim)
    return (check_int("dim", dim),)


def _positions(z, event_ndim: int) -> int:
    """The number of positions (H * W for images, 1 for vectors) sharing one channel map."""
    return math.prod(z.shape[len(z.shape) - event_ndim : -1])


def _batch_zeros(z, event_ndim: int):
    return np.zeros_like(z[(Ellipsis,) + (0,) * event_ndim])


def _check_channels(name: str, z, channels: int, event_ndim: int) -> None:
    """ValueError naming ``name`` unless z is (..., C) (vectors) or (..., H, W, C) (images).

    Shapes only, so that traced values are checked too: a wrong C would otherwise broadcast
    against the per-channel parameters or fail inside NumPy with its own message.
    """
    check_array(name, z, min_ndim=event_ndim, finite=False)
    shape = tuple(np.shape(z))
    if len(shape) < event_ndim or shape[-1] != channels:
        kind = "(..., H, W, C)" if event_ndim == 3 else "(..., C)"
        raise ValueError(f"{name}: expected shape {kind} with C = {channels}, got {shape}")


def _check_event_ndim(event_ndim: int) -> None:
    if event_ndim not in (1, 3):
        raise ValueError(f"event_ndim: expected 1 (vectors) or 3 (images), got {event_ndim}")


# ---------------------------------------------------------------------------------- actnorm


@dataclass(frozen=True, eq=False)
class ActNorm:
    r"""Activation normalisation, a per-channel affine map: x = scale * z + loc.

    Parameters
    ----------
    loc : (C,) array.
    scale : (C,) array, positive.
    event_ndim : 3 for images (N, H, W, C), 1 for vectors (static).

    Notes
    -----
    Lecture: "Coupling flows", Glow, actnorm: "an affine transformation of the activations
    using a scale and bias parameter per channel", initialised so that the activations on
    the data side of the flow have zero mean and unit variance per channel, then trained as
    ordinary parameters. The initialisation is the explicit step ``init_from_data``; the
    layer itself never looks at data.

    .. math::

        x_{hw} = s \odot z_{hw} + b, \qquad z_{hw} = (x_{hw} - b) / s, \qquad
        \log|\det \mathbf{J}| = H \cdot W \cdot \sum_c \log |s_c|

    The inverse, (x - loc) / scale, is the paper's normalising direction. Invertible for
    s > 0 (kept positive: trained as log s). Cost: O(H W C).

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018.

    Examples
    --------
    >>> import numpy
    >>> f = ActNorm(numpy.zeros(1), numpy.array([2.0]))
    >>> x, log_det = f.forward(numpy.ones((1, 4, 4, 1)))       # 16 positions
    >>> bool(abs(log_det[0] - 16 * numpy.log(2.0)) < 1e-12)
    True
    """

    loc: Any
    scale: Any = field(metadata={"constraint": "positive"})
    event_ndim: int = field(default=3, metadata={"static": True})

    def __post_init__(self):
        _check_event_ndim(self.event_ndim)
        check_array("loc", self.loc, ndim=1)
        check_positive("scale", self.scale)
        check_array("scale", self.scale, ndim=1, last=self.loc.shape[0])

    @classmethod
    def init(cls, rng, dim) -> ActNorm:
        """loc ~ N(0, 0.1^2), scale = exp(N(0, 0.1^2)); ``init_from_data`` then sets both."""
        event_shape = _event_shape(dim)
        c = event_shape[-1]
        loc = 0.1 * rng.standard_normal((c,))
        return cls(loc, np.exp(0.1 * rng.standard_normal((c,))), len(event_shape))

    def _log_det(self, name: str, z):
        _check_channels(name, z, self.loc.shape[0], self.event_ndim)
        per_position = np.sum(np.log(self.scale))
        return _batch_zeros(z, self.event_ndim) + _positions(z, self.event_ndim) * per_position

    def forward(self, z, context=None):
        log_det = self._log_det("z", z)
        return z * self.scale + self.loc, log_det

    def inverse(self, x, context=None):
        log_det = self._log_det("x", x)
        return (x - self.loc) / self.scale, -log_det


class _Reached(Exception):
    """Raised by a probe: the data reached an ActNorm that still needs initialising."""

    def __init__(self, actnorm: ActNorm, h, direction: str):
        super().__init__("ActNorm reached")
        self.actnorm, self.h, self.direction = actnorm, h, direction


@dataclass(frozen=True, eq=False)
class _Probe:
    """Stands in for an uninitialised ActNorm during ``init_from_data`` and reports its input."""

    actnorm: ActNorm

    def forward(self, z, context=None):
        raise _Reached(self.actnorm, z, "forward")

    def inverse(self, x, context=None):
        raise _Reached(self.actnorm, x, "inverse")


def _substitute(obj: Any, fn) -> Any:
    """A copy of ``obj`` with every ActNorm a replaced by fn(a) (dataclasses, tuples walked)."""
    if isinstance(obj, ActNorm):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_substitute(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = object.__new__(type(obj))
        for f in dataclasses.fields(obj):
            object.__setattr__(new, f.name, _substitute(getattr(obj, f.name), fn))
        return new
    return obj


def _actnorms(obj: Any) -> list:
    found: list = []
    _substitute(obj, lambda a: found.append(a) or a)
    return found


def _standardising(actnorm: ActNorm, h, direction: str, min_scale: float) -> ActNorm:
    """The ActNorm whose output, seen from the data side, has zero mean and unit variance."""
    axes = tuple(range(len(h.shape) - 1))
    count = math.prod(h.shape[:-1])
    mean = np.sum(h, axis=axes) / count
    std = np.sqrt(np.sum((h - mean) ** 2, axis=axes) / count)
    # a constant channel has std 0: the floor maps it to 0 instead of NaN
    std = np.maximum(std, min_scale)
    if direction == "inverse":  # data enters through inverse: (h - loc) / scale
        return ActNorm(mean, std, actnorm.event_ndim)
    return ActNorm(-mean / std, 1.0 / std, actnorm.event_ndim)  # data enters through forward


def init_from_data(flow: Any, x: Any, min_scale: float = 1e-3, context: Any = None) -> Any:
    r"""Glow's data-dependent initialisation: every ActNorm standardises the data reaching it.

    Parameters
    ----------
    flow : a ``Flow``, or any bijection (``Compose``, ``Inverse``, ``Glow``, nested) that
        contains ``ActNorm`` layers.
    x : (N, *event_shape) array, a batch of data (the flow's x side).
    min_scale : floor on the per-channel standard deviation, so that a constant channel
        gives a finite scale (its outputs become 0) instead of NaN.
    context : the context of each row of x, (N, C) or (C,), for a conditional flow (its
        couplings lie on the data's path to the later ActNorms); None for an unconditional one.

    Returns
    -------
    A new flow of the same structure; the argument is not changed.

    Notes
    -----
    Lecture: Glow, actnorm: "initialized such that the post-actnorm activations per-channel
    have zero mean and unit variance". The data travels in the density direction
    (``inverse``, from x to z). The ActNorms are set in the order the data reaches them:
    each pass runs the flow with the uninitialised ActNorms replaced by probes, the first
    probe reached reports its input, that ActNorm is set from the input's per-channel mean
    and standard deviation, and the next pass starts. K ActNorms cost K partial passes.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> x = 3.0 + 2.0 * rng(0).standard_normal((500, 4, 4, 2))
    >>> f = init_from_data(ActNorm.init(rng(1), (4, 4, 2)), x)
    >>> h, _ = f.inverse(x)
    >>> bool(abs(h.mean()) < 1e-12 and abs(h.std() - 1.0) < 1e-12)
    True
    """
    check_array("x", x, min_ndim=2)
    if not min_scale > 0:
        raise ValueError(f"min_scale: expected a positive floor, got {min_scale!r}")
    pending = {id(a) for a in _actnorms(flow)}
    while pending:
        probed = _substitute(flow, lambda a: _Probe(a) if id(a) in pending else a)
        try:
            bijection = probed.bijection if isinstance(probed, Flow) else probed
            # an unconditional call keeps the one-argument protocol, which bijections from
            # outside refflow may be limited to
            if context is None:
                bijection.inverse(x)
            else:
                bijection.inverse(x, context=context)
        except _Reached as hit:
            new = _standardising(hit.actnorm, hit.h, hit.direction, min_scale)
            flow = _substitute(flow, lambda a, old=hit.actnorm, new=new: new if a is old else a)
            pending.discard(id(hit.actnorm))
        else:
            break  # the remaining ActNorms are not on the data's path
    return flow


# ------------------------------------------------------------------------- 1x1 convolutions


@dataclass(frozen=True, eq=False)
class Invertible1x1Conv:
    r"""Invertible 1x1 convolution: the same C x C matrix at every pixel, x_hw = W z_hw.

    Parameters
    ----------
    weight : (C, C) invertible matrix W.
    event_ndim : 3 for images (N, H, W, C), 1 for vectors (static).

    Notes
    -----
    Lecture: "Coupling flows", Glow: "Instead of fixed ordering, 1 x 1 convolution is used"
    (a learned generalisation of the channel permutation between couplings).

    .. math::

        x_{hw} = \mathbf{W} z_{hw}, \qquad z_{hw} = \mathbf{W}^{-1} x_{hw}, \qquad
        \log|\det \mathbf{J}| = H \cdot W \cdot \log|\det \mathbf{W}|

    The Jacobian of the whole image map is block diagonal with H W copies of W, hence the
    factor H W (a known bug when missing [2]). Invertible iff det W != 0. Cost: O(C^3) for
    slogdet and for W^{-1} (an LU solve against the identity), O(H W C^2) per image. In
    float32 the LU solve loses digits for ill-conditioned W; ``LUInvertible1x1Conv``
    avoids the factorisation.

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018.
    2. TensorFlow Probability issue #238 (missing spatial factor in a log-det), 2018.

    Examples
    --------
    >>> import numpy
    >>> f = Invertible1x1Conv(numpy.array([[0.0, 2.0], [1.0, 0.0]]))
    >>> x, log_det = f.forward(numpy.ones((1, 3, 3, 2)))          # 9 pixels, |det W| = 2
    >>> x[0, 0, 0].tolist(), bool(abs(log_det[0] - 9 * numpy.log(2.0)) < 1e-12)
    ([2.0, 1.0], True)
    """

    weight: Any
    event_ndim: int = field(default=3, metadata={"static": True})

    def __post_init__(self):
        _check_event_ndim(self.event_ndim)
        check_array("weight", self.weight, ndim=2, last=self.weight.shape[0])
        if float(to_numpy(slogdet(self.weight)[0])) == 0.0:
            raise ValueError("weight: expected an invertible matrix (det W != 0)")

    @classmethod
    def init(cls, rng, dim) -> Invertible1x1Conv:
        """A random rotation, as in Glow: Q of the QR factorisation of a Gaussian matrix."""
        event_shape = _event_shape(dim)
        c = event_shape[-1]
        q, _ = B.xp().linalg.qr(rng.standard_normal((c, c)))
        return cls(q, len(event_shape))

    def _log_det(self, name: str, z):
        _check_channels(name, z, self.weight.shape[0], self.event_ndim)
        per_position = slogdet(self.weight)[1]
        return _batch_zeros(z, self.event_ndim) + _positions(z, self.event_ndim) * per_position

    def forward(self, z, context=None):
        log_det = self._log_det("z", z)
        return z @ self.weight.T, log_det

    def inverse(self, x, context=None):
        log_det = self._log_det("x", x)
        # W^{-1} once (LU with pivoting on C x C), then one product for all pixels
        w_inv = solve(self.weight, B.eye_like(self.weight), columns=True)
        return x @ w_inv.T, -log_det


@dataclass(frozen=True, eq=False)
class LUInvertible1x1Conv:
    r"""Invertible 1x1 convolution with W = P L (U + diag(sign * scale)), Glow's LU form.

    Parameters
    ----------
    perm : (C, C) permutation matrix P (static, fixed at initialisation).
    lower : (C, C) unit lower triangular L.
    upper : (C, C) strictly upper triangular U (its diagonal must be 0).
    scale : (C,) positive |u_ii|.
    sign : (C,) signs of u_ii, +1 or -1 (static).
    event_ndim : 3 for images, 1 for vectors (static).

    Notes
    -----
    Lecture: "Coupling flows", Glow. With W = P L U', U' = U + diag(sign * scale):

    .. math::

        x_{hw} = \mathbf{P}\mathbf{L}\mathbf{U}' z_{hw}, \qquad
        z_{hw} = \mathbf{U}'^{-1} \mathbf{L}^{-1} \mathbf{P}^T x_{hw}, \qquad
        \log|\det \mathbf{J}| = H \cdot W \cdot \sum_c \log s_c

    Invertible by construction (L has a unit diagonal, s > 0). The log-det costs O(C)
    instead of O(C^3), and W^{-1} comes from two triangular solves, O(C^3) once, then
    O(H W C^2) per image, with no pivoted factorisation, which is also what keeps it
    accurate in float32.

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018 (Section 3.2, LU decomposition).

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = LUInvertible1x1Conv.init(rng(0), (2, 2, 3))
    >>> z = rng(1).standard_normal((4, 2, 2, 3))
    >>> x, log_det = f.forward(z)
    >>> bool(abs(f.inverse(x)[0] - z).max() < 1e-12)
    True
    """

    perm: Any = field(metadata={"static": True})
    lower: Any = field(metadata={"constraint": "unit_lower"})
    upper: Any = field(metadata={"constraint": "upper"})
    scale: Any = field(metadata={"constraint": "positive"})
    sign: Any = field(metadata={"static": True})
    event_ndim: int = field(default=3, metadata={"static": True})

    def __post_init__(self):
        _check_event_ndim(self.event_ndim)
        c = self.scale.shape[0] if getattr(self.scale, "ndim", 0) == 1 else -1
        check_positive("scale", self.scale)
        for name in ("perm", "lower", "upper"):
            check_array(name, getattr(self, name), ndim=2, last=(c, c))
        check_array("sign", self.sign, ndim=1, last=c)
        host = {n: to_numpy(getattr(self, n)) for n in ("perm", "lower", "upper", "sign")}
        if not ((host["perm"].sum(0) == 1).all() and (host["perm"].sum(1) == 1).all()
                and ((host["perm"] == 0) | (host["perm"] == 1)).all()):
            raise ValueError("perm: expected a permutation matrix (one 1 per row and column)")
        if np.triu(host["lower"], 1).any() or (np.diagonal(host["lower"]) != 1).any():
            raise ValueError("lower: expected a lower triangular matrix with unit diagonal")
        if np.tril(host["upper"]).any():
            raise ValueError("upper: expected a strictly upper triangular matrix (zero diagonal)")
        if not (abs(host["sign"]) == 1).all():
            raise ValueError("sign: expected entries +1 or -1")

    @classmethod
    def init(cls, rng, dim) -> LUInvertible1x1Conv:
        """The LU factors of a random rotation (Glow's initialisation)."""
        event_shape = _event_shape(dim)
        c = event_shape[-1]
        q, _ = B.xp().linalg.qr(rng.standard_normal((c, c)))
        p, lower, u = lu(q)
        diag = B.xp().diagonal(u)
        strict = u - B.xp().diag(diag)
        return cls(p, lower, strict, abs(diag), B.xp().sign(diag), len(event_shape))

    def _triangular(self):
        """U' = U + diag(sign * scale), built by broadcasting (no host identity)."""
        eye = B.eye_like(self.upper)
        # the "upper" constraint keeps the diagonal of the leaf; only its strict part counts
        return np.triu(self.upper, 1) + eye * (self.sign * self.scale)

    def weight(self):
        """The full matrix W = P L U'."""
        return self.perm @ (self.lower @ self._triangular())

    def _log_det(self, name: str, z):
        _check_channels(name, z, self.scale.shape[0], self.event_ndim)
        per_position = np.sum(np.log(self.scale))
        return _batch_zeros(z, self.event_ndim) + _positions(z, self.event_ndim) * per_position

    def forward(self, z, context=None):
        log_det = self._log_det("z", z)
        return z @ self.weight().T, log_det

    def inverse(self, x, context=None):
        log_det = self._log_det("x", x)
        # W^{-1} = U'^{-1} L^{-1} P^T by two triangular solves on the C x C matrix P^T, then
        # one product for all pixels: the solves' O(C) sequential steps run on C x C arrays,
        # not on the whole batch
        p_t = self.perm.T
        l_inv_p_t = solve_triangular(self.lower, p_t, lower=True, unit_diagonal=True,
                                     columns=True)
        w_inv = solve_triangular(self._triangular(), l_inv_p_t, lower=False, columns=True)
        return x @ w_inv.T, -log_det


# ---------------------------------------------------------------------------------- squeeze


def _squeeze(z):
    """(..., H, W, C) -> (..., H/2, W/2, 4C); channel index (a, b, c) -> 2C a + C b + c."""
    h, w, c = z.shape[-3:]
    lead = z.shape[:-3]
    blocks = np.reshape(z, lead + (h // 2, 2, w // 2, 2, c))  # (..., H/2, a, W/2, b, C)
    # swapaxes, not transpose: its gradient takes the same two integers, no index array
    blocks = np.swapaxes(blocks, -4, -3)  # (..., H/2, W/2, a, b, C)
    return np.reshape(blocks, lead + (h // 2, w // 2, 4 * c))


def _unsqueeze(x):
    """(..., H, W, 4C) -> (..., 2H, 2W, C), the inverse of ``_squeeze``."""
    h, w, c4 = x.shape[-3:]
    lead = x.shape[:-3]
    blocks = np.reshape(x, lead + (h, w, 2, 2, c4 // 4))  # (..., H, W, a, b, C)
    blocks = np.swapaxes(blocks, -4, -3)  # (..., H, a, W, b, C)
    return np.reshape(blocks, lead + (2 * h, 2 * w, c4 // 4))


@dataclass(frozen=True, eq=False)
class Squeeze:
    r"""Space-to-depth: each 2 x 2 x C block becomes one pixel with 4C channels.

    Notes
    -----
    Lecture: "Coupling flows", Glow (the multi-scale architecture of RealNVP [1]). Trades
    spatial size for channels, so that channel couplings and 1x1 convolutions mix
    neighbouring pixels. ``forward`` maps (N, H, W, C) to (N, H/2, W/2, 4C); the event
    shape changes, the number of coordinates does not.

    .. math::

        x_{i, j, 2Ca + Cb + c} = z_{2i + a,\, 2j + b,\, c} \quad (a, b \in \{0, 1\}),
        \qquad \log|\det \mathbf{J}| = 0

    A permutation of the coordinates, so always invertible with |det J| = 1 (H and W must
    be even). Cost: one copy, O(H W C).

    References
    ----------
    1. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.

    Examples
    --------
    >>> import numpy
    >>> z = numpy.arange(4.0).reshape(1, 2, 2, 1)
    >>> x, log_det = Squeeze().forward(z)
    >>> x.tolist(), log_det.tolist()
    ([[[[0.0, 1.0, 2.0, 3.0]]]], [0.0])
    """

    @classmethod
    def init(cls, rng, dim) -> Squeeze:
        """The squeeze for images of shape ``dim`` = (H, W, C), H and W even."""
        h, w, _ = _event_shape(dim) if isinstance(dim, (tuple, list)) else (1, 1, 1)
        if not isinstance(dim, (tuple, list)) or h % 2 or w % 2:
            raise ValueError(f"dim: expected an image shape (H, W, C) with H, W even, got {dim}")
        return cls()

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=3, finite=False)
        if z.shape[-3] % 2 or z.shape[-2] % 2:
            raise ValueError(f"z: expected even height and width, got shape {z.shape}")
        return _squeeze(z), _batch_zeros(z, 3)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=3, finite=False)
        if x.shape[-1] % 4:
            raise ValueError(f"x: expected a multiple of 4 channels, got shape {x.shape}")
        return _unsqueeze(x), _batch_zeros(x, 3)


# ------------------------------------------------------------------------- step and model


@dataclass(frozen=True, eq=False)
class GlowStep:
    r"""One step of Glow's flow; from data to latent: actnorm -> 1x1 conv -> affine coupling.

    Parameters
    ----------
    actnorm : ``ActNorm``.
    conv : ``Invertible1x1Conv`` or ``LUInvertible1x1Conv``.
    coupling : ``AffineCoupling`` (a channel split with a ``ConvNet`` conditioner); its
        ``context_dim`` C > 0 makes the step conditional (C extra input channels, c broadcast
        over H and W), and is the step's ``context_dim``.

    Notes
    -----
    Lecture: "Coupling flows", Glow, the three substeps. In refflow's generative direction
    the order reverses, x = actnorm(conv(coupling(z))):

    .. math::

        x = f_{\mathrm{act}} \circ f_{1\times1} \circ f_{\mathrm{cpl}}(z), \qquad
        \log|\det \mathbf{J}| = H W \textstyle\sum_c \log s_c + H W \log|\det \mathbf{W}|
            + \sum s(z^B)

    Invertible as a composition of invertible maps. Cost per image: O(H W C^2) for the
    1x1 convolution plus the conditioner's O(H W k^2 C h) for h hidden channels. With a
    context, s and t are s(z^B, c), t(z^B, c): the same log-det at each fixed c.

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018 (Figure 2a, Table 1).

    Examples
    --------
    >>> from refflow.backend import rng
    >>> step = GlowStep.init(rng(0), (4, 4, 2), hidden=8)
    >>> x, log_det = step.forward(rng(1).standard_normal((3, 4, 4, 2)))
    >>> x.shape, log_det.shape
    ((3, 4, 4, 2), (3,))
    """

    actnorm: ActNorm
    conv: Any
    coupling: AffineCoupling

    @property
    def context_dim(self) -> int:
        """The context dimension C of the coupling (0: unconditional)."""
        return self.coupling.context_dim

    @classmethod
    def init(cls, rng, dim, hidden: int = 32, lu: bool = True, zero_last: bool = False,
             scale_bound: float = 2.0, activation: str = "relu",
             context_dim: int = 0) -> GlowStep:
        """A step for images of shape ``dim`` = (H, W, C), C >= 2 (channel split C // 2).

        ``zero_last=True`` starts the coupling at the identity (Glow's choice for training);
        ``context_dim`` C > 0 gives the coupling's conv net C context channels.
        """
        event_shape = _event_shape(dim)
        if len(event_shape) != 3 or event_shape[-1] < 2:
            raise ValueError(f"dim: expected an image shape (H, W, C) with C >= 2, got {dim}")
        conv_cls = LUInvertible1x1Conv if lu else Invertible1x1Conv
        return cls(
            ActNorm.init(rng, event_shape),
            conv_cls.init(rng, event_shape),
            AffineCoupling.init(rng, event_shape, hidden=(hidden, hidden), activation=activation,
                                zero_last=zero_last, scale_bound=scale_bound,
                                context_dim=context_dim),
        )

    def forward(self, z, context=None):
        h, ld_coupling = self.coupling.forward(z, context=context)
        h, ld_conv = self.conv.forward(h, context=context)
        x, ld_act = self.actnorm.forward(h, context=context)
        return x, ld_coupling + ld_conv + ld_act

    def inverse(self, x, context=None):
        h, ld_act = self.actnorm.inverse(x, context=context)
        h, ld_conv = self.conv.inverse(h, context=context)
        z, ld_coupling = self.coupling.inverse(h, context=context)
        return z, ld_act + ld_conv + ld_coupling


@dataclass(frozen=True, eq=False)
class Glow:
    r"""Glow's multi-scale flow: L levels of (squeeze, K steps, factor out half the channels).

    Parameters
    ----------
    levels : tuple of L tuples of ``GlowStep``; level l acts on the squeezed image of
        shape (H / 2^(l+1), W / 2^(l+1), C_l) with C_0 = 4C and C_{l+1} = 2 C_l. Conditional
        steps must share one context dimension, the flow's ``context_dim``; the context, (N, C)
        or (C,), is passed to every step.

    Notes
    -----
    Lecture: "Coupling flows", Glow (Figure 2b of [1]; the multi-scale architecture of
    RealNVP [2]). Read from data to latent (``inverse``), for x of shape (N, H, W, C):

    1. level l squeezes its input, (H_l, W_l, C') -> (H_l / 2, W_l / 2, 4C'), and applies
       its K steps;
    2. every level but the last factors out the second half of the channels: those go
       straight to the base density, the first half enters level l + 1;
    3. the latent z is laid out again as (N, H, W, C) by concatenating each level's output
       with the half it factored out and un-squeezing, from the last level back to the
       first. So z has the data's shape and ``Flow(StandardNormal((H, W, C)), glow)``
       gives every factored-out variable the standard normal density.

    ``forward`` (sampling) runs the same three stages backwards. Squeezes and splits are
    permutations of coordinates (log-det 0), so

    .. math::

        \log|\det \mathbf{J}_f| = \sum_{l=1}^{L} \sum_{k=1}^{K} \log|\det \mathbf{J}_{l,k}|.

    Invertible as a composition of invertible steps and permutations; H and W must be
    divisible by 2^L. Cost: the sum of the steps'; later levels are cheaper (a quarter of
    the pixels, twice the channels).

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018.
    2. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> glow = Glow.init(rng(0), (8, 8, 1), levels=2, steps=2, hidden=8)
    >>> x = rng(1).standard_normal((3, 8, 8, 1))
    >>> z, log_det = glow.inverse(x)
    >>> z.shape, bool(abs(glow.forward(z)[0] - x).max() < 1e-10)
    ((3, 8, 8, 1), True)
    """

    levels: tuple

    def __post_init__(self):
        if not self.levels or not all(len(steps) > 0 for steps in self.levels):
            raise ValueError("levels: expected at least one level, each with at least one step")
        dims = {step.context_dim for steps in self.levels for step in steps} - {0}
        if len(dims) > 1:
            raise ValueError(f"levels: the conditional steps take contexts of different "
                             f"dimensions {sorted(dims)}; expected one")

    @property
    def context_dim(self) -> int:
        """The common context dimension C of the conditional steps (0: unconditional)."""
        dims = {step.context_dim for steps in self.levels for step in steps} - {0}
        return dims.pop() if dims else 0

    @classmethod
    def init(cls, rng, dim, levels: int = 2, steps: int = 4, hidden: int = 32, lu: bool = True,
             zero_last: bool = False, scale_bound: float = 2.0,
             activation: str = "relu", context_dim: int = 0) -> Glow:
        """A Glow for images ``dim`` = (H, W, C) with H, W divisible by 2^levels.

        Use ``zero_last=True`` for training (every coupling starts at the identity), then
        ``init_from_data`` to set the ActNorms. ``context_dim`` C > 0 conditions every step.
        """
        h, w, c = _event_shape(dim) if isinstance(dim, (tuple, list)) else (0, 0, 0)
        levels, steps = check_int("levels", levels), check_int("steps", steps)
        if h == 0 or h % 2**levels or w % 2**levels:
            raise ValueError(f"dim: expected (H, W, C) with H, W divisible by {2**levels}, "
                             f"got {dim}")
        built = []
        for level in range(levels):
            h, w, c = h // 2, w // 2, 4 * c  # after this level's squeeze
            built.append(tuple(
                GlowStep.init(rng, (h, w, c), hidden=hidden, lu=lu, zero_last=zero_last,
                              scale_bound=scale_bound, activation=activation,
                              context_dim=context_dim)
                for _ in range(steps)))
            c = c // 2 if level < levels - 1 else c  # the factored-out half leaves
        return cls(tuple(built))

    def _check(self, name, a):
        check_array(name, a, min_ndim=3, finite=False)
        if a.shape[-3] % 2 ** len(self.levels) or a.shape[-2] % 2 ** len(self.levels):
            raise ValueError(f"{name}: expected H, W divisible by {2 ** len(self.levels)}, "
                             f"got shape {a.shape}")

    def inverse(self, x, context=None):
        self._check("x", x)
        last = len(self.levels) - 1
        h, total, factored = x, 0.0, []
        for level, steps in enumerate(self.levels):
            h = _squeeze(h)
            for step in steps:
                h, log_det = step.inverse(h, context=context)
                total = total + log_det
            if level < last:
                half = h.shape[-1] // 2
                factored.append(h[..., half:])  # to the base density
                h = h[..., :half]
        for level in reversed(range(len(self.levels))):
            if level < last:
                h = np.concatenate([h, factored[level]], axis=-1)
            h = _unsqueeze(h)
        return h, total

    def forward(self, z, context=None):
        self._check("z", z)
        last = len(self.levels) - 1
        h, total, factored = z, 0.0, []
        for level in range(len(self.levels)):
            h = _squeeze(h)
            if level < last:
                half = h.shape[-1] // 2
                factored.append(h[..., half:])
                h = h[..., :half]
        for level in reversed(range(len(self.levels))):
            if level < last:
                h = np.concatenate([h, factored[level]], axis=-1)
            for step in reversed(self.levels[level]):
                h, log_det = step.forward(h, context=context)
                total = total + log_det
            h = _unsqueeze(h)
        return h, total
