r"""Autoregressive flows: the masked conditioner ``MADE``, ``MAF``, ``IAF`` and ``SlowMAF``.

An autoregressive bijection transforms each coordinate with an element-wise transformer h
whose parameters theta_i depend only on the coordinates before i:

    MAF:  x_i = h(z_i; Theta_i(x_<i)),        IAF:  x_i = h(z_i; Theta_i(z_<i)).

The Jacobian is triangular (in the autoregressive order) with diagonal dh/dz_i, so the
log-determinant is a sum of D log-derivatives. The two directions cost differently: the
direction whose conditioner reads the *output* is sequential (D passes of the conditioner,
one coordinate becoming exact per pass), the other one is a single pass. With refflow's
convention (``forward`` is the generative direction z -> x), MAF samples in D passes and
evaluates densities in one; IAF the other way round. ``benchmarks/autoregressive_costs.py``
measures it, ``docs/autoregressive_costs.md`` holds the table.

Transformers: by default the lecture's affine map x_i = z_i exp(alpha_i) + mu_i, with
theta_i = (mu_i, alpha_i). Any element-wise transformer class of the protocol that
``Coupling`` uses too may replace it: P = ``num_params(**options)`` parameters per
coordinate, ``from_unconstrained(theta, **options)`` for theta of shape (..., D, P), and
instances whose ``forward_elementwise(z)`` / ``inverse_elementwise(x)`` give the value and
the element-wise log-derivative in one call, e.g.
``refflow.elementwise.RationalQuadraticSpline`` (a neural spline autoregressive flow).

Notes
-----
Lecture: "Autoregressive flows", "Autoregressive flows (Masked autoregressive flows)",
"Autoregressive flows (Inverse autoregressive flows)", and the introduction's autoregressive
models p(x) = prod_i p(x_i | x_<i).

.. math::

    x_i = h(z_i; \Theta_i(x_{<i})), \qquad z_i = h^{-1}(x_i; \Theta_i(x_{<i})), \qquad
    \log|\det \mathbf{J}_f| = \sum_{i=1}^D \log \left|\frac{\partial h}{\partial z_i}\right|

The lecture's statement "each output x_i depends only on z_<i" should read z_<=i: x_i
depends on z_i and, through x_<i, on the earlier z (erratum).

References
----------
1. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
   Estimation. NeurIPS, 2017.
2. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. Improving
   Variational Inference with Inverse Autoregressive Flow. NeurIPS, 2016.
3. M. Germain, K. Gregor, I. Murray, H. Larochelle. MADE: Masked Autoencoder for
   Distribution Estimation. ICML, 2015.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.checks import check_array, check_context, check_int
from refflow.fast import replaceable
from refflow.nn import MLP, MaskedMLP
from refflow.nn import activation as _activation
from refflow.ops import where

__all__ = ["MADE", "MAF", "IAF", "SlowMAF", "affine_transformer"]


@replaceable("affine_transformer")
def affine_transformer(v, theta, inverse: bool = False):
    r"""The lecture's MAF transformer x = z exp(alpha) + mu and its log-derivative alpha.

    Parameters
    ----------
    v : (..., D) array, z (or x when ``inverse``).
    theta : (..., D, 2) array, (mu, alpha) per coordinate, broadcasting against v.
    inverse : bool; True gives z = (x - mu) exp(-alpha) and -alpha.

    Returns
    -------
    (u, log_d) : the transformed v and the element-wise log-derivative, log dx/dz = alpha
        (log dz/dx = -alpha for the inverse).

    Notes
    -----
    Lecture: "Autoregressive flows (Masked autoregressive flows)".

    .. math::

        x_i = z_i \exp\alpha_i + \mu_i, \qquad z_i = (x_i - \mu_i) \exp(-\alpha_i), \qquad
        \log \frac{\partial x_i}{\partial z_i} = \alpha_i
    """
    mu, alpha = theta[..., 0], theta[..., 1]
    if inverse:
        return (v - mu) * np.exp(-alpha), -alpha
    return v * np.exp(alpha) + mu, alpha


@dataclass(frozen=True, eq=False)
class _LectureAffine:
    r"""The lecture's MAF transformer x = z exp(alpha) + mu, theta = (mu, alpha) unconstrained.

    Private: the default transformer of ``MAF``, ``IAF`` and ``SlowMAF``; only ever built from
    a conditioner's output by ``from_unconstrained``. It is ``elementwise.ScalarAffine`` with
    theta reordered ((log a, b) there); kept so that MAF reads exactly as the lecture writes
    it, theta_i = (mu_i, alpha_i) and log|det J| = sum_i alpha_i (not log exp alpha_i).
    """

    theta: Any  # (..., D, 2): (mu, alpha) per coordinate

    @classmethod
    def num_params(cls) -> int:
        """Raw parameters per coordinate: (mu, alpha)."""
        return 2

    @classmethod
    def from_unconstrained(cls, theta) -> _LectureAffine:
        return cls(theta)

    def forward_elementwise(self, z):
        """x = z exp(alpha) + mu and log dx/dz = alpha, element-wise."""
        return affine_transformer(z, self.theta)

    def inverse_elementwise(self, x):
        """z = (x - mu) exp(-alpha) and log dz/dx = -alpha, element-wise."""
        return affine_transformer(x, self.theta, True)


_PROTOCOL = ("num_params", "from_unconstrained", "forward_elementwise", "inverse_elementwise")


def _transformer_class(transformer: Any) -> Any:
    t = _LectureAffine if transformer is None else transformer
    if not all(hasattr(t, name) for name in _PROTOCOL):
        raise ValueError(
            "transformer: expected an element-wise transformer class with "
            f"{', '.join(_PROTOCOL)}, got {t!r}"
        )
    return t


def _params_per_dim(transformer: Any, options: dict) -> int:
    """P = ``transformer.num_params(**options)``, the raw parameters per coordinate."""
    return int(_transformer_class(transformer).num_params(**options))


def _apply(h: Any, v, inverse: bool):
    """(u, log|det J|): one call of the transformer h, its log-derivatives summed over D."""
    u, log_d = h.inverse_elementwise(v) if inverse else h.forward_elementwise(v)
    return u, np.sum(log_d, axis=-1)


def _order(order: Any, dim: int, rng: Any) -> tuple:
    if isinstance(order, str):
        if order == "natural":
            return tuple(range(dim))
        if order == "reversed":
            return tuple(range(dim - 1, -1, -1))
        if order == "random":
            return tuple(int(i) for i in B.to_numpy(rng.permutation(dim)).tolist())
        raise ValueError(
            f"order: expected 'natural', 'reversed', 'random' or a permutation, got {order!r}"
        )
    perm = tuple(int(i) for i in B.to_numpy(B.asarray(order)).reshape(-1).tolist())
    if sorted(perm) != list(range(dim)):
        raise ValueError(f"order: expected a permutation of 0..{dim - 1}, got {list(perm)}")
    return perm


def _made_masks(order: tuple, hidden: tuple, outputs_per_dim: int, dtype: Any,
                context_dim: int = 0) -> tuple:
    """MADE's masks from degrees: a unit of degree m sees exactly the inputs of degree <= m.

    1. Input j gets degree rank(j) + 1, where rank(j) is its position in ``order``.
    2. Hidden units get degrees 1..D-1 in turn (a unit of degree D could only feed outputs
       that are not allowed to see it); for D = 1 they get degree 1 and reach no output.
    3. Weights into a hidden unit keep in-degree <= out-degree; weights into the output
       block of coordinate i keep degrees < rank(i) + 1, strictly, so theta_i never sees x_i.
    4. With a context, every layer gets C more input rows, all ones: c reaches every unit, so
       theta_i may depend on all of c, and the order constrains x alone.
    """
    dim = len(order)
    rank = [0] * dim
    for position, coordinate in enumerate(order):
        rank[coordinate] = position
    deg_in = B.asarray(rank) + 1  # (D,)
    # output unit i * P + p carries parameter p of coordinate i
    deg_out = B.asarray([r + 1 for r in rank for _ in range(outputs_per_dim)])  # (D * P,)
    masks = []
    previous = deg_in
    for size in hidden:
        deg_h = B.arange(size) % max(dim - 1, 1) + 1
        masks.append((previous[:, None] <= deg_h[None, :]).astype(dtype))
        previous = deg_h
    masks.append((previous[:, None] < deg_out[None, :]).astype(dtype))
    if context_dim:
        masks = [B.xp().concatenate([m, B.ones((context_dim, m.shape[1]), dtype=dtype)])
                 for m in masks]
    return tuple(masks)


@dataclass(frozen=True, eq=False)
class MADE:
    r"""Masked autoencoder theta = MADE(x), theta_i = Theta_i(x_<i): one pass gives all D blocks.

    Parameters
    ----------
    net : MaskedMLP
        The masked network, input size D (+ C context rows in every layer), output size
        D * P; output unit i * P + p is parameter p of coordinate i.
    order : tuple of int, static
        The autoregressive order: ``order[k]`` is the coordinate generated k-th, so theta of
        coordinate ``order[k]`` depends on ``x[order[:k]]`` only.
    outputs_per_dim : int, static
        P, the number of parameters per coordinate.

    Notes
    -----
    Lecture: "Autoregressive flows (Masked autoregressive flows)": "we share parameters
    between conditioners by combining them into a single model Theta that takes in x and
    outputs (theta_1, ..., theta_D)", constrained so that theta_i depends on x_1..x_{i-1}
    only. MADE enforces it by multiplying each weight matrix by a binary mask built from
    unit degrees m (Germain et al. 2015):

    .. math::

        M^{\ell}_{kk'} = [\, m^{\ell-1}(k) \le m^{\ell}(k') \,], \qquad
        M^{\mathrm{out}}_{k i} = [\, m^{L}(k) < m^{\mathrm{in}}(i) \,]

    so :math:`\partial \theta_i / \partial x_j = 0` unless j comes before i. Cost: one pass
    of a dense MLP, O(D H + H^2) per sample for width H.

    With a context (``init(..., context_dim=C)``, theta = MADE(x, c)), c is an unmasked input
    of every layer, h_l = act(h_{l-1} (W_l * M_l) + c U_l + b_l): the order constrains x
    alone, and every theta_i may depend on all of c (Papamakarios et al. 2017, section 3.4).

    References
    ----------
    1. M. Germain, K. Gregor, I. Murray, H. Larochelle. MADE: Masked Autoencoder for
       Distribution Estimation. ICML, 2015.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> made = MADE.init(rng(0), 3, hidden=(8,), outputs_per_dim=2)
    >>> theta = made(rng(1).standard_normal((5, 3)))
    >>> theta.shape
    (5, 3, 2)
    >>> bool(abs(theta[0, 0] - theta[1, 0]).max() == 0.0)    # theta_1 sees no input
    True
    """

    net: MaskedMLP
    order: tuple = field(metadata={"static": True})
    outputs_per_dim: int = field(default=2, metadata={"static": True})

    def __post_init__(self):
        if not isinstance(self.net, MaskedMLP):
            raise ValueError(f"net: expected a refflow.nn.MaskedMLP, got {type(self.net).__name__}")
        dim = len(self.order)
        if sorted(self.order) != list(range(dim)) or dim == 0:
            raise ValueError(f"order: expected a permutation of 0..D-1, got {self.order!r}")
        check_int("outputs_per_dim", self.outputs_per_dim)
        weights = self.net.weights
        n_in, n_out = weights[0].shape[0], weights[-1].shape[1]
        if n_in < dim or n_out != dim * self.outputs_per_dim:
            raise ValueError(
                f"net: expected {dim} inputs (+ C context rows) and "
                f"{dim * self.outputs_per_dim} outputs, got {n_in} and {n_out}"
            )
        # the context is an input of every layer: each has the same C extra rows
        extra = [w.shape[0] - prev.shape[1] for prev, w in zip(weights[:-1], weights[1:])]
        if any(e != n_in - dim for e in extra):
            raise ValueError(f"net: expected {n_in - dim} context rows in every layer, got "
                             f"{[n_in - dim] + extra}")

    @property
    def dim(self) -> int:
        return len(self.order)

    @property
    def context_dim(self) -> int:
        """C, the size of the context (0: unconditional): the extra input rows of each layer."""
        return self.net.weights[0].shape[0] - self.dim

    @classmethod
    def init(cls, rng: Any, dim: int, hidden: tuple = (64, 64), outputs_per_dim: int = 2,
             order: Any = "natural", activation: str = "tanh", dtype: Any = None,
             context_dim: int = 0) -> MADE:
        """Masks for ``order`` ('natural', 'reversed', 'random' from ``rng``, or a permutation).

        Weights are N(0, 1/fan_in) before masking, biases zero; ``hidden`` may be empty
        (a single masked linear layer). ``context_dim`` C > 0 adds C unmasked input rows
        to every layer, the context's weights U_l.
        """
        dim = check_int("dim", dim)
        p = check_int("outputs_per_dim", outputs_per_dim)
        context_dim = check_int("context_dim", context_dim, minimum=0)
        hidden = tuple(check_int("hidden", h) for h in hidden)
        _activation(activation)
        perm = _order(order, dim, rng)
        dtype = B.xp().float64 if dtype is None else dtype
        masks = _made_masks(perm, hidden, p, dtype, context_dim)
        sizes = (dim,) + hidden + (dim * p,)
        weights = tuple(
            rng.standard_normal((a + context_dim, b), dtype=dtype) / math.sqrt(a + context_dim)
            for a, b in zip(sizes[:-1], sizes[1:])
        )
        biases = tuple(B.zeros((b,), dtype=dtype) for b in sizes[1:])
        return cls(MaskedMLP(weights, biases, masks, activation), perm, p)

    def conditioned(self, context: Any, batch_shape: tuple = ()) -> MADE:
        """The unconditional MADE x -> Theta(x; c) at the context c (``self`` when C = 0).

        ``context`` is None for C = 0, else (C,) or ``batch_shape + (C,)``; anything else
        raises ValueError naming it. Each layer's context term b_l + c U_l is computed here,
        once: a sequential direction reuses it in its D passes.
        """
        context = check_context("MADE", context, self.context_dim, batch_shape)
        if context is None:
            return self
        return MADE(self.net.conditioned(context), self.order, self.outputs_per_dim)

    def __call__(self, x, context=None):
        if context is not None or self.context_dim:
            return self.conditioned(context, x.shape[:-1])(x)
        h = self.net(x)  # (..., D * P)
        return np.reshape(h, h.shape[:-1] + (self.dim, self.outputs_per_dim))

    def block(self, x, i: int, context=None):
        """theta_i (..., 1, P) alone, equal to ``self(x, context)[..., i:i + 1, :]``: the hidden
        layers, then only the P output units of coordinate i."""
        if context is not None or self.context_dim:
            return self.conditioned(context, x.shape[:-1]).block(x, i)
        p = self.outputs_per_dim
        theta_i = self.net.output_units(self.net.hidden(x), slice(i * p, (i + 1) * p))
        return np.reshape(theta_i, theta_i.shape[:-1] + (1, p))


def _check_conditioner(made: Any, transformer: Any, options: dict) -> None:
    if not callable(made):
        raise ValueError(f"made: expected a conditioner x -> theta (..., D, P), got {made!r}")
    t = _transformer_class(transformer)
    p = getattr(made, "outputs_per_dim", None)
    if p is not None and p != _params_per_dim(t, options):
        raise ValueError(
            f"made: expected outputs_per_dim = {_params_per_dim(t, options)} for "
            f"{t.__name__}, got {p}"
        )


@dataclass(frozen=True, eq=False)
class _Autoregressive:
    """What MAF and IAF share: a conditioner, a transformer class and its static options."""

    made: Any
    transformer: Any = field(default=None, metadata={"static": True})
    options: dict = field(default_factory=dict, metadata={"static": True})

    def __post_init__(self):
        _check_conditioner(self.made, self.transformer, self.options)

    @property
    def context_dim(self) -> int:
        """C, the size of the context (0: unconditional), the conditioner's."""
        return int(getattr(self.made, "context_dim", 0))

    @classmethod
    def init(cls, rng: Any, dim: int, hidden: tuple = (64, 64), transformer: Any = None,
             order: Any = "natural", activation: str = "tanh", dtype: Any = None,
             context_dim: int = 0, **options: Any) -> Any:
        """A MADE conditioner sized for ``transformer`` (default: the lecture's affine map);
        ``context_dim`` C > 0 makes it read a context c in every layer."""
        p = _params_per_dim(_transformer_class(transformer), options)
        made = MADE.init(rng, dim, hidden, p, order, activation, dtype, context_dim)
        return cls(made, transformer, dict(options))

    def _h(self, theta):
        return _transformer_class(self.transformer).from_unconstrained(theta, **self.options)

    def _conditioner(self, v, context):
        """The conditioner v -> theta at this context, checked against v's batch shape.

        A MADE folds the context into its biases once (``MADE.conditioned``); another
        conditioner with a ``context_dim`` is called as ``made(v, context)``. An unconditional
        flow passes a context by, as the families without a conditioner do.
        """
        if not self.context_dim:
            return self.made
        context = check_context(type(self).__name__, context, self.context_dim, v.shape[:-1])
        if isinstance(self.made, MADE):
            return self.made.conditioned(context, v.shape[:-1])
        return lambda u: self.made(u, context)

    def _sequential(self, v, inverse: bool, made: Any):
        """The D-pass direction, u_i = h^{+-1}(v_i; Theta_i(u_<i)), with its log-det.

        With a MADE, pass k computes coordinate order[k] alone: its block theta_i and one
        transformer call on (..., 1), a D-fold saving on the output layer and the transformer
        (a spline's softmax and knots). Any other conditioner gets D full passes: after pass
        k the first k coordinates in the order are exact, so the last pass gives all of u and,
        its theta depending on exact values only, the exact log-det. ``made`` is the
        conditioner at the context (``_conditioner``): every pass sees the same context.
        """
        if not isinstance(made, MADE):
            u = np.zeros_like(v)
            for _ in range(v.shape[-1]):
                u, log_det = _apply(self._h(made(u)), v, inverse)
            return u, log_det
        u, log_det = np.zeros_like(v), 0.0
        columns = B.eye_like(v) > 0                                 # (D, D): column i of u
        for i in made.order:
            u_i, log_det_i = _apply(self._h(made.block(u, i)), v[..., i:i + 1], inverse)
            u = where(columns[i], u_i, u)
            log_det = log_det + log_det_i
        return u, log_det


