r"""Affine flows x = A z + b and their cheap special cases: diagonal, triangular, LU, permutations.

Notes
-----
Lecture: "Constructing flows", affine flows. x = f(z) = A z + b is a bijection if and only
if A is an invertible square matrix; its inverse is z = A^{-1}(x - b) and its Jacobian is A
everywhere, so log|det J_f| = log|det A| does not depend on z.

.. math::

    \mathbf{x} = \mathbf{A}\mathbf{z} + \mathbf{b}, \qquad
    \mathbf{z} = \mathbf{A}^{-1}(\mathbf{x} - \mathbf{b}), \qquad
    \log|\det \mathbf{J}_f| = \log|\det \mathbf{A}|

Costs, as the lecture lists them: a general A needs O(D^3) for det A and A^{-1}; a diagonal
A needs O(D); a triangular A has its determinant on the diagonal, O(D), and is inverted by
substitution in O(D^2). ``LUAffine`` stores A = P L U so that a general A costs what a
triangular one does. Pushed through an affine flow, a Gaussian stays Gaussian:
N(mu, Sigma) becomes N(A mu + b, A Sigma A^T), which is why affine flows alone are weak and
why they are composed with non-linear bijections.

Every class acts on the last axis; all leading axes are batch. In a batch the rows are
vectors, so x = A z + b reads ``z @ A.T + b``.

None of these maps has a conditioner: ``forward(z, context=None)`` and ``inverse(x,
context=None)`` accept a context and pass it by (ignore it), so that they sit unchanged
inside a conditional ``Compose`` (the flow, not each part, checks that a context is wanted).

References
----------
1. G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan.
   Normalizing Flows for Probabilistic Modeling and Inference. JMLR 22(57), 2021.
2. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
   NeurIPS, 2018.
3. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed. Johns Hopkins University
   Press, 2013.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.checks import check_array, check_int, check_positive
from refflow.linalg import slogdet, solve, solve_triangular
from refflow.ops import take

__all__ = ["Affine", "Diagonal", "LUAffine", "Permutation", "Reverse", "Triangular"]


def _diag(M):
    # the diagonal of a (D, D) matrix is every (D + 1)-th entry of its flattening: a strided
    # slice, whose gradient is a plain slice assignment (np.diagonal's VJP builds host arrays)
    return np.reshape(M, (-1,))[:: M.shape[-1] + 1]


def _batch_constant(z, value):
    # a per-sample log-det that does not depend on z, with z's batch shape and array type
    return np.zeros_like(z, shape=np.shape(z)[:-1]) + value


def _check_square(name: str, M: Any) -> int:
    check_array(name, M, ndim=2)
    if M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty square (D, D) matrix, got shape {M.shape}")
    return M.shape[0]


def _check_shift(name: str, b: Any, dim: int) -> None:
    check_array(name, b, ndim=1, last=dim)


def _check_event(name: str, z: Any, dim: int) -> None:
    check_array(name, z, min_ndim=1, last=dim, finite=False)


@dataclass(frozen=True, eq=False)
class Affine:
    r"""General affine bijection x = A z + b with an invertible (D, D) matrix A.

    Parameters
    ----------
    A : array, shape (D, D)
        Invertible matrix; a singular, non-square or non-finite A raises ``ValueError``.
    b : array, shape (D,)
        Shift.

    Notes
    -----
    Lecture: "Constructing flows", affine flows.

    .. math::

        \mathbf{x} = \mathbf{A}\mathbf{z} + \mathbf{b}, \qquad
        \mathbf{z} = \mathbf{A}^{-1}(\mathbf{x} - \mathbf{b}), \qquad
        \log|\det \mathbf{J}_f| = \log|\det \mathbf{A}|

    Invertible if and only if det A != 0. The log-det comes from the LU factorisation
    (``refflow.linalg.slogdet``) and the inverse from an LU solve (``refflow.linalg.solve``):
    O(D^3) per call, plus O(D^2) per sample. Training leaves A unconstrained; the log-det
    term of the likelihood tends to -inf as A approaches a singular matrix, which keeps
    gradient ascent away from it (``LUAffine`` is invertible by construction).

    References
    ----------
    1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
       JMLR 22(57), 2021, Section 3.1.

    Examples
    --------
    >>> import numpy
    >>> f = Affine(numpy.array([[2.0, 1.0], [0.0, 3.0]]), numpy.array([1.0, -1.0]))
    >>> x, log_det = f.forward(numpy.array([[1.0, 1.0]]))
    >>> x.tolist(), bool(numpy.isclose(log_det[0], numpy.log(6.0)))
    ([[4.0, 2.0]], True)
    >>> f.inverse(x)[0].tolist()
    [[1.0, 1.0]]
    """

    A: Any
    b: Any

    def __post_init__(self):
        dim = _check_square("A", self.A)
        _check_shift("b", self.b, dim)
        rank = int(np.linalg.matrix_rank(B.to_numpy(self.A)))
        if rank < dim:
            raise ValueError(f"A: expected an invertible matrix, got rank {rank} < {dim}")

    @classmethod
    def init(cls, rng, dim: int) -> Affine:
        """A random rotation-and-scaling A = Q diag(s), s in [0.74, 1.35], and a small b."""
        dim = check_int("dim", dim)
        Q, _ = B.xp().linalg.qr(rng.standard_normal((dim, dim)))
        s = np.exp(rng.uniform(-0.3, 0.3, dim))
        return cls(Q * s, 0.5 * rng.standard_normal(dim))

    def forward(self, z, context=None):
        _check_event("z", z, self.b.shape[-1])
        x = z @ self.A.T + self.b
        return x, _batch_constant(z, slogdet(self.A)[1])

    def inverse(self, x, context=None):
        _check_event("x", x, self.b.shape[-1])
        z = solve(self.A, x - self.b)
        return z, _batch_constant(x, -slogdet(self.A)[1])


@dataclass(frozen=True, eq=False)
class Diagonal:
    r"""Diagonal affine bijection x = scale * z + shift (element-wise), scale > 0.

    Parameters
    ----------
    scale : array, shape (D,)
        Strictly positive scales; zero, negative or non-finite values raise ``ValueError``.
    shift : array, shape (D,)

    Notes
    -----
    Lecture: "Constructing flows", affine flows with a diagonal A (and the element-wise
    affine scalar bijection h(z) = a z + b, invertible iff a != 0).

    .. math::

        x_i = s_i z_i + t_i, \qquad z_i = (x_i - t_i) / s_i, \qquad
        \log|\det \mathbf{J}_f| = \sum_{i=1}^D \log s_i

    The lecture needs only s_i != 0. Here ``scale`` is a positive-constrained parameter
    (trained as log s), so that no gradient step can cross the singular value s_i = 0; a
    sign flip is a fixed map and can be composed separately (an ``Affine`` with
    A = diag(+-1)). Cost: O(D) for the log-det and O(D) per sample both ways.

    References
    ----------
    1. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density Estimation Using Real NVP. ICLR, 2017.

    Examples
    --------
    >>> import numpy
    >>> f = Diagonal(numpy.array([0.75]), numpy.array([1.0]))
    >>> x, log_det = f.forward(numpy.array([[2.0]]))
    >>> x.tolist(), bool(numpy.isclose(log_det[0], numpy.log(0.75)))
    ([[2.5]], True)
    """

    scale: Any = field(metadata={"constraint": "positive"})
    shift: Any

    def __post_init__(self):
        check_array("scale", self.scale, ndim=1)
        check_positive("scale", self.scale)
        _check_shift("shift", self.shift, self.scale.shape[-1])

    @classmethod
    def init(cls, rng, dim: int) -> Diagonal:
        """scale = exp(u), u ~ Uniform(-0.5, 0.5); shift ~ N(0, 0.5^2)."""
        dim = check_int("dim", dim)
        return cls(np.exp(rng.uniform(-0.5, 0.5, dim)), 0.5 * rng.standard_normal(dim))

    def forward(self, z, context=None):
        _check_event("z", z, self.scale.shape[-1])
        x = self.scale * z + self.shift
        return x, _batch_constant(z, np.sum(np.log(self.scale)))

    def inverse(self, x, context=None):
        _check_event("x", x, self.scale.shape[-1])
        z = (x - self.shift) / self.scale
        return z, _batch_constant(x, -np.sum(np.log(self.scale)))


@dataclass(frozen=True, eq=False)
class Triangular:
    r"""Lower-triangular affine bijection x = T z + b, t_ij = 0 for j > i, every t_ii != 0.

    Parameters
    ----------
    T : array, shape (D, D)
        Lower-triangular with a nonzero diagonal (of either sign); an entry above the
        diagonal or a zero on it raises ``ValueError``.
    b : array, shape (D,)

    Notes
    -----
    Lecture: "Constructing flows", affine flows with a triangular A: "Jacobian determinant is
    product of its diagonal elements taking O(D)"; "Inverting flow requires solving
    triangular system A z = x - b using back-substitution in O(D^2) time".

    .. math::

        \mathbf{x} = \mathbf{T}\mathbf{z} + \mathbf{b}, \qquad
        z_i = \frac{1}{t_{ii}}\Big(x_i - b_i - \sum_{j<i} t_{ij} z_j\Big), \qquad
        \log|\det \mathbf{J}_f| = \sum_{i=1}^D \log|t_{ii}|

    Invertible if and only if every t_ii != 0. Cost: O(D) log-det, O(D^2) per sample for
    the product and for the (forward) substitution. ``T`` is stored with the "lower"
    constraint, so training keeps it triangular; like ``Affine`` its diagonal is free, and
    the log-det term keeps maximum likelihood away from t_ii = 0.

    References
    ----------
    1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
       JMLR 22(57), 2021, Section 3.1.
    2. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.1, 2013.

    Examples
    --------
    >>> import numpy
    >>> f = Triangular(numpy.array([[2.0, 0.0], [1.0, -0.5]]), numpy.array([0.0, 1.0]))
    >>> x, log_det = f.forward(numpy.array([[1.0, 2.0]]))
    >>> x.tolist(), bool(numpy.isclose(log_det[0], 0.0))
    ([[2.0, 1.0]], True)
    >>> f.inverse(x)[0].tolist()
    [[1.0, 2.0]]
    """

    T: Any = field(metadata={"constraint": "lower"})
    b: Any

    def __post_init__(self):
        dim = _check_square("T", self.T)
        _check_shift("b", self.b, dim)
        host = B.to_numpy(self.T)
        if np.any(np.triu(host, 1) != 0):
            raise ValueError("T: expected a lower-triangular matrix (zeros above the diagonal)")
        if np.any(np.diagonal(host) == 0):
            raise ValueError("T: expected a nonzero diagonal (T is singular otherwise)")

    @classmethod
    def init(cls, rng, dim: int) -> Triangular:
        """Diagonal +-exp(u), u ~ Uniform(-0.3, 0.3), random signs; small entries below it."""
        dim = check_int("dim", dim)
        xp = B.xp()
        signs = 2.0 * rng.integers(0, 2, dim) - 1.0
        diagonal = signs * np.exp(rng.uniform(-0.3, 0.3, dim))
        below = xp.tril(0.3 * rng.standard_normal((dim, dim)) / dim**0.5, -1)
        return cls(below + xp.diag(diagonal), 0.5 * rng.standard_normal(dim))

    def forward(self, z, context=None):
        _check_event("z", z, self.b.shape[-1])
        x = z @ self.T.T + self.b
        return x, _batch_constant(z, np.sum(np.log(np.abs(_diag(self.T)))))

    def inverse(self, x, context=None):
        _check_event("x", x, self.b.shape[-1])
        z = solve_triangular(self.T, x - self.b, lower=True)
        return z, _batch_constant(x, -np.sum(np.log(np.abs(_diag(self.T)))))


@dataclass(frozen=True, eq=False)
class LUAffine:
    r"""Affine bijection in LU form: x = P L (U + diag(d)) z + b, invertible by construction.

    Parameters
    ----------
    perm : integer array, shape (D,), static
        The fixed permutation P, as indices: (P v)_i = v_{perm[i]}.
    L : array, shape (D, D)
        Unit lower-triangular ("unit_lower" constraint: ones on the diagonal, zeros above).
    U : array, shape (D, D)
        Strictly upper-triangular ("strict_upper" constraint: zeros on and below the diagonal;
        the diagonal of the upper factor is ``d``).
    d : array, shape (D,)
        Positive diagonal of the upper factor ("positive" constraint, trained as log d).
    b : array, shape (D,)

    Notes
    -----
    Lecture: "Constructing flows", affine flows: A = P L U stored through its triangular
    factors, so that it costs what the lecture's triangular case costs. With a fixed P, unit L
    and positive d this covers exactly the A for which P^T A has positive leading principal
    minors (an LU factorisation without pivoting with positive pivots), so det A has the sign
    of det P; not every invertible matrix: A = -I for D = 2 is covered by neither
    permutation (P = I gives the minor -1, the swap the minor 0). A static sign vector s,
    A = P L (U + diag(s d)) as in Glow's LU 1x1 convolution, would cover every invertible
    matrix for a suitable P; refflow keeps the lecture's positive form here.

    .. math::

        \mathbf{x} = \mathbf{P}\mathbf{L}\mathbf{U}\mathbf{z} + \mathbf{b}, \qquad
        \mathbf{z} = \mathbf{U}^{-1}\mathbf{L}^{-1}\mathbf{P}^T(\mathbf{x} - \mathbf{b}), \qquad
        \log|\det \mathbf{J}_f| = \sum_{i=1}^D \log d_i

    with U's diagonal d > 0 and L's diagonal ones: det A = det P * prod_i d_i != 0 for every
    parameter value, so no gradient step can make A singular. Cost: O(D) log-det, O(D^2) per
    sample both ways (two triangular substitutions for the inverse).

    References
    ----------
    1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
       NeurIPS, 2018 (the LU-decomposed 1x1 convolution).
    2. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
       JMLR 22(57), 2021, Section 3.1.

    Examples
    --------
    >>> import numpy
    >>> f = LUAffine(numpy.array([1, 0]), numpy.array([[1.0, 0.0], [0.5, 1.0]]),
    ...              numpy.array([[0.0, 1.0], [0.0, 0.0]]), numpy.array([2.0, 4.0]),
    ...              numpy.zeros(2))
    >>> x, log_det = f.forward(numpy.array([[1.0, 1.0]]))
    >>> x.tolist(), bool(numpy.isclose(log_det[0], numpy.log(8.0)))
    ([[5.5, 3.0]], True)
    >>> f.inverse(x)[0].tolist()
    [[1.0, 1.0]]
    """

    perm: Any = field(metadata={"static": True})
    L: Any = field(metadata={"constraint": "unit_lower"})
    U: Any = field(metadata={"constraint": "strict_upper"})
    d: Any = field(metadata={"constraint": "positive"})
    b: Any

    def __post_init__(self):
        _check_permutation("perm", self.perm)
        dim = self.perm.shape[0]
        for name in ("L", "U"):
            if _check_square(name, getattr(self, name)) != dim:
                raise ValueError(f"{name}: expected shape ({dim}, {dim}) to match perm")
        check_array("d", self.d, ndim=1, last=dim)
        check_positive("d", self.d)
        _check_shift("b", self.b, dim)
        L, U = B.to_numpy(self.L), B.to_numpy(self.U)
        if np.any(np.triu(L, 1) != 0) or np.any(np.diagonal(L) != 1):
            raise ValueError("L: expected a unit lower-triangular matrix (ones on the diagonal)")
        if np.any(np.tril(U) != 0):
            raise ValueError(
                "U: expected a strictly upper-triangular matrix (its diagonal is d)"
            )

    @classmethod
    def init(cls, rng, dim: int) -> LUAffine:
        """A random permutation, small triangular parts, d = exp(u), u ~ Uniform(-0.3, 0.3)."""
        dim = check_int("dim", dim)
        xp = B.xp()
        c = 0.3 / dim**0.5
        L = xp.tril(c * rng.standard_normal((dim, dim)), -1) + B.eye(dim)
        U = xp.triu(c * rng.standard_normal((dim, dim)), 1)
        d = np.exp(rng.uniform(-0.3, 0.3, dim))
        return cls(rng.permutation(dim), L, U, d, 0.5 * rng.standard_normal(dim))

    def _upper(self):
        return self.U + B.eye_like(self.U) * self.d

    def forward(self, z, context=None):
        _check_event("z", z, self.b.shape[-1])
        v = (z @ self._upper().T) @ self.L.T  # (..., D): L U z
        x = v[..., self.perm] + self.b  # P v
        return x, _batch_constant(z, np.sum(np.log(self.d)))

    def inverse(self, x, context=None):
        _check_event("x", x, self.b.shape[-1])
        v = (x - self.b)[..., np.argsort(self.perm)]  # P^T (x - b)
        w = solve_triangular(self.L, v, lower=True, unit_diagonal=True)
        z = solve_triangular(self._upper(), w, lower=False)
        return z, _batch_constant(x, -np.sum(np.log(self.d)))


def _check_permutation(name: str, perm: Any) -> None:
    check_array(name, perm, ndim=1)
    host = B.to_numpy(perm)
    if host.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array, got dtype {host.dtype}")
    if host.shape[0] == 0 or not np.all(np.sort(host) == np.arange(host.shape[0])):  # host-ok
        raise ValueError(f"{name}: expected a permutation of 0..D-1, got {host.tolist()}")


@dataclass(frozen=True, eq=False)
class Permutation:
    r"""Permutation of the coordinates x_i = z_{perm[i]}; no parameters, log-det 0.

    Parameters
    ----------
    perm : integer array, shape (D,), static
        A permutation of 0..D-1 as a backend array (``refflow.backend.rng(0).permutation(D)``
        or ``refflow.backend.asarray([...])``).

    Notes
    -----
    Lecture: "Constructing flows", affine flows with A a permutation matrix (and the
    coupling flows' reordering between layers): |det P| = 1.

    .. math::

        x_i = z_{\pi(i)}, \qquad z_{\pi(i)} = x_i \;(z_j = x_{\pi^{-1}(j)}), \qquad
        \log|\det \mathbf{J}_f| = 0

    Always invertible. Cost: O(D) per sample; the inverse indices, argsort(perm), cost
    O(D log D) per call on a static array (recomputed rather than stored: no caches).
    Indexing with an integer array is a gather, whose gradient is a scatter-add
    (``numpy.add.at``), markedly slower than a slice's; ``Reverse`` avoids it.

    References
    ----------
    1. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
       ICLR Workshop, 2015.

    Examples
    --------
    >>> from refflow import backend
    >>> f = Permutation(backend.asarray([2, 0, 1]))
    >>> x, log_det = f.forward(backend.asarray([[10.0, 20.0, 30.0]]))
    >>> x.tolist(), log_det.tolist()
    ([[30.0, 10.0, 20.0]], [0.0])
    >>> f.inverse(x)[0].tolist()
    [[10.0, 20.0, 30.0]]
    """

    perm: Any = field(metadata={"static": True})

    def __post_init__(self):
        _check_permutation("perm", self.perm)

    @classmethod
    def init(cls, rng, dim: int) -> Permutation:
        """A uniformly random permutation of 0..dim-1."""
        return cls(rng.permutation(check_int("dim", dim)))

    def forward(self, z, context=None):
        _check_event("z", z, self.perm.shape[0])
        return z[..., self.perm], np.zeros_like(z, shape=np.shape(z)[:-1])

    def inverse(self, x, context=None):
        _check_event("x", x, self.perm.shape[0])
        return x[..., np.argsort(self.perm)], np.zeros_like(x, shape=np.shape(x)[:-1])


_REVERSED = (Ellipsis, slice(None, None, -1))  # [..., ::-1]


@dataclass(frozen=True, eq=False)
class Reverse:
    r"""Reversal of the coordinates x_i = z_{D+1-i}: the permutation with no parameters.

    Notes
    -----
    Lecture: "Constructing flows", affine flows with A the anti-diagonal permutation matrix;
    used between coupling or autoregressive layers so that every coordinate gets
    transformed.

    .. math::

        x_i = z_{D+1-i}, \qquad z_i = x_{D+1-i}, \qquad \log|\det \mathbf{J}_f| = 0

    Always invertible; its own inverse. Cost: O(D) per sample, and a reversed slice, whose
    gradient is a slice as well (no scatter, unlike ``Permutation``).

    References
    ----------
    1. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
       ICLR Workshop, 2015.

    Examples
    --------
    >>> import numpy
    >>> x, log_det = Reverse().forward(numpy.array([[1.0, 2.0, 3.0]]))
    >>> x.tolist(), log_det.tolist()
    ([[3.0, 2.0, 1.0]], [0.0])
    """

    @classmethod
    def init(cls, rng, dim: int) -> Reverse:
        """The reversal (``rng`` and ``dim`` are accepted for a uniform interface)."""
        check_int("dim", dim)
        return cls()

    def forward(self, z, context=None):
        check_array("z", z, min_ndim=1, finite=False)
        # take: z[..., ::-1], whose gradient is added in place (autograd's indexing VJP
        # scatters with numpy.add.at)
        return take(z, _REVERSED), np.zeros_like(z, shape=z.shape[:-1])

    def inverse(self, x, context=None):
        check_array("x", x, min_ndim=1, finite=False)
        return take(x, _REVERSED), np.zeros_like(x, shape=x.shape[:-1])
