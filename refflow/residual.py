r"""Residual flows f(z) = z + F(z): contractive blocks (iResNet), low-rank blocks, planar, radial.

Notes
-----
Lecture: "Residual flows" (contractions, Banach's fixed-point theorem, iResNet with spectral
normalization, the power series of the log-determinant) and "Residual flows (Residual blocks
with low-rank Jacobian)" (det(I_D + AB) = det(I_M + BA), planar flows).

.. math::

    x = f(z) = z + F(z), \qquad
    \log|\det J_f(z)| = \log|\det(I + J_F(z))|
                      = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_F^k)
    \quad (\operatorname{Lip}(F) < 1)

Errata of the slides, implemented here in their correct form: Banach's theorem needs a
Lipschitz constant L < 1 (the slide allows 0 <= L <= 1), and the fixed point z* of
g(z) = x - F(z) is z* = f^{-1}(x) (the slide's last line reads f^{-1}(z*)).

The bijections' ``forward`` computes the log-determinant deterministically ("exact", the
reference, or "series", the truncated power series with exact traces). The stochastic
estimators (Hutchinson, Russian roulette) need randomness, which a bijection must not hold:
they live in :func:`logdet_estimate`, which takes the generator explicitly.

References
----------
1. J. Behrmann, W. Grathwohl, R. T. Q. Chen, D. Duvenaud, J.-H. Jacobsen. Invertible
   Residual Networks. ICML, 2019.
2. R. T. Q. Chen, J. Behrmann, D. Duvenaud, J.-H. Jacobsen. Residual Flows for Invertible
   Generative Modeling. NeurIPS, 2019.
3. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
4. M. F. Hutchinson. A stochastic estimator of the trace of the influence matrix for
   Laplacian smoothing splines. Communications in Statistics - Simulation and Computation,
   1990.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np
from autograd import make_vjp

from refflow.backend import eye_like, to_numpy
from refflow.checks import check_array, check_context, check_int
from refflow.jacobian import jacobian
from refflow.linalg import logabsdet_lowrank, slogdet
from refflow.nn import (
    MLP,
    derivative,
    sigmoid,  # noqa: F401  (residual.sigmoid, used before LipSwish moved to nn)
    softplus,
    softplus_inverse,
)
from refflow.nn import activation as nn_activation
from refflow.ops import maximum, where
from refflow.solvers import invert_increasing, invert_residual

__all__ = ["Amortised", "ContractiveResidual", "LowRankResidual", "Planar", "Radial",
           "logdet_estimate"]

_SQUARINGS = 6  # the certified norm bound overestimates sigma_1 by at most r^(1/256)

# activations of refflow.nn whose slope lies in [-1, 1] (1-Lipschitz; lipswish is not
# monotone): a layer then keeps the Lipschitz constant of its (normalised) weights
LIPSCHITZ_ACTIVATIONS = ("tanh", "elu", "lipswish")
# name -> (activation, derivative), a view of refflow.nn's tables kept for one release
# (code that read residual.ACTIVATIONS); use refflow.nn.activation / derivative
ACTIVATIONS = {name: (nn_activation(name), derivative(name)) for name in LIPSCHITZ_ACTIVATIONS}


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")


def _check_coeff(coeff: Any) -> None:
    if not (isinstance(coeff, (int, float)) and 0 < coeff < 1):
        raise ValueError(f"coeff: expected a number in (0, 1) (Banach needs L < 1), got {coeff!r}")


def _spectral_bound(W):
    r"""A certified upper bound on the spectral norm: sigma_1(W) <= ||(W^T W)^k||_F^(1/(2k)).

    With k = 2^s (s repeated squarings, each renormalised by its Frobenius norm t_j, so
    nothing overflows), log bound = sum_{j=0}^{s} log(t_j) / 2^(j+1). Since
    ||A^k||_F^2 = sum_i sigma_i^(4k), the bound lies in [sigma_1, r^(1/(4k)) sigma_1], r the
    rank: at most 1.6 % above sigma_1 for r = 64. Unlike power iteration (a lower bound),
    it can only make a layer more contractive, never less. A zero matrix gets the bound 0
    (a zero last layer, the identity start), with a zero gradient. Cost O(min(m, n)^3 s).
    """
    m, n = W.shape
    Wt = np.transpose(W)
    G = np.matmul(W, Wt) if m <= n else np.matmul(Wt, W)  # (r, r), r = min(m, n)
    nonzero = np.sum(G * G) > 0
    log_bound = 0.0
    for j in range(_SQUARINGS + 1):
        # t^2 = 1 in place of 0: no 0 / 0 or log 0 (not even in the unused branch's gradient);
        # G is symmetric positive semi-definite, so its squares are nonzero unless W = 0
        sq = np.sum(G * G)
        sq = sq + (sq == 0)
        log_bound = log_bound + np.log(sq) / 2 ** (j + 2)
        if j < _SQUARINGS:
            G = G / np.sqrt(sq)
            G = np.matmul(G, G)
    return np.exp(log_bound) * nonzero


def _normalise(W, coeff: float):
    """W / max(1, bound(W) / c): spectral norm <= c, and W unchanged when already below c."""
    return np.divide(W, maximum(1.0, _spectral_bound(W) / coeff))


def _rows(z, dim: int):
    return np.reshape(z, (-1, dim))  # (N, D) with all leading axes flattened


def _context_rows(context):
    # a per-row context follows z into _rows; a shared (C,) context broadcasts as it is
    return context if context is None or context.ndim == 1 else _rows(context, context.shape[-1])


def _check_context(owner: Any, context: Any, batch_shape: tuple) -> Any:
    """The context of a block after the protocol's checks; a block with C = 0 passes any
    context by, as every unconditional part does (None)."""
    dim = getattr(owner, "context_dim", 0)
    return (check_context(type(owner).__name__, context, dim, batch_shape, finite=True)
            if dim else None)


def _power_series(J, terms: int):
    """sum_{k=1}^{terms} (-1)^(k+1) tr(J^k) / k for a stack J of shape (N, D, D)."""
    eye = eye_like(J, J.shape[-1])
    P, total = J, 0.0
    for k in range(1, terms + 1):
        total = total + (-1) ** (k + 1) / k * np.sum(P * eye, axis=(-2, -1))
        if k < terms:
            P = np.matmul(P, J)
    return total


def _check_mlp(weights, biases, context_dim: int = 0) -> int:
    if not isinstance(weights, tuple) or not isinstance(biases, tuple):
        raise ValueError("weights, biases: expected tuples of arrays")
    if len(weights) != len(biases) or not weights:
        raise ValueError("weights: expected as many weight matrices as bias vectors (>= 1)")
    fan_in = weights[0].shape[0] if getattr(weights[0], "ndim", 0) == 2 else None
    dim = None if fan_in is None else fan_in - context_dim
    if dim is not None and dim < 1:
        raise ValueError(f"weights[0]: expected D + context_dim = D + {context_dim} rows "
                         f"(D >= 1), got shape {weights[0].shape}")
    for i, (w, b) in enumerate(zip(weights, biases)):
        check_array(f"weights[{i}]", w, ndim=2)
        if w.shape[0] != fan_in:
            raise ValueError(f"weights[{i}]: expected {fan_in} rows, got shape {w.shape}")
        check_array(f"biases[{i}]", b, ndim=1, last=w.shape[1])
        fan_in = w.shape[1]
    if fan_in != dim:
        raise ValueError(f"weights[-1]: expected {dim} columns (F maps R^D to R^D), got {fan_in}")
    return dim


@dataclass(frozen=True, eq=False)
class ContractiveResidual:
    r"""iResNet block x = z + F(z), F an MLP with spectrally normalised weights, Lip(F) < 1.

    Parameters
    ----------
    weights : tuple of (in, out) arrays, the raw weights; the first takes D inputs (D + C
        with a context: its last C rows are U, below) and the last gives D outputs. F uses
        W_l / max(1, s(W_l) / coeff), s a certified upper bound on the spectral norm (see
        Notes).
    biases : tuple of (out,) arrays.
    coeff : float in (0, 1), the bound c on each layer's spectral norm.
    activation : "tanh", "elu" or "lipswish" (|slope| <= 1: 1-Lipschitz).
    logdet : "exact" (slogdet of I + J_F, the reference) or "series" (power series).
    terms : int, the number of terms of the "series" log-det.
    tol, max_iter : the fixed-point inverse's error bound and iteration limit.
    context_dim : int, C; 0 (the default) for an unconditional block.

    Notes
    -----
    Lecture: Residual flows, "contraction", Banach's fixed-point theorem and iResNet.

    .. math::

        x = z + F(z), \qquad z = \lim_k z_k,\ z_{k+1} = x - F(z_k), \qquad
        \log|\det J_f| = \log\det(I + J_F) = \sum_{k\ge1} \tfrac{(-1)^{k+1}}{k}
        \operatorname{tr}(J_F^k)

    Invertibility: F is a composition of linear maps of spectral norm <= c and activations
    of slope <= 1, so Lip(F) <= L = c^layers < 1, and g(z) = x - F(z) is a contraction with
    the same L. Banach (with L < 1, not L <= 1 as on the slide) gives a unique fixed point
    z* = f^{-1}(x). The norm bound is *certified*: s(W) = ||(W^T W)^64||_F^(1/128) >=
    sigma_1(W) holds exactly (up to rounding) whatever the weights, whereas power iteration
    (Miyato et al. 2018, used by iResNet) approaches sigma_1 from below and can leave a layer
    slightly above c. The price is s(W) <= r^(1/256) sigma_1(W): layers at most ~1.6 % more
    contractive than c. The inverse stops on the a-posteriori Banach bound
    L / (1 - L) ||z_k - z_{k-1}|| <= tol and raises ``ConvergenceError`` at ``max_iter``.

    Conditional block, x = z + F(z, c): the context enters the first layer only, as the
    additive, z-independent bias c U (U the last C rows of ``weights[0]``, not normalised):
    h_1 = act(z W_1' + c U + b_1). For each fixed c, F(., c) is the unconditional network with
    its first bias moved to b_1 + c U; a bias changes no Jacobian in z, so Lip_z F(., c) <= L
    for *every* c, however large c or U. The fixed-point inverse, the exact log-det and the
    power series then work per c unchanged; nothing bounds F in c (it need not be).

    Cost per sample: "exact" D reverse passes for J_F plus O(D^3) for slogdet; "series" the
    same Jacobian plus ``terms`` (D x D) products, O(terms D^3); the inverse about
    log(tol (1 - L)) / log(L) evaluations of F. For stochastic estimates that never form J_F
    see :func:`logdet_estimate`.

    References
    ----------
    1. J. Behrmann, W. Grathwohl, R. T. Q. Chen, D. Duvenaud, J.-H. Jacobsen. Invertible
       Residual Networks. ICML, 2019.
    2. T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida. Spectral Normalization for Generative
       Adversarial Networks. ICLR, 2018.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = ContractiveResidual.init(rng(0), 3, hidden=(8,))
    >>> z = rng(1).standard_normal((4, 3))
    >>> x, log_det = f.forward(z)
    >>> bool(np.allclose(f.inverse(x)[0], z)), log_det.shape
    (True, (4,))
    """

    weights: tuple
    biases: tuple
    coeff: float = 0.9
    activation: str = "tanh"
    logdet: str = "exact"
    terms: int = 20
    tol: float | None = None
    max_iter: int = 10_000
    context_dim: int = field(default=0, metadata={"static": True})

    def __post_init__(self):
        check_int("context_dim", self.context_dim, minimum=0)
        _check_mlp(self.weights, self.biases, self.context_dim)
        _check_coeff(self.coeff)
        _check_choice("activation", self.activation, LIPSCHITZ_ACTIVATIONS)
        _check_choice("logdet", self.logdet, ("exact", "series"))
        check_int("terms", self.terms)
        check_int("max_iter", self.max_iter)

    @classmethod
    def init(cls, rng, dim: int, hidden: tuple = (32,), coeff: float = 0.9,
             activation: str = "tanh", logdet: str = "exact", terms: int = 20,
             dtype: Any = None, context_dim: int = 0) -> ContractiveResidual:
        """Weights N(0, 1/fan_in), biases N(0, 0.1^2); most layers then sit at norm c.

        With ``context_dim`` = C the first weight has D + C rows (z's and the context's).
        """
        check_int("context_dim", context_dim, minimum=0)
        sizes = [check_int("dim", dim)] + [check_int("hidden", h) for h in hidden] + [dim]
        sizes[0] = dim + context_dim
        weights = tuple(rng.standard_normal((a, b), dtype=dtype) / math.sqrt(a)
                        for a, b in zip(sizes[:-1], sizes[1:]))
        biases = tuple(0.1 * rng.standard_normal((b,), dtype=dtype) for b in sizes[1:])
        return cls(weights, biases, coeff, activation, logdet, terms, context_dim=context_dim)

    @property
    def dim(self) -> int:
        return self.weights[0].shape[0] - self.context_dim

    @property
    def lipschitz(self) -> float:
        """The guaranteed bound L = c^layers on Lip(F) (in z, at every context)."""
        return float(self.coeff) ** len(self.weights)

    def effective_weights(self) -> tuple:
        """The normalised z-path weights F uses, each of spectral norm <= coeff."""
        first = self.weights[0][: self.dim] if self.context_dim else self.weights[0]
        return tuple(_normalise(w, self.coeff) for w in (first,) + self.weights[1:])

    def context_biases(self, context) -> tuple:
        """The biases of F(., c): the first moved by c U, shape batch + (H_1,); as given
        for an unconditional block."""
        if not self.context_dim:
            return self.biases
        shift = np.matmul(context, self.weights[0][self.dim:])  # (..., H_1)
        return (np.add(self.biases[0], shift),) + self.biases[1:]

    def network(self, weights: tuple | None = None, biases: tuple | None = None) -> MLP:
        """F as a ``refflow.nn.MLP`` with the normalised weights (or the given ones)."""
        weights = self.effective_weights() if weights is None else weights
        return MLP(weights, self.biases if biases is None else biases, self.activation)

    def residual(self, z, context=None):
        """F(z, c), shape of z; ``context`` as checked by ``forward``."""
        return self.network(biases=self.context_biases(context))(z)

    def _log_det(self, z, context=None):
        c = _context_rows(context)
        J = jacobian(lambda rows: self.residual(rows, c), _rows(z, self.dim))  # (N, D, D)
        if self.logdet == "series":
            out = _power_series(J, self.terms)
        else:
            out = slogdet(J + eye_like(J, self.dim))[1]
        return np.reshape(out, z.shape[:-1])

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=self.dim, finite=False)
        context = _check_context(self, context, z.shape[:-1])
        return np.add(self.residual(z, context), z), self._log_det(z, context)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=self.dim, finite=False)
        context = _check_context(self, context, x.shape[:-1])
        n = len(self.weights)

        def F(z, *params):
            return self.network(params[:n], params[n:])(z)

        # the context reaches F through the first bias, an explicit parameter of the solve,
        # so the implicit-function gradient covers it (a closed-over context would get none)
        z = invert_residual(F, x, *self.effective_weights(), *self.context_biases(context),
                            lipschitz=self.lipschitz, tol=self.tol, max_iter=self.max_iter)
        return z, -self._log_det(z, context)


@dataclass(frozen=True, eq=False)
class LowRankResidual:
    r"""Bottleneck residual block x = z + sigma(z W + b) V + shift, F = F2 o F1 through R^M.

    Parameters
    ----------
    W : (D, M) array, F1(z) = sigma(z W + b) maps R^D to R^M.
    b : (M,) array.
    V : (M, D) array, F2(h) = h V + shift maps R^M to R^D.
    shift : (D,) array.
    coeff : float in (0, 1): W and V are normalised to spectral norm <= coeff.
    activation : "tanh", "elu" or "lipswish".
    tol, max_iter : the fixed-point inverse's error bound and iteration limit.

    Notes
    -----
    Lecture: Residual flows (Residual blocks with low-rank Jacobian). J_F = J_F2 J_F1 with
    J_F2 = V^T (D x M) and J_F1 = diag(sigma'(a)) W^T (M x D), a = z W + b, so

    .. math::

        \det J_f = \det(I_D + J_{F_2} J_{F_1}) = \det(I_M + J_{F_1} J_{F_2})
                 = \det(I_M + \operatorname{diag}(\sigma'(a)) W^T V^T)

    Invertibility: W and V are spectrally normalised as in :class:`ContractiveResidual`
    (certified bound), so Lip(F) <= L = coeff^2 < 1; the inverse is the Banach fixed point
    z* = f^{-1}(x) of z = x - F(z), stopped on the a-posteriori bound. det(I + J_F) > 0
    since every eigenvalue of J_F has modulus < 1. With M = 1, shift = 0 and |w|, |v| <=
    coeff this is exactly :class:`Planar` with tanh. Cost per sample: O(D M) for F, O(D M^2)
    to form I_M + J_F1 J_F2 and O(M^3) for its log-det, instead of O(D^3).

    References
    ----------
    1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
    2. R. van den Berg, L. Hasenclever, J. M. Tomczak, M. Welling. Sylvester Normalizing
       Flows for Variational Inference. UAI, 2018.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = LowRankResidual.init(rng(0), 5, rank=2)
    >>> z = rng(1).standard_normal((3, 5))
    >>> x, log_det = f.forward(z)
    >>> bool(np.allclose(f.inverse(x)[0], z)), log_det.shape
    (True, (3,))
    """

    W: Any
    b: Any
    V: Any
    shift: Any
    coeff: float = 0.9
    activation: str = "tanh"
    tol: float | None = None
    max_iter: int = 10_000

    def __post_init__(self):
        check_array("W", self.W, ndim=2)
        dim, rank = self.W.shape
        check_array("b", self.b, ndim=1, last=rank)
        check_array("V", self.V, ndim=2, last=dim)
        if self.V.shape[0] != rank:
            raise ValueError(f"V: expected shape ({rank}, {dim}), got {self.V.shape}")
        check_array("shift", self.shift, ndim=1, last=dim)
        _check_coeff(self.coeff)
        _check_choice("activation", self.activation, LIPSCHITZ_ACTIVATIONS)
        check_int("max_iter", self.max_iter)

    @classmethod
    def init(cls, rng, dim: int, rank: int = 1, coeff: float = 0.9, activation: str = "tanh",
             dtype: Any = None) -> LowRankResidual:
        """W, V with N(0, 1/fan_in) entries, b N(0, 0.1^2), shift 0."""
        dim, rank = check_int("dim", dim), check_int("rank", rank)
        W = rng.standard_normal((dim, rank), dtype=dtype) / math.sqrt(dim)
        V = rng.standard_normal((rank, dim), dtype=dtype) / math.sqrt(rank)
        b = 0.1 * rng.standard_normal((rank,), dtype=dtype)
        return cls(W, b, V, np.zeros_like(W, shape=(dim,)), coeff, activation)

    @property
    def dim(self) -> int:
        return self.W.shape[0]

    @property
    def lipschitz(self) -> float:
        """The guaranteed bound L = coeff^2 on Lip(F)."""
        return float(self.coeff) ** 2

    def _F(self, z, W, b, V, shift):
        # F = F2 o F1: an MLP D -> M -> D
        return MLP((W, V), (b, shift), self.activation)(z)

    def residual(self, z, context=None):
        """F(z), shape of z; ``context`` is passed by (no conditioner)."""
        return self._F(z, _normalise(self.W, self.coeff), self.b,
                       _normalise(self.V, self.coeff), self.shift)

    def _log_det(self, z):
        W, V = _normalise(self.W, self.coeff), _normalise(self.V, self.coeff)
        a = np.add(np.matmul(z, W), self.b)  # (..., M)
        J1 = derivative(self.activation)(a)[..., :, None] * np.transpose(W)  # (..., M, D)
        return logabsdet_lowrank(np.transpose(V), J1)

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=self.dim, finite=False)
        return np.add(self.residual(z), z), self._log_det(z)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=self.dim, finite=False)
        z = invert_residual(self._F, x, _normalise(self.W, self.coeff), self.b,
                            _normalise(self.V, self.coeff), self.shift,
                            lipschitz=self.lipschitz, tol=self.tol, max_iter=self.max_iter)
        return z, -self._log_det(z)


def _u_hat(w, u):
    r"""Rezende & Mohamed's reparameterisation: u + (m(w.u) - w.u) w / |w|^2, m = -1 + softplus.

    Then w . u_hat = m(w . u) > -1. The division is by the *squared* norm |w|^2: dividing by
    |w| (a bug in several libraries) gives w . u_hat = w.u + (m - w.u) |w|, which can be < -1.
    In floating point u + k w cancels along w when |w . u| is large, leaving w . u_hat off
    by about eps |w . u| (-1.00000002 after training at a large learning rate); one more
    projection along w, zero in exact arithmetic, brings it to the rounding of one dot product.
    """
    # per row (axis -1): w and u of shape (..., D) give one u_hat per row (amortised flows)
    def dot(a, b):
        return np.sum(np.multiply(a, b), axis=-1, keepdims=True)

    ww, m = np.sum(w * w, axis=-1, keepdims=True), -1.0 + softplus(dot(w, u))
    v = np.add(u, (m - dot(w, u)) / ww * w)
    return np.add(v, (m - dot(w, v)) / ww * w)


@dataclass(frozen=True, eq=False)
class Planar:
    r"""Planar flow x = z + v tanh(w . z + b), invertible when w . v > -1.

    Parameters
    ----------
    w : (D,) array, nonzero.
    v : (D,) array with w . v > -1 (the lecture's u or v).
    b : (1,) array.

    Notes
    -----
    Lecture: Residual flows (Residual blocks with low-rank Jacobian), planar flow: an MLP
    with one hidden layer of one unit, M = 1.

    .. math::

        x = z + v \tanh(w^T z + b), \qquad
        \det J_f = 1 + w^T v \tanh'(w^T z + b), \qquad
        a = w^T z + b \text{ solves } a + (w^T v) \tanh(a) = w^T x + b,\
        z = x - v \tanh(a)

    Invertibility: along w the map is a -> a + (w^T v) tanh(a), strictly increasing iff
    w^T v > -1 (tanh' <= 1); orthogonally to w it is the identity. Training cannot leave
    this set: the unconstrained parameters are (w, u, b) and v = u_hat(w, u) =
    u + (m(w^T u) - w^T u) w / |w|^2, m(s) = -1 + softplus(s) (Rezende & Mohamed 2015,
    appendix A; note the *squared* norm). In floating point softplus(w^T u) underflows
    below eps for w^T u < -36 and w^T v rounds to -1: a - tanh(a) is still increasing (a
    bijection), with log-det -inf only at a = 0. The inverse solves the scalar equation for a by
    bisection (``invert_increasing``, gradients by the implicit function theorem).
    Cost: O(D) forward and log-det; the inverse O(D) plus ~60 scalar bisection steps.

    References
    ----------
    1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.

    Examples
    --------
    >>> import numpy
    >>> f = Planar(numpy.array([1.0, 0.0]), numpy.array([-0.5, 2.0]), numpy.array([0.1]))
    >>> z = numpy.array([[0.3, -1.0]])
    >>> x, log_det = f.forward(z)
    >>> bool(numpy.allclose(f.inverse(x)[0], z)), bool(numpy.allclose(f.inverse(x)[1], -log_det))
    (True, True)
    """

    w: Any
    v: Any
    b: Any

    def __post_init__(self):
        check_array("w", self.w, ndim=1)
        dim = self.w.shape[0]
        check_array("v", self.v, ndim=1, last=dim)
        check_array("b", self.b, ndim=1, last=1)
        if not float(to_numpy(np.sum(self.w * self.w))) > 0:
            raise ValueError("w: expected a nonzero vector")
        # w . v = -1 within the rounding of the dot product is what u_hat gives when
        # softplus underflows (see Notes): accepted, so every trained flow saves and loads
        wv = to_numpy(self.w * self.v)
        slack = 4 * (wv.size + 2) * np.finfo(wv.dtype).eps * float(np.sum(np.abs(wv)))
        if not float(np.sum(wv)) >= -1 - slack:
            raise ValueError("v: expected w . v > -1 (planar flow invertibility)")

    @classmethod
    def init(cls, rng, dim: int, dtype: Any = None, context_dim: int = 0,
             hidden: tuple = (32,)) -> Planar | Amortised:
        """w, u ~ N(0, I / D), b ~ N(0, 1), v = u_hat(w, u).

        With ``context_dim`` = C > 0: an :class:`Amortised` planar flow, (w, u, b) = H(c)
        from an MLP with ``hidden`` layers, started near such a random planar flow.
        """
        if check_int("context_dim", context_dim, minimum=0):
            return Amortised.init(rng, dim, cls, context_dim, hidden, dtype)
        dim = check_int("dim", dim)
        w = rng.standard_normal((dim,), dtype=dtype) / math.sqrt(dim)
        u = rng.standard_normal((dim,), dtype=dtype) / math.sqrt(dim)
        return cls(w, _u_hat(w, u), rng.standard_normal((1,), dtype=dtype))

    def to_unconstrained(self):
        """theta = (w, u, b) with u_hat(w, u) = v: u = v + (m^{-1}(w.v) - w.v) w / |w|^2."""
        wv = np.sum(self.w * self.v)
        u = self.v + (softplus_inverse(wv + 1.0) - wv) / np.sum(self.w * self.w) * self.w
        return np.concatenate([self.w, u, self.b])

    @staticmethod
    def num_params(dim: int) -> int:
        """P = 2D + 1, the length of theta = (w, u, b)."""
        return 2 * dim + 1

    @classmethod
    def from_unconstrained(cls, theta) -> Planar:
        """The planar flow with v = u_hat(w, u) for theta = (w, u, b) of shape (2D + 1,).

        A batch theta of shape (..., 2D + 1) gives one planar map per row (:class:`Amortised`).
        """
        dim = (theta.shape[-1] - 1) // 2
        w, u, b = theta[..., :dim], theta[..., dim:2 * dim], theta[..., 2 * dim:]
        new = object.__new__(cls)  # no validation: theta may be traced, v is valid by design
        for name, value in (("w", w), ("v", _u_hat(w, u)), ("b", b)):
            object.__setattr__(new, name, value)
        return new

    def _wv(self):
        return np.sum(np.multiply(self.w, self.v), axis=-1)

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=self.w.shape[-1], finite=False)
        a = np.add(np.sum(np.multiply(z, self.w), axis=-1), self.b[..., 0])  # (...,)
        t = np.tanh(a)
        x = np.add(z, t[..., None] * self.v)
        return x, np.log1p(np.multiply(self._wv(), 1 - t * t))

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=self.w.shape[-1], finite=False)
        wv = self._wv()
        target = np.add(np.sum(np.multiply(x, self.w), axis=-1), self.b[..., 0])  # (...,) = h(a)
        radius = np.abs(wv) + 1.0  # |h(a) - a| <= |w . v|, so a lies within this of target

        def h(a):
            return np.add(wv * np.tanh(a), a)

        a = invert_increasing(h, target, target - radius, target + radius,
                              dh=lambda a: wv * (1 - np.tanh(a) ** 2) + 1.0)
        t = np.tanh(a)
        return np.subtract(x, t[..., None] * self.v), -np.log1p(np.multiply(wv, 1 - t * t))


@dataclass(frozen=True, eq=False)
class Radial:
    r"""Radial flow x = z + beta h(alpha, r) (z - z0), h = 1 / (alpha + r), r = |z - z0|.

    Parameters
    ----------
    z0 : (D,) array, the centre.
    alpha : (1,) array, alpha > 0.
    beta : (1,) array, beta > -alpha.

    Notes
    -----
    Not in the lecture; Rezende & Mohamed (2015), section 4.1, the companion of the planar
    flow: contractions and expansions around a reference point.

    .. math::

        x = z + \frac{\beta}{\alpha + r}(z - z_0), \qquad
        \log|\det J_f| = (D - 1) \log\Big(1 + \frac{\beta}{\alpha + r}\Big)
                       + \log\Big(1 + \frac{\beta \alpha}{(\alpha + r)^2}\Big)

    Inverse: |x - z0| = g(r) = r + beta r / (alpha + r), then z = z0 + (x - z0) / (1 + beta /
    (alpha + r)). Invertibility: g'(r) = 1 + alpha beta / (alpha + r)^2 > 0 for all r >= 0
    iff beta > -alpha (the paper's condition beta >= -alpha, made strict so the log-det is
    finite). Training keeps it: the unconstrained parameters are (z0, log alpha,
    softplus^{-1}(alpha + beta)). The radius is found by bisection (``invert_increasing``).
    At z = z0, r = |z - z0| has no derivative; its gradient is taken as 0 there, so x = z0,
    J_f = (1 + beta / alpha) I and every gradient is finite.
    Cost: O(D); the inverse adds ~60 scalar bisection steps.

    References
    ----------
    1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.

    Examples
    --------
    >>> import numpy
    >>> f = Radial(numpy.zeros(2), numpy.array([1.0]), numpy.array([-0.5]))
    >>> z = numpy.array([[1.0, 2.0]])
    >>> x, log_det = f.forward(z)
    >>> bool(numpy.allclose(f.inverse(x)[0], z))
    True
    """

    z0: Any
    alpha: Any
    beta: Any

    def __post_init__(self):
        check_array("z0", self.z0, ndim=1)
        check_array("alpha", self.alpha, ndim=1, last=1)
        check_array("beta", self.beta, ndim=1, last=1)
        if not float(to_numpy(self.alpha)[0]) > 0:
            raise ValueError("alpha: expected alpha > 0")
        if not float(to_numpy(self.beta + self.alpha)[0]) > 0:
            raise ValueError("beta: expected beta > -alpha (radial flow invertibility)")

    @classmethod
    def init(cls, rng, dim: int, dtype: Any = None, context_dim: int = 0,
             hidden: tuple = (32,)) -> Radial | Amortised:
        """z0 ~ N(0, I), log alpha ~ N(0, 0.5^2), beta = -alpha + softplus(N(0, 1)).

        With ``context_dim`` = C > 0: an :class:`Amortised` radial flow,
        (z0, log alpha, softplus^{-1}(alpha + beta)) = H(c), started near such a radial flow.
        """
        if check_int("context_dim", context_dim, minimum=0):
            return Amortised.init(rng, dim, cls, context_dim, hidden, dtype)
        z0 = rng.standard_normal((check_int("dim", dim),), dtype=dtype)
        alpha = np.exp(0.5 * rng.standard_normal((1,), dtype=dtype))
        return cls(z0, alpha, softplus(rng.standard_normal((1,), dtype=dtype)) - alpha)

    def to_unconstrained(self):
        """theta = (z0, log alpha, softplus^{-1}(alpha + beta))."""
        return np.concatenate([self.z0, np.log(self.alpha),
                               softplus_inverse(self.alpha + self.beta)])

    @staticmethod
    def num_params(dim: int) -> int:
        """P = D + 2, the length of theta = (z0, log alpha, softplus^{-1}(alpha + beta))."""
        return dim + 2

    @classmethod
    def from_unconstrained(cls, theta) -> Radial:
        """The radial flow for theta = (z0, log alpha, softplus^{-1}(alpha + beta)), (D + 2,).

        A batch theta of shape (..., D + 2) gives one radial map per row (:class:`Amortised`).
        """
        dim = theta.shape[-1] - 2
        alpha = np.exp(theta[..., dim:dim + 1])
        new = object.__new__(cls)  # no validation: theta may be traced, the map is valid
        for name, value in (("z0", theta[..., :dim]), ("alpha", alpha),
                            ("beta", softplus(theta[..., dim + 1:]) - alpha)):
            object.__setattr__(new, name, value)
        return new

    @staticmethod
    def _norm(d):
        # |d| with a zero gradient at d = 0 rather than 0 * inf = NaN (sqrt' is infinite at 0;
        # the inner where keeps the sqrt of the unused branch away from 0 as well)
        sq = np.sum(d * d, axis=-1)
        positive = sq > 0
        return where(positive, np.sqrt(where(positive, sq, 1.0)), 0.0)

    def _scalars(self):
        # alpha, beta of shape (..., 1) -> (...,): one per row for an amortised flow
        return self.alpha[..., 0], self.beta[..., 0]

    def _log_det(self, r):
        alpha, beta = self._scalars()
        h = 1.0 / np.add(r, alpha)
        bh = np.multiply(beta, h)
        return (self.z0.shape[-1] - 1) * np.log1p(bh) + np.log1p(np.multiply(bh, h) * alpha)

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, last=self.z0.shape[-1], finite=False)
        alpha, beta = self._scalars()
        d = np.subtract(z, self.z0)
        r = self._norm(d)  # (...,)
        x = np.add(z, np.divide(beta, np.add(r, alpha))[..., None] * d)
        return x, self._log_det(r)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, last=self.z0.shape[-1], finite=False)
        d = np.subtract(x, self.z0)
        rho = self._norm(d)  # (...,) = g(r)
        alpha, beta = self._scalars()

        def g(r):
            return np.add(np.divide(np.multiply(beta, r), np.add(r, alpha)), r)

        # g(0) = 0 <= rho, and g(r) >= r - |beta| puts the root below rho + |beta|
        r = invert_increasing(g, rho, 0.0, rho + np.abs(beta) + 1.0,
                              dh=lambda r: np.divide(alpha * beta, np.add(r, alpha) ** 2) + 1.0)
        z = np.add(self.z0, np.divide(d, (np.divide(beta, np.add(r, alpha)) + 1.0)[..., None]))
        return z, -self._log_det(r)


@dataclass(frozen=True, eq=False)
class Amortised:
    r"""Amortised flow x = f_{theta(c)}(z): a hypernetwork H gives the parameters theta = H(c).

    Parameters
    ----------
    family : :class:`Planar` or :class:`Radial`, whose ``from_unconstrained`` maps the
        unconstrained theta (one row per sample) to a valid map.
    hyper : ``refflow.nn.MLP`` from C inputs to ``family.num_params(D)`` outputs.
    context_dim : int, C, the number of inputs of ``hyper``.

    Notes
    -----
    Lecture: Residual flows (planar flows) and the application "a variational posterior
    q_theta(z | x) parameterized by a flow": the flow's parameters are computed from the
    observation, as in amortised planar flows (van den Berg et al. 2018, section 4).

    .. math::

        \theta(c) = H(c), \qquad x = f_{\theta(c)}(z), \qquad
        \log|\det J_f(z; c)| = \log|\det \partial_z f_{\theta(c)}(z)|

    H's output is unconstrained, and the family's invertibility constraint is applied per
    sample *after* the hypernetwork, by its own reparameterisation: planar v = u_hat(w, u),
    so w . v > -1 for every c; radial beta = -alpha + softplus(.), so beta > -alpha. Hence
    f(., c) is a bijection in z for every context, and its forward, inverse and log-det are
    the family's, evaluated at theta(c). The context enters only through theta, so its
    gradient is the chain rule through H (through the bisection's implicit-function step in
    the inverse). Cost: one pass of H on c plus the family's O(D) per sample.

    References
    ----------
    1. R. van den Berg, L. Hasenclever, J. M. Tomczak, M. Welling. Sylvester Normalizing
       Flows for Variational Inference. UAI, 2018.
    2. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
    3. D. Ha, A. Dai, Q. V. Le. HyperNetworks. ICLR, 2017.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = Planar.init(rng(0), 3, context_dim=2, hidden=(8,))
    >>> z, c = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    >>> x, log_det = f.forward(z, context=c)
    >>> bool(np.allclose(f.inverse(x, context=c)[0], z)), log_det.shape
    (True, (4,))
    """

    family: type = field(metadata={"static": True})
    hyper: MLP
    context_dim: int = field(metadata={"static": True})

    def __post_init__(self):
        if self.family not in (Planar, Radial):
            raise ValueError(f"family: expected Planar or Radial, got {self.family!r}")
        if not isinstance(self.hyper, MLP):
            raise ValueError(f"hyper: expected a refflow.nn.MLP, got {type(self.hyper).__name__}")
        check_int("context_dim", self.context_dim)
        rows, p = self.hyper.weights[0].shape[0], self.hyper.weights[-1].shape[-1]
        if rows != self.context_dim:
            raise ValueError(f"hyper: expected {self.context_dim} inputs (context_dim), "
                             f"got a first weight of shape {self.hyper.weights[0].shape}")
        # some event dimension D must have exactly p parameters (2D + 1 planar, D + 2 radial)
        if not any(self.family.num_params(d) == p for d in range(1, p + 1)):
            raise ValueError(f"hyper: {p} outputs are not a {self.family.__name__} parameter "
                             f"vector for any dimension D")

    @classmethod
    def init(cls, rng, dim: int, family: type, context_dim: int, hidden: tuple = (32,),
             dtype: Any = None) -> Amortised:
        """H starts at a random ``family.init`` flow (its last bias) plus 0.1 of a random
        c-dependent part (its last weight), so that every context starts at a valid,
        well-conditioned map."""
        start = family.init(rng, dim, dtype=dtype).to_unconstrained()  # (P,)
        sizes = [check_int("context_dim", context_dim)] + list(hidden) + [start.shape[0]]
        net = MLP.init(rng, sizes, dtype=dtype)
        return cls(family, MLP(net.weights[:-1] + (0.1 * net.weights[-1],),
                               net.biases[:-1] + (start,), net.activation), context_dim)

    def at(self, context):
        """The family's map at ``context``, parameters of shape batch + (P,) (one per row)."""
        return self.family.from_unconstrained(self.hyper(context))

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, finite=False)
        return self.at(_check_context(self, context, z.shape[:-1])).forward(z)

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, finite=False)
        return self.at(_check_context(self, context, x.shape[:-1])).inverse(x)


def logdet_estimate(block: Any, z: Any, method: str = "hutchinson", terms: int = 10,
                    rng: Any = None, probes: int = 1, p: float = 0.5, context: Any = None):
    r"""Estimate log det(I + J_F(z)) of a contractive residual block, per row of z.

    Parameters
    ----------
    block : a :class:`ContractiveResidual` or :class:`LowRankResidual` (anything with
        ``residual(z)``, ``dim`` and ``lipschitz`` < 1).
    z : (..., D) array.
    method : "exact" (slogdet of the autograd Jacobian), "series" (``terms`` terms, exact
        traces), "hutchinson" (``terms`` terms, traces v^T J^k v with v ~ N(0, I), J never
        formed) or "roulette" (unbiased: ``terms`` terms always, then a geometric number).
    terms : int >= 1.
    rng : ``refflow.backend.rng(seed)``, required by "hutchinson" and "roulette".
    probes : int, the number of probe vectors averaged per row.
    p : float in (0, 1), the stopping probability of the roulette's geometric count.
    context : the context of a conditional block (as in its ``forward``); the estimate is
        of log det(I + J_F(z, c)) in z at that fixed c.

    Returns
    -------
    (...) array: the estimate, differentiable by autograd.

    Notes
    -----
    Lecture: Residual flows, "an efficient stochastic estimator of the log Jacobian
    determinant ... as a power series". With v ~ N(0, I), E[v^T A v] = tr(A), and v^T J^k is
    k vector-Jacobian products, so a term costs one reverse pass, O(cost of F):

    .. math::

        \log\det(I + J) = \sum_{k\ge1} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J^k)
        \approx \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k} v^T J^k v

    "hutchinson" is unbiased for the n-term truncated series, whose bias is at most
    D L^(n+1) / ((n + 1)(1 - L)) for Lip(F) <= L. "roulette" (Chen et al. 2019) draws
    N = terms + G, P(G >= j) = (1 - p)^j, and weights term k > terms by 1 / P(N >= k): an
    unbiased estimate of the full series, with finite variance when L^2 < 1 - p; its count
    of terms is random (the loop length needs one host sync). Randomness comes only from
    ``rng``: a bijection's ``forward`` stays deterministic ("exact" or "series").

    References
    ----------
    1. J. Behrmann et al. Invertible Residual Networks. ICML, 2019.
    2. R. T. Q. Chen, J. Behrmann, D. Duvenaud, J.-H. Jacobsen. Residual Flows for
       Invertible Generative Modeling. NeurIPS, 2019.
    3. M. F. Hutchinson. A stochastic estimator of the trace of the influence matrix for
       Laplacian smoothing splines. Comm. Statist. Simulation Comput., 1990.

    Examples
    --------
    >>> from refflow.backend import rng
    >>> f = ContractiveResidual.init(rng(0), 2, coeff=0.5)
    >>> z = rng(1).standard_normal((1, 2))
    >>> est = logdet_estimate(f, z, "series", terms=40)
    >>> bool(np.allclose(est, f.forward(z)[1]))
    True
    """
    _check_choice("method", method, ("exact", "series", "hutchinson", "roulette"))
    if not all(hasattr(block, a) for a in ("residual", "dim", "lipschitz")):
        raise ValueError("block: expected a contractive residual block (residual, dim, "
                         f"lipschitz), got {type(block).__name__}")
    terms, probes = check_int("terms", terms), check_int("probes", probes)
    check_array("z", z, min_ndim=1, last=block.dim, finite=False)
    c = _context_rows(_check_context(block, context, z.shape[:-1]))
    z2 = _rows(z, block.dim)

    def residual(rows):
        return block.residual(rows, c)

    if method in ("exact", "series"):
        J = jacobian(residual, z2)
        out = (_power_series(J, terms) if method == "series"
               else slogdet(J + eye_like(J, block.dim))[1])
        return np.reshape(out, z.shape[:-1])
    if rng is None:
        raise ValueError(f"rng: method {method!r} draws probes; pass refflow.backend.rng(seed)")
    if not 0 < p < 1:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    vjp, _ = make_vjp(residual)(z2)
    total = 0.0
    for _ in range(probes):
        v = rng.standard_normal(z2.shape, dtype=z2.dtype)
        if method == "roulette":
            u = rng.random((z2.shape[0],), dtype=z2.dtype)
            extra = np.floor(np.log1p(-u) / math.log1p(-p))  # (N,), P(extra >= j) = (1-p)^j
            count = terms + int(to_numpy(np.max(extra)))
        else:
            count = terms
        w = v
        for k in range(1, count + 1):
            w = vjp(w)  # v^T J^k
            term = (-1) ** (k + 1) / k * np.sum(w * v, axis=-1)
            if k > terms:
                term = term * (k - terms <= extra) / (1 - p) ** (k - terms)
            total = total + term
    return np.reshape(total / probes, z.shape[:-1])