@dataclass(frozen=True, eq=False)
class MAF(_Autoregressive):
    r"""Masked autoregressive flow x_i = h(z_i; Theta_i(x_<i)), default z_i exp(alpha_i) + mu_i.

    Parameters
    ----------
    made : MADE (or any conditioner x (..., D) -> theta (..., D, P) with the
        autoregressive property; one with ``context_dim`` C > 0 is called as made(x, c))
    transformer : element-wise transformer class, static
        ``None`` for the lecture's affine map, theta_i = (mu_i, alpha_i).
    options : dict, static
        Static keyword arguments of ``transformer.from_unconstrained`` (a spline's bins).

    Notes
    -----
    Lecture: "Autoregressive flows (Masked autoregressive flows)". Sampling (``forward``):
    x_i = z_i exp(alpha_i) + mu_i, with mu_i = f_mu_i(x_{1:i-1}), alpha_i = f_alpha_i(x_{1:i-1});
    density (``inverse``): p(x) = prod_i N(x_i | mu_i, (exp alpha_i)^2).

    .. math::

        x_i = z_i \exp\alpha_i + \mu_i, \qquad
        z_i = (x_i - \mu_i) \exp(-\alpha_i), \qquad
        \log|\det \mathbf{J}_f| = \sum_{i=1}^D \alpha_i

    Invertible for any conditioner, since exp(alpha_i) > 0 (for another transformer: when
    h is strictly monotone in z_i). Cost: ``inverse`` (density) is one conditioner pass,
    O(1) passes; ``forward`` (sampling) runs D passes, O(D): pass k computes the coordinate
    ``made.order[k]`` from the k exact ones before it (with a MADE only that coordinate's
    block of theta and one transformer call; with another conditioner a whole pass, after
    which the first k coordinates in the order are exact). No coordinate is written in
    place; to count passes, wrap the conditioner in a callable that counts its calls
    (``benchmarks/autoregressive_costs.py`` does).

    Conditional (``init(..., context_dim=C)``): x_i = h(z_i; Theta_i(x_<i, c)), the same
    formulas at each fixed context c, passed as ``forward(z, context)`` /
    ``inverse(x, context)`` with shape (C,) or batch + (C,); the D passes of sampling all see
    the same c. Without a context a conditional MAF raises ValueError; an unconditional one
    passes a context by.

    References
    ----------
    1. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
       Estimation. NeurIPS, 2017.
    2. M. Germain, K. Gregor, I. Murray, H. Larochelle. MADE: Masked Autoencoder for
       Distribution Estimation. ICML, 2015.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> maf = MAF.init(rng(0), 3, hidden=(16,))
    >>> z = rng(1).standard_normal((4, 3))
    >>> x, log_det = maf.forward(z)                 # 3 conditioner passes
    >>> z_back, inv_log_det = maf.inverse(x)        # 1 pass
    >>> bool(abs(z_back - z).max() < 1e-12), bool(abs(log_det + inv_log_det).max() < 1e-12)
    (True, True)
    """

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=getattr(self.made, "dim", None), finite=False)
        return self._sequential(z, False, self._conditioner(z, context))

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=getattr(self.made, "dim", None), finite=False)
        return _apply(self._h(self._conditioner(x, context)(x)), x, inverse=True)


