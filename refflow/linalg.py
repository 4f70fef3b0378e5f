r"""Determinants, triangular solves and norms written out, differentiable by autograd.

Every function works on stacks of matrices ``(..., n, n)`` without a loop over the stack,
runs unchanged on CuPy arrays, and uses no in-place writes, so autograd can differentiate
it. Loops run over the matrix size ``n`` (elimination steps, substitution rows).

References
----------
1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed. Johns Hopkins University
   Press, 2013.
2. G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan.
   Normalizing Flows for Probabilistic Modeling and Inference. JMLR 22(57), 2021.
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import autograd.numpy as np

from refflow import backend
from refflow.ops import where

Array = Any  # a NumPy or CuPy array, or an autograd box around one

_LEIBNIZ_MAX_N = 8


__all__ = [
    "det_leibniz", "lu", "det", "slogdet", "solve_triangular", "solve",
    "det_lowrank", "logabsdet_lowrank", "spectral_norm",
]


def _check_matrix(name: str, A: Array, square: bool = True) -> None:
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{name}: expected an array of shape (..., n, n), got {shape}")
    if square and shape[-1] != shape[-2]:
        raise ValueError(f"{name}: expected square matrices (..., n, n), got shape {shape}")
    if shape[-1] == 0 or shape[-2] == 0:
        raise ValueError(f"{name}: expected non-empty matrices, got shape {shape}")


def _check_rhs(b: Array, n: int, columns: bool) -> None:
    shape = getattr(b, "shape", None)
    if shape is None or len(shape) < 1 + columns or shape[-1 - columns] != n:
        expected = "(..., n, k)" if columns else "(..., n)"
        raise ValueError(f"b: expected shape {expected} with n = {n}, got {shape}")


def _lower_mask(A: Array, n: int) -> Array:
    # entry (i, j) of cumsum(I, axis=0) counts the ones at or above row i in column j: [j <= i]
    return np.cumsum(backend.eye_like(A, n), axis=0)


@cache
def _permutations_by_parity(n: int) -> tuple[tuple, tuple]:
    even, odd = [], []
    for sigma in itertools.permutations(range(n)):
        inversions = sum(sigma[i] > sigma[j] for i in range(n) for j in range(i + 1, n))
        (odd if inversions % 2 else even).append(sigma)
    # transposed, so that row i lists sigma(i) for every permutation sigma
    return tuple(zip(*even)), tuple(zip(*odd))


def det_leibniz(A: Array) -> Array:
    r"""Determinant by the Leibniz formula: det A = sum_sigma sgn(sigma) prod_i a_{i, sigma(i)}.

    Parameters
    ----------
    A : array, shape (..., n, n), n <= 8
        Square matrices.

    Returns
    -------
    array, shape (...)
        det A, for each matrix of the stack.

    Raises
    ------
    ValueError
        If ``A`` is not a stack of square matrices, or n > 8 (n! terms).

    Notes
    -----
    Lecture: Flow-based Models, "The determinant of a n x n matrix" (the definition the
    change-of-variables formula uses).

    .. math::

        \det(\mathbf{M}) = \sum_{j_1 \dots j_n} (-1)^{\tau(j_1 \dots j_n)}
                           a_{1 j_1} a_{2 j_2} \cdots a_{n j_n}

    The sum has n! terms of n factors: O(n * n!) time. It is here as an independent check of
    ``det`` (Gaussian elimination, O(n^3)); it is never used inside a flow. Even and odd
    permutations are summed separately, so the signature needs no array of its own.

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 2.6. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> float(det_leibniz(numpy.array([[1.0, 2.0], [3.0, 4.0]])))
    -2.0
    """
    _check_matrix("A", A)
    n = A.shape[-1]
    if n > _LEIBNIZ_MAX_N:
        raise ValueError(
            f"A: det_leibniz sums n! terms and accepts n <= {_LEIBNIZ_MAX_N}, got n = {n}; "
            "use det"
        )
    even, odd = _permutations_by_parity(n)
    total = 0.0
    for sign, table in ((1.0, even), (-1.0, odd)):
        if not table:
            continue
        cols = backend.asarray(table)  # (n, number of permutations), integer
        term = A[..., 0, :][..., cols[0]]
        for i in range(1, n):
            term = term * A[..., i, :][..., cols[i]]  # (..., number of permutations)
        total = total + sign * np.sum(term, axis=-1)
    return total


def _swap_rows(X: Array, k: int, e_p: Array, e_k: Array) -> Array:
    """Exchange rows k and p of X, p given one-hot per matrix by e_p (..., n)."""
    to_p = e_p - e_k * e_p  # zero where p == k, so those matrices keep their row k
    keep = 1 - e_k - to_p  # (..., n)
    row_k = X[..., k, :]
    row_p = np.sum(e_p[..., :, None] * X, axis=-2)
    # products with exact zeros and ones move rows without rounding (not row_k + (row_p - row_k))
    return (
        keep[..., :, None] * X
        + e_k[:, None] * row_p[..., None, :]
        + to_p[..., :, None] * row_k[..., None, :]
    )


def _lu(A: Array):
    """Gaussian elimination with partial pivoting: Pt A = L U.

    Returns (Pt, L, U, permutation sign, list of pivots u_kk).
    """
    n = A.shape[-1]
    eye = backend.eye_like(A, n)
    strictly_lower = _lower_mask(A, n) - eye
    U = A
    L = np.zeros_like(A)
    Pt = eye + np.zeros_like(A)
    perm_sign = np.zeros_like(A, shape=A.shape[:-2]) + 1
    pivots = []
    for k in range(n):
        # the pivot choice is piecewise constant in A: argmax carries no gradient
        p = k + np.argmax(np.abs(U[..., k:, k]), axis=-1)  # (...,)
        e_p = eye[p]  # (..., n): one-hot rows
        U, L, Pt = (_swap_rows(X, k, e_p, eye[k]) for X in (U, L, Pt))
        perm_sign = perm_sign - 2 * perm_sign * (p != k)
        pivot = U[..., k, k]
        pivots.append(pivot)
        # a zero pivot is the largest entry of its column, so the column below is zero and
        # nothing is eliminated: divide by 1 instead of 0
        divisor = pivot + (pivot == 0)
        m = U[..., :, k] / divisor[..., None] * strictly_lower[:, k]  # (..., n) multipliers
        U = U - m[..., :, None] * U[..., k, None, :]
        L = L + m[..., :, None] * eye[k]
    # round-off leaves ~eps residues below the diagonal of U; they are zero in exact arithmetic
    U = U * np.swapaxes(_lower_mask(A, n), -1, -2)
    return Pt, L + eye, U, perm_sign, pivots


def lu(A: Array) -> tuple[Array, Array, Array]:
    r"""LU factorisation with partial pivoting: A = P L U.

    Parameters
    ----------
    A : array, shape (..., n, n)
        Square matrices (singular ones too).

    Returns
    -------
    P : array, shape (..., n, n)
        Permutation matrices.
    L : array, shape (..., n, n)
        Unit lower triangular, ``|l_ij| <= 1``.
    U : array, shape (..., n, n)
        Upper triangular; a zero on its diagonal means A is singular.

    Notes
    -----
    Lecture: Constructing flows, affine flows ("computing det(A) requires O(D^3) time"; the
    triangular factors then give the determinant in O(D) and the inverse by substitution).

    .. math::

        \mathbf{A} = \mathbf{P}\mathbf{L}\mathbf{U}, \qquad
        \det \mathbf{A} = \det \mathbf{P} \prod_{i=1}^{n} u_{ii}

    At step k the row with the largest ``|a_ik|`` (i >= k) is swapped into place, then the
    rows below are eliminated with multipliers ``l_ik = a_ik / a_kk``. The swap is an
    arithmetic row exchange, not an in-place write, so autograd differentiates the values;
    the pivot choice (argmax) is locally constant. Ties in ``|a_ik|`` make the factors, not
    the determinant, non-differentiable. Cost: O(n^3).

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.4. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> A = numpy.array([[1.0, 2.0], [3.0, 4.0]])
    >>> P, L, U = lu(A)
    >>> bool(numpy.allclose(P @ L @ U, A))
    True
    """
    _check_matrix("A", A)
    Pt, L, U, _, _ = _lu(A)
    return np.swapaxes(Pt, -1, -2), L, U


def det(A: Array) -> Array:
    r"""Determinant from the LU factors: det A = sign(P) prod_i u_ii.

    Parameters
    ----------
    A : array, shape (..., n, n)

    Returns
    -------
    array, shape (...)
        det A; exactly 0 when elimination meets an exactly zero column.

    Notes
    -----
    Lecture: Constructing flows, affine flows: det of a triangular matrix is the product of
    its diagonal, O(D); the LU factorisation reduces a general matrix to that in O(D^3).

    .. math::

        \det \mathbf{A} = \det \mathbf{P} \, \det \mathbf{L} \, \det \mathbf{U}
                        = (\pm 1) \cdot 1 \cdot \prod_{i=1}^{n} u_{ii}

    The product is a running product rather than ``prod`` (whose gradient divides by the
    factors and gives NaN at a zero pivot). Cost: O(n^3). For log-densities use ``slogdet``.

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.2. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> float(det(numpy.array([[2.0, 1.0], [1.0, 3.0]])))
    5.0
    """
    _check_matrix("A", A)
    _, _, _, value, pivots = _lu(A)
    for pivot in pivots:
        value = value * pivot
    return value


def slogdet(A: Array) -> tuple[Array, Array]:
    r"""Sign and log of |det A| from the LU factors: log|det A| = sum_i log|u_ii|.

    Parameters
    ----------
    A : array, shape (..., n, n)

    Returns
    -------
    sign : array, shape (...)
        +1, -1, or 0 for a singular matrix.
    logabsdet : array, shape (...)
        log|det A|; ``-inf`` (no NaN, no warning) when a pivot is exactly zero.

    Notes
    -----
    Lecture: Flow-based Models, change of variables: log-densities need log|det J|, and
    summing logs avoids the overflow/underflow of the product (Section 5 of the design).

    .. math::

        \log|\det \mathbf{A}| = \sum_{i=1}^{n} \log|u_{ii}|, \qquad
        \operatorname{sign} \det \mathbf{A} = \det \mathbf{P} \prod_i \operatorname{sign} u_{ii}

    A zero pivot contributes ``-inf`` and a zero gradient (the exact gradient is unbounded
    there). Matrices that are singular only up to round-off give a large negative finite
    value, as LAPACK does. Cost: O(n^3).

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.2. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> sign, logabsdet = slogdet(numpy.array([[0.0, 2.0], [3.0, 0.0]]))
    >>> float(sign), round(float(logabsdet), 6)
    (-1.0, 1.791759)
    """
    _check_matrix("A", A)
    _, _, _, sign, pivots = _lu(A)
    logabsdet = 0.0
    for pivot in pivots:
        size = np.abs(pivot)
        zero = size == 0
        sign = sign * np.sign(pivot)
        logabsdet = logabsdet + where(zero, -np.inf, np.log(size + zero))
    return sign + 0.0, logabsdet  # + 0.0 turns the sign -0.0 of a zero pivot into 0.0


def _substitute(T: Array, b: Array, lower: bool, unit_diagonal: bool) -> Array:
    """Solve T x = b for b of shape (..., n, k), one row of x per step."""
    n = T.shape[-1]
    eye = backend.eye_like(T, n)
    x = np.zeros_like(b)
    for i in range(n) if lower else range(n - 1, -1, -1):
        # rows of x not reached yet are zero, so the full row product only sums the known ones
        known = np.sum(T[..., i, :, None] * x, axis=-2)  # (..., k)
        x_i = b[..., i, :] - known
        if not unit_diagonal:
            x_i = x_i / T[..., i, i, None]
        x = x + eye[i][:, None] * x_i[..., None, :]
    return x


def solve_triangular(
    T: Array, b: Array, lower: bool = True, unit_diagonal: bool = False, *, columns: bool = False
) -> Array:
    r"""Forward or back substitution: x = T^{-1} b for triangular T.

    Parameters
    ----------
    T : array, shape (..., n, n)
        Triangular matrices; only the lower (``lower=True``) or upper triangle is read.
    b : array, shape (..., n), or (..., n, k) with ``columns=True``
        Right-hand sides. By default the last axis is the vector (the flow convention: a
        batch x of shape (N, D) against one T of shape (D, D)); leading axes broadcast.
    lower : bool
        Lower triangular (forward substitution) or upper (back substitution).
    unit_diagonal : bool
        Take the diagonal of T as ones without reading it.
    columns : bool, keyword-only
        Read b as matrices whose k columns are right-hand sides, as in ``scipy.linalg``.

    Returns
    -------
    array, the broadcast shape of b against T's leading axes
        x with T x = b.

    Notes
    -----
    Lecture: Constructing flows, affine flows: "Inverting flow requires solving triangular
    system A z = x - b using back-substitution in O(D^2) time."

    .. math::

        x_i = \frac{1}{t_{ii}} \Big( b_i - \sum_{j < i} t_{ij} x_j \Big)
        \quad (i = 1, \dots, n; \text{ for upper } T: j > i,\ i = n, \dots, 1)

    Solvable if and only if every ``t_ii != 0``; a zero gives inf/NaN, as division does.
    Cost: O(n^2) per right-hand side.

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.1. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> T = numpy.array([[2.0, 0.0], [1.0, 1.0]])
    >>> solve_triangular(T, numpy.array([4.0, 3.0])).tolist()
    [2.0, 1.0]
    """
    _check_matrix("T", T)
    _check_rhs(b, T.shape[-1], columns)
    if columns:
        return _substitute(T, b, lower, unit_diagonal)
    return _substitute(T, b[..., None], lower, unit_diagonal)[..., 0]


def solve(A: Array, b: Array, *, columns: bool = False) -> Array:
    r"""Linear solve through LU: x = A^{-1} b = U^{-1} L^{-1} P^T b.

    Parameters
    ----------
    A : array, shape (..., n, n)
        Invertible matrices.
    b : array, shape (..., n), or (..., n, k) with ``columns=True``
        Right-hand sides, with the conventions of ``solve_triangular``.
    columns : bool, keyword-only
        Read b as matrices whose columns are right-hand sides.

    Returns
    -------
    array
        x with A x = b.

    Notes
    -----
    Lecture: Constructing flows, affine flows: the inverse z = A^{-1}(x - b) of x = Az + b.

    .. math::

        \mathbf{A} = \mathbf{P}\mathbf{L}\mathbf{U} \;\Rightarrow\;
        \mathbf{L}\mathbf{y} = \mathbf{P}^T \mathbf{b}, \quad \mathbf{U}\mathbf{x} = \mathbf{y}

    Invertible if and only if det A != 0; a singular A gives inf/NaN (check ``slogdet``
    first where that can happen). Cost: O(n^3) for the factorisation, O(n^2) per right-hand
    side; a flow that solves often should store triangular factors (``LUAffine``).

    References
    ----------
    1. G. H. Golub, C. F. Van Loan. Matrix Computations, 4th ed., Section 3.4. Johns Hopkins
       University Press, 2013.

    Examples
    --------
    >>> import numpy
    >>> A = numpy.array([[0.0, 2.0], [1.0, 1.0]])
    >>> solve(A, numpy.array([2.0, 3.0])).tolist()
    [2.0, 1.0]
    """
    _check_matrix("A", A)
    _check_rhs(b, A.shape[-1], columns)
    Pt, L, U, _, _ = _lu(A)
    rhs = Pt @ (b if columns else b[..., None])  # (..., n, k)
    y = _substitute(L, rhs, lower=True, unit_diagonal=True)
    x = _substitute(U, y, lower=False, unit_diagonal=False)
    return x if columns else x[..., 0]


def _lowrank_core(A: Array, Bm: Array) -> Array:
    _check_matrix("A", A, square=False)
    _check_matrix("B", Bm, square=False)
    if A.shape[-1] != Bm.shape[-2] or A.shape[-2] != Bm.shape[-1]:
        raise ValueError(
            f"B: expected shape (..., M, D) = (..., {A.shape[-1]}, {A.shape[-2]}) to match "
            f"A of shape (..., D, M) = {A.shape}, got {Bm.shape}"
        )
    return backend.eye_like(A, A.shape[-1]) + Bm @ A  # (..., M, M)


def det_lowrank(A: Array, B: Array) -> Array:
    r"""Determinant of a low-rank update of the identity: det(I_D + A B) = det(I_M + B A).

    Parameters
    ----------
    A : array, shape (..., D, M)
    B : array, shape (..., M, D)

    Returns
    -------
    array, shape (...)
        det(I_D + A B).

    Notes
    -----
    Lecture: Residual flows, "an efficient way of computing the determinant of a matrix
    which is a low-rank perturbation of an identity matrix" (Sylvester's determinant
    identity); with A = J_F2, B = J_F1 it gives det J_f of a bottleneck residual block.

    .. math::

        \det(\mathbf{I}_D + \mathbf{A}\mathbf{B}) = \det(\mathbf{I}_M + \mathbf{B}\mathbf{A})

    I_D + A B is invertible if and only if I_M + B A is. Cost: O(D M^2) for B A plus O(M^3)
    for its determinant, instead of O(D^3). For M = 1 (planar flow) it is 1 + b . a.

    References
    ----------
    1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
    2. R. van den Berg, L. Hasenclever, J. M. Tomczak, M. Welling. Sylvester Normalizing
       Flows for Variational Inference. UAI, 2018.

    Examples
    --------
    >>> import numpy
    >>> a = numpy.array([[1.0], [2.0], [3.0]])
    >>> float(det_lowrank(a, a.T))
    15.0
    """
    return det(_lowrank_core(A, B))


def logabsdet_lowrank(A: Array, B: Array) -> Array:
    r"""Log of |det(I_D + A B)|, computed as log|det(I_M + B A)|.

    Parameters
    ----------
    A : array, shape (..., D, M)
    B : array, shape (..., M, D)

    Returns
    -------
    array, shape (...)
        log|det(I_D + A B)|; ``-inf`` when I_M + B A has an exactly zero pivot.

    Notes
    -----
    Lecture: Residual flows, low-rank Jacobian determinant (see ``det_lowrank``).

    .. math::

        \log|\det(\mathbf{I}_D + \mathbf{A}\mathbf{B})|
        = \log|\det(\mathbf{I}_M + \mathbf{B}\mathbf{A})|

    Invertible if and only if the result is finite. Cost: O(D M^2 + M^3).

    References
    ----------
    1. R. van den Berg, L. Hasenclever, J. M. Tomczak, M. Welling. Sylvester Normalizing
       Flows for Variational Inference. UAI, 2018.

    Examples
    --------
    >>> import numpy
    >>> a = numpy.array([[1.0], [0.0]])
    >>> round(float(logabsdet_lowrank(a, -3.0 * a.T)), 6)
    0.693147
    """
    return slogdet(_lowrank_core(A, B))[1]


def spectral_norm(W: Array, iters: int = 1000, tol: float = 1e-12) -> Array:
    r"""Largest singular value by power iteration: sigma(W) = max_{|v| = 1} |W v|.

    Parameters
    ----------
    W : array, shape (..., m, n)
        Matrices (rectangular allowed).
    iters : int
        Most iterations.
    tol : float
        Stop once every estimate of the stack changed by at most ``tol`` times itself.

    Returns
    -------
    array, shape (...)
        The estimate ``|W^T u_k|``, a lower bound on sigma(W) at every iteration.

    Notes
    -----
    Lecture: Residual flows, iResNet: "spectral normalization" keeps each layer contractive
    (Lip(F) < 1), which makes f(z) = z + F(z) invertible.

    .. math::

        \mathbf{u}_k = \frac{\mathbf{W}\mathbf{v}_{k-1}}{\|\mathbf{W}\mathbf{v}_{k-1}\|},
        \quad
        \mathbf{v}_k = \frac{\mathbf{W}^T\mathbf{u}_k}{\|\mathbf{W}^T\mathbf{u}_k\|},
        \quad
        \sigma_k = \|\mathbf{W}^T\mathbf{u}_k\| \to \sigma_1

    Convergence: sigma_k increases to sigma_1 when the start v_0 is not orthogonal to the
    top right singular vector; the error shrinks like (sigma_2 / sigma_1)^(2k), so a small
    gap sigma_1 - sigma_2 needs many iterations (but then every sigma_k is already close to
    sigma_1 relative to the gap). The start is deterministic, v_0j = cos(j), j = 1..n: since
    cos(j) = T_j(cos 1) (Chebyshev) with cos 1 transcendental, v_0 is orthogonal to no
    nonzero vector with rational entries, so structured matrices (e.g. rows summing to zero,
    where a ones vector fails) still converge. The stopping test syncs with the device once
    per iteration. Gradients flow through the iterations. Cost: O(m n) per iteration.

    References
    ----------
    1. T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida. Spectral Normalization for Generative
       Adversarial Networks. ICLR, 2018.
    2. J. Behrmann, W. Grathwohl, R. T. Q. Chen, D. Duvenaud, J.-H. Jacobsen. Invertible
       Residual Networks. ICML, 2019.

    Examples
    --------
    >>> import numpy
    >>> round(float(spectral_norm(numpy.array([[3.0, 0.0], [0.0, -4.0]]))), 8)
    4.0
    """
    _check_matrix("W", W, square=False)
    if int(iters) != iters or iters < 1:
        raise ValueError(f"iters: expected a positive integer, got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    n = W.shape[-1]
    v = np.cos(np.cumsum(np.zeros_like(W, shape=W.shape[:-2] + (n,)) + 1, axis=-1))
    v = v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True))
    sigma = None
    for _ in range(int(iters)):
        u = (W @ v[..., None])[..., 0]  # (..., m)
        u_norm = np.sqrt(np.sum(u * u, axis=-1, keepdims=True))
        u = u / (u_norm + (u_norm == 0))  # W = 0 stays at sigma = 0 instead of 0 / 0
        w = (np.swapaxes(W, -1, -2) @ u[..., None])[..., 0]  # (..., n)
        new = np.sqrt(np.sum(w * w, axis=-1))
        v = w / (new[..., None] + (new[..., None] == 0))
        done = sigma is not None and bool(np.all(np.abs(new - sigma) <= tol * new))
        sigma = new
        if done:
            break
    return sigma