@dataclass(frozen=True, eq=False)
class IAF(_Autoregressive):
    r"""Inverse autoregressive flow x_i = h(z_i; Theta_i(z_<i)), default z_i exp(alpha_i) + mu_i.

    Parameters
    ----------
    made : MADE (or any conditioner z (..., D) -> theta (..., D, P) with the
        autoregressive property; one with ``context_dim`` C > 0 is called as made(z, c))
    transformer : element-wise transformer class, static (``None``: the lecture's affine map)
    options : dict, static, keyword arguments of ``transformer.from_unconstrained``

    Notes
    -----
    Lecture: "Autoregressive flows (Inverse autoregressive flows)": the shift and scale are
    computed from the previous noise variates z_{1:i-1} instead of the data.

    .. math::

        x_i = z_i \exp\alpha_i + \mu_i,\quad \mu_i = f_{\mu_i}(z_{1:i-1}),\
        \alpha_i = f_{\alpha_i}(z_{1:i-1}), \qquad
        z_i = (x_i - \mu_i) \exp(-\alpha_i), \qquad
        \log|\det \mathbf{J}_f| = \sum_{i=1}^D \alpha_i

    Invertible for any conditioner. Cost: ``forward`` (sampling) is one pass, O(1) passes;
    ``inverse`` (density of an external x) runs D passes, O(D), one coordinate of z per
    pass as in ``MAF.forward``. With
    (mu~, alpha~) = (-mu exp(-alpha), -alpha) an IAF is exactly the inverse of a MAF (the
    lecture's tilde construction), which the tests check. With ``context_dim`` C > 0,
    theta_i = Theta_i(z_<i, c), as in ``MAF``: the density's D passes all see the same c.

    References
    ----------
    1. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling.
       Improving Variational Inference with Inverse Autoregressive Flow. NeurIPS, 2016.
    2. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
       Estimation. NeurIPS, 2017.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> iaf = IAF.init(rng(0), 3, hidden=(16,), order="reversed")
    >>> z = rng(1).standard_normal((4, 3))
    >>> x, log_det = iaf.forward(z)                 # 1 conditioner pass
    >>> z_back, _ = iaf.inverse(x)                  # 3 passes
    >>> bool(abs(z_back - z).max() < 1e-12)
    True
    """

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=getattr(self.made, "dim", None), finite=False)
        return _apply(self._h(self._conditioner(z, context)(z)), z, inverse=False)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=getattr(self.made, "dim", None), finite=False)
        return self._sequential(x, True, self._conditioner(x, context))


@dataclass(frozen=True, eq=False)
class SlowMAF:
    r"""MAF with D separate networks, x_i = h(z_i; Theta_i(x_<i)), Theta_i an MLP on x_1..x_{i-1}.

    Parameters
    ----------
    theta_first : array, shape (P,), or MLP
        theta_1, a constant: the first coordinate has nothing to condition on; for a
        conditional SlowMAF an MLP c (..., C) -> theta_1 (..., P), its input size being C.
    nets : tuple of MLP
        ``nets[i - 1]`` maps x[..., :i] (shape (..., i)) to theta of coordinate i, (..., P),
        for i = 1..D-1 (0-based); with a context, the concatenation (x[..., :i], c),
        shape (..., i + C).
    transformer, options : as in ``MAF``.

    Notes
    -----
    Lecture: "Autoregressive flows (Masked autoregressive flows)": "the most straightforward
    way to parameterize [the conditioners] is separately for each i, for example by using D
    separate neural networks", parameter-inefficient for large D, which is why ``MAF`` shares
    them in one ``MADE``. For teaching only; natural order. ``SlowMAF.from_made`` copies a
    MADE's masked weights into D networks, and the result equals ``MAF`` exactly.

    .. math::

        x_i = z_i \exp\alpha_i + \mu_i, \quad (\mu_i, \alpha_i) = \mathrm{MLP}_i(x_{1:i-1}),
        \qquad z_i = (x_i - \mu_i) \exp(-\alpha_i), \qquad
        \log|\det \mathbf{J}_f| = \sum_i \alpha_i

    Invertible for any networks. Cost: D network evaluations in both directions; sampling
    must run them one after the other, density evaluation could run them in parallel.

    References
    ----------
    1. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
       Estimation. NeurIPS, 2017.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> slow = SlowMAF.init(rng(0), 3, hidden=(8,))
    >>> len(slow.nets)                              # theta_1 is a constant
    2
    >>> x, log_det = slow.forward(rng(1).standard_normal((4, 3)))
    >>> x.shape, log_det.shape
    ((4, 3), (4,))
    """

    theta_first: Any
    nets: tuple
    transformer: Any = field(default=None, metadata={"static": True})
    options: dict = field(default_factory=dict, metadata={"static": True})

    def __post_init__(self):
        p = _params_per_dim(_transformer_class(self.transformer), self.options)
        if isinstance(self.theta_first, MLP):
            if self.theta_first.weights[-1].shape[1] != p:
                raise ValueError(f"theta_first: expected an MLP with {p} outputs, got "
                                 f"{self.theta_first.weights[-1].shape[1]}")
        else:
            check_array("theta_first", self.theta_first, ndim=1, last=p)
        c = self.context_dim
        for i, net in enumerate(self.nets):
            if not isinstance(net, MLP):
                raise ValueError(f"nets[{i}]: expected a refflow.nn.MLP, got {type(net).__name__}")
            n_in, n_out = net.weights[0].shape[0], net.weights[-1].shape[1]
            if (n_in, n_out) != (i + 1 + c, p):
                raise ValueError(
                    f"nets[{i}]: expected {i + 1 + c} inputs and {p} outputs, got {n_in} and "
                    f"{n_out}"
                )

    @property
    def dim(self) -> int:
        return len(self.nets) + 1

    @property
    def context_dim(self) -> int:
        """C, the size of the context: the inputs of ``theta_first`` when it is a network."""
        if isinstance(self.theta_first, MLP):
            return int(self.theta_first.weights[0].shape[0])
        return 0

    @classmethod
    def init(cls, rng: Any, dim: int, hidden: tuple = (64,), transformer: Any = None,
             activation: str = "tanh", dtype: Any = None, context_dim: int = 0,
             **options: Any) -> SlowMAF:
        """D - 1 independent MLPs with ``hidden`` layers and a zero theta_1; with
        ``context_dim`` C > 0, theta_1 is an MLP of c and network i reads (x_<i, c)."""
        dim = check_int("dim", dim)
        c = check_int("context_dim", context_dim, minimum=0)
        p = _params_per_dim(_transformer_class(transformer), options)
        nets = tuple(
            MLP.init(rng, (i + c,) + tuple(hidden) + (p,), activation, dtype=dtype)
            for i in range(1, dim)
        )
        first = (MLP.init(rng, (c,) + tuple(hidden) + (p,), activation, dtype=dtype) if c
                 else B.zeros((p,), dtype=dtype))
        return cls(first, nets, transformer, dict(options))

    @classmethod
    def from_made(cls, made: MADE, transformer: Any = None, **options: Any) -> SlowMAF:
        """The D networks that compute exactly what ``made`` computes (natural order only).

        Network i keeps the masked weights of ``made`` restricted to the inputs x_<i and to
        the outputs of coordinate i; the masks already cut every other path.
        """
        if tuple(made.order) != tuple(range(made.dim)):
            raise ValueError(f"made: expected the natural order, got {made.order}")
        if made.context_dim:
            # a MADE's context enters every layer, an MLP's input only
            raise ValueError(f"made: expected an unconditional MADE, got context_dim "
                             f"{made.context_dim}")
        p, net = made.outputs_per_dim, made.net
        masked = [w * m for w, m in zip(net.weights, net.masks)]
        nets = []
        for i in range(1, made.dim):
            weights = list(masked)
            weights[0] = weights[0][:i]  # (i, H): the inputs x_<i
            weights[-1] = weights[-1][:, i * p:(i + 1) * p]  # (H, P): coordinate i's block
            biases = tuple(net.biases[:-1]) + (net.biases[-1][i * p:(i + 1) * p],)
            nets.append(MLP(tuple(weights), biases, net.activation))
        # theta_1 does not depend on x: read it off at any input
        first = made(B.zeros((1, made.dim), dtype=masked[0].dtype))[0, 0]
        return cls(first, tuple(nets), transformer, dict(options))

    def _h(self, theta):
        return _transformer_class(self.transformer).from_unconstrained(theta, **self.options)

    def _context(self, y, context):
        """The context as one row per sample, (..., C), or an empty list when C = 0 (a context
        is then passed by)."""
        if not self.context_dim:
            return []
        context = check_context("SlowMAF", context, self.context_dim, y.shape[:-1])
        return [context + np.zeros_like(y[..., :1])]

    def _theta_first(self, y, c: list):
        if c:
            return self.theta_first(c[0])  # (..., P)
        return self.theta_first + np.zeros_like(y[..., :1])  # (..., P)

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=self.dim, finite=False)
        c = self._context(z, context)
        columns, log_det = [], 0.0
        for i in range(self.dim):
            # each network must wait for the coordinates before it: D sequential evaluations
            theta = (self._theta_first(z, c) if i == 0
                     else self.nets[i - 1](np.concatenate(columns + c, axis=-1)))
            x_i, log_det_i = _apply(self._h(theta[..., None, :]), z[..., i:i + 1], False)
            columns.append(x_i)
            log_det = log_det + log_det_i
        return np.concatenate(columns, axis=-1), log_det

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=self.dim, finite=False)
        c = self._context(x, context)
        thetas = [self._theta_first(x, c)] + [
            net(np.concatenate([x[..., :i]] + c, axis=-1) if c else x[..., :i])
            for i, net in enumerate(self.nets, start=1)
        ]
        return _apply(self._h(np.stack(thetas, axis=-2)), x, inverse=True)  # theta (..., D, P)
