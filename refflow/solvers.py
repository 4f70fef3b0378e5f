r"""Numerical inverses: bisection for increasing scalar maps, Banach fixed-point iteration.

Every numerical inverse in refflow goes through this module. Each solver takes a tolerance and
an iteration limit, works on a whole batch at once, and raises :class:`ConvergenceError`
instead of returning an unconverged answer.

The solvers run on concrete values (autograd boxes are stripped). Gradients of an inverse are
attached afterwards by the implicit function theorem:

- :func:`invert_increasing` (element-wise bijections, planar's scalar inverse): one Newton step
  from the constant solution, evaluated with the traced parameters;
- :func:`invert_residual` (contractive residual blocks): an autograd primitive whose VJP solves
  the adjoint equation by the same fixed-point iteration.

Both give exact first-order gradients; second derivatives are not supported.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import autograd.numpy as np
from autograd import elementwise_grad, make_vjp
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

__all__ = [
    "ConvergenceError",
    "bisect_increasing",
    "fixed_point",
    "invert_increasing",
    "invert_residual",
]

Array = Any


class ConvergenceError(ArithmeticError, RuntimeError):
    """A numerical inverse did not reach its tolerance within its limits."""


def _all(x: Array) -> bool:
    # One device-to-host sync per call: used once per iteration, never per element.
    return bool(np.all(x))


def _eps(x: Array) -> float:
    return float(np.finfo(x.dtype).eps)


def _like(x: Array, t: Array) -> Array:
    # A float64 numpy scalar bound must not promote a float32 target.
    return x if x.dtype == t.dtype else x.astype(t.dtype)


def _check_float(name: str, x: Array) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    if not _all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values")


def _check_limit(name: str, n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: expected a positive int, got {n!r}")


def bisect_increasing(
    g: Callable[[Array], Array],
    target: Array,
    lo: float | Array,
    hi: float | Array,
    *,
    tol: float | Array | None = None,
    max_iter: int = 200,
    max_expand: int = 60,
    name: str = "target",
) -> Array:
    r"""Solve g(a) = target element-wise for a strictly increasing element-wise g, by bisection.

    Parameters
    ----------
    g : callable
        Element-wise, strictly increasing map; array shaped like ``target`` -> same shape.
        Evaluated on concrete values only (its output is unboxed), so it may close over traced
        parameters, but the result is not differentiable: use :func:`invert_increasing`.
    target : array, any shape, floating point
    lo, hi : float or array broadcasting to ``target``
        Initial bracket, ``lo <= hi``. It is grown outward (the step doubles each round, at
        most ``max_expand`` rounds, starting from hi - lo or a few units in the last place of
        the bracket, whichever is larger) until ``g(lo) <= target <= g(hi)`` for every
        element. ``lo == hi`` is allowed: at large magnitudes a bracket computed in floating
        point can collapse to one number.
    tol : float or array, optional
        Absolute tolerance on ``a``. Default ``4 eps max(1, |a|)`` with ``eps`` of the dtype
        of ``target``, a few units in the last place.
    max_iter : int
        Limit on bisection steps (each one halves every interval).
    max_expand : int
        Limit on bracket-growing rounds.
    name : str
        The caller's name for ``target`` (e.g. ``"x"`` for an inverse h^{-1}(x)), used in the
        error messages about it.

    Returns
    -------
    a : array shaped like ``target``, same dtype and array type
        Midpoint of the final bracket, so ``|a - a*| <= tol / 2``.

    Raises
    ------
    ConvergenceError
        If some element cannot be bracketed (g is bounded below the target, or not finite
        on the bracket), or if ``max_iter`` steps leave an interval wider than ``tol``.
    ValueError
        If ``target`` is not a finite float array, the bracket is not finite (the solution
        lies outside the floating-point range; the message names ``name``), or ``lo > hi``.

    Notes
    -----
    Lecture: Constructing flows, "Combinations of strictly monotonic scalar functions": a
    strictly increasing h is invertible; bisection computes the inverse.

    .. math::

        g(a_{lo}) \le t \le g(a_{hi}),\quad m = \tfrac{1}{2}(a_{lo} + a_{hi}),\quad
        (a_{lo}, a_{hi}) \leftarrow (m, a_{hi}) \text{ if } g(m) < t
        \text{ else } (a_{lo}, m)

    Works when g is strictly increasing and continuous on the bracket (intermediate value
    theorem); it needs no derivative and cannot diverge. Cost: one evaluation of g on the whole
    array per step, ``log2(width / tol)`` steps (about 50-90 in float64), plus two per
    bracket-growing round. One host sync per step for the stopping test.

    References
    ----------
    .. [1] R. L. Burden, J. D. Faires, "Numerical Analysis", 9th ed., Brooks/Cole, 2011,
       section 2.1 (the bisection method).

    Examples
    --------
    >>> import autograd.numpy as np
    >>> a = bisect_increasing(lambda a: a + a ** 3, np.zeros(3) + 10.0, -1.0, 1.0)
    >>> bool(np.all(np.abs(a + a ** 3 - 10.0) < 1e-12))
    True
    """
    _check_limit("max_iter", max_iter)
    if not isinstance(max_expand, int) or max_expand < 0:
        raise ValueError(f"max_expand: expected a non-negative int, got {max_expand!r}")
    t = getval(target)
    _check_float(name, t)
    zero = np.zeros_like(t)
    lo, hi = _like(zero + getval(lo), t), _like(zero + getval(hi), t)
    if not _all(np.isfinite(lo) & np.isfinite(hi)):
        raise ValueError(f"{name}: the solution for some entries lies outside the "
                         "floating-point range (their bracket is not finite)")
    _check_float("lo", lo)
    _check_float("hi", hi)
    if not _all(lo <= hi):
        raise ValueError("lo, hi: expected lo <= hi element-wise")
    if tol is not None and not _all(getval(tol) > 0):
        raise ValueError(f"tol: expected positive values, got {tol!r}")

    def gv(a: Array) -> Array:
        return getval(g(a))

    # a bracket that rounding collapsed (lo == hi at 1e30) grows from a few units in the
    # last place instead of from 0
    ulps = 4 * _eps(t) * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    step = np.maximum(hi - lo, ulps)
    for rounds in range(max_expand + 1):
        g_lo, g_hi = gv(lo), gv(hi)
        lo_ok, hi_ok = g_lo <= t, g_hi >= t
        if _all(np.logical_and(lo_ok, hi_ok)):
            break
        if rounds == max_expand:
            missing = np.logical_not(np.logical_and(lo_ok, hi_ok))
            raise ConvergenceError(
                f"bisect_increasing: could not bracket {int(np.sum(missing))} of {t.size} "
                f"targets after {max_expand} doublings of the bracket (last bracket "
                f"[{float(np.min(lo)):.3g}, {float(np.max(hi)):.3g}]); g may be bounded, "
                "not increasing, or not finite there"
            )
        # A side that overshoots is a valid bound for the other side: keep it (tighter bracket).
        new_hi = np.where(g_lo > t, lo, hi)
        new_lo = np.where(g_hi < t, hi, lo)
        lo = np.where(lo_ok, new_lo, lo - step)
        hi = np.where(hi_ok, new_hi, hi + step)
        step = step * 2

    for _ in range(max_iter):
        width = hi - lo
        mid = lo + width / 2
        xtol = 4 * _eps(t) * np.maximum(1.0, np.abs(mid)) if tol is None else getval(tol)
        if _all(width <= xtol):
            return mid
        go_up = gv(mid) < t
        lo = np.where(go_up, mid, lo)
        hi = np.where(go_up, hi, mid)
    worst = float(np.max(hi - lo))
    raise ConvergenceError(
        f"bisect_increasing: max_iter={max_iter} steps left an interval of width {worst:.3g} "
        "above the tolerance"
    )


def invert_increasing(
    h: Callable[[Array], Array],
    x: Array,
    lo: float | Array,
    hi: float | Array,
    *,
    dh: Callable[[Array], Array] | None = None,
    tol: float | Array | None = None,
    max_iter: int = 200,
    name: str = "x",
) -> Array:
    r"""Differentiable inverse z = h^{-1}(x) of a strictly increasing element-wise map h.

    Parameters
    ----------
    h : callable
        ``h(z)``, element-wise and strictly increasing in ``z``; a closure over the (possibly
        traced) parameters theta of the bijection, e.g. ``lambda z: self.forward_scalar(z)``.
    x : array, any shape (may be traced)
    lo, hi : float or array
        Initial bracket for :func:`bisect_increasing` (grown if needed).
    dh : callable, optional
        ``dh(z) = h'(z)`` element-wise. Default: ``autograd.elementwise_grad(h)``, which
        differentiates inside the caller's trace (nested); a closed form is cheaper.
    tol, max_iter
        Passed to :func:`bisect_increasing`.
    name : str
        The caller's name for ``x``, used in the error messages about it.

    Returns
    -------
    z : array shaped like ``x``

    Notes
    -----
    Lecture: Constructing flows, "Combinations of strictly monotonic scalar functions".
    Bisection gives a constant z0 with ``|z0 - z*| <= tol / 2``; the result is re-attached to
    the autograd graph by one Newton step evaluated with the traced x and theta, treating the
    slope c = h'(z0) as a constant:

    .. math::

        z = z_0 - \frac{h(z_0; \theta) - x}{c},\qquad
        \frac{\partial z}{\partial x} = \frac{1}{h'(z)},\qquad
        \frac{\partial z}{\partial \theta} = -\frac{\partial h / \partial \theta}{h'(z)}

    These are exactly the implicit-function-theorem derivatives of ``h(z; theta) = x``
    (first order). Second derivatives are not supported (c is a constant, so the derivative
    of 1/h' is missing). The Newton step also polishes the value to near machine precision.
    Needs h strictly increasing with ``h'(z0) > 0``. Cost: the bisection plus two evaluations
    of h and one of h'.

    References
    ----------
    .. [1] S. G. Krantz, H. R. Parks, "The Implicit Function Theorem: History, Theory, and
       Applications", Birkhauser, 2002.

    Examples
    --------
    >>> import autograd.numpy as np
    >>> from autograd import grad
    >>> x = np.zeros(2) + 2.0
    >>> dz_dx = grad(lambda x: np.sum(invert_increasing(lambda z: z + z ** 3, x, -1.0, 1.0)))(x)
    >>> bool(np.allclose(dz_dx, 1 / (1 + 3 * 1.0 ** 2)))
    True
    """
    z0 = bisect_increasing(h, x, lo, hi, tol=tol, max_iter=max_iter, name=name)
    slope = getval(dh(z0) if dh is not None else elementwise_grad(h)(z0))
    if not _all(slope > 0):
        raise ConvergenceError("invert_increasing: h'(z) <= 0 at the solution; h must be "
                               "strictly increasing with a positive slope there")
    # Written with the traced term first: a concrete device array on the left of a Box is the
    # operand order the strict stand-in (tests/strict.py) cannot handle.
    return -(h(z0) - x) / slope + z0


def _row_norm(d: Array, event_ndim: int) -> Array:
    axes = tuple(range(-event_ndim, 0))
    return np.sqrt(np.sum(d * d, axis=axes))


def fixed_point(
    g: Callable[[Array], Array],
    x0: Array,
    *,
    lipschitz: float,
    tol: float | None = None,
    max_iter: int = 10_000,
    event_ndim: int = 1,
) -> tuple[Array, int]:
    r"""Banach fixed-point iteration x_{k+1} = g(x_k) for a contraction g, with a-posteriori stop.

    Parameters
    ----------
    g : callable
        Contraction, batch-wise: array shaped like ``x0`` -> same shape, each row (the last
        ``event_ndim`` axes) mapped independently. Evaluated on concrete values (its output is
        unboxed): the result is not differentiable; use :func:`invert_residual`.
    x0 : array (..., *event)
        Starting point, e.g. ``(N, D)``.
    lipschitz : float
        Lipschitz constant L of g in the Euclidean norm over one row, ``0 <= L < 1``.
    tol : float, optional
        Bound on the true error per row, ``||x - x*|| <= tol``. Default ``eps ** (2/3)`` of the
        dtype (about 4e-11 in float64, 2e-5 in float32).
    max_iter : int
        Iteration limit. About ``log(tol (1 - L) / (L ||x_1 - x_0||)) / log(L)`` are needed:
        ~2800 for L = 0.99, tol = 1e-10 and a first step of size 1.
    event_ndim : int
        Number of trailing axes forming one row (1 for vectors, 3 for images).

    Returns
    -------
    x : array shaped like ``x0``
    iterations : int
        Number of evaluations of g used.

    Raises
    ------
    ValueError
        If ``lipschitz`` is not in [0, 1), or ``x0`` is not a finite float array.
    ConvergenceError
        If ``max_iter`` iterations leave a bound above ``tol`` (the bound reached is stated).

    Notes
    -----
    Lecture: Residual flows, contraction and Banach's fixed-point theorem. Inverting
    f(z) = z + F(z) at x means finding the fixed point of g(z) = x - F(z), a contraction with
    the constant L of F. Banach's theorem gives the a-posteriori error bound used to stop:

    .. math::

        x_{k+1} = g(x_k),\qquad
        \|x_k - x_*\| \le \frac{L}{1 - L}\, \|x_k - x_{k-1}\| \le \mathrm{tol}

    Works only for ``L < 1``: errata, the slide allows ``0 <= L <= 1`` (with L = 1 there may be
    no fixed point or many, e.g. x + 1 or the identity), and its last line should read
    ``z* = f^{-1}(x)``, not ``f^{-1}(z*)``. Stopping when ``|x_k - x_{k-1}|^2 < tol`` (as some
    libraries do) leaves an error up to ``L / (1 - L) sqrt(tol)``: 32 sqrt(tol) for L = 0.97.
    Cost: one evaluation of g on the batch per iteration, about
    ``log(tol (1 - L)) / log(L)`` iterations; one host sync per iteration. Rounding limits the
    reachable tol to a few ``eps |x| / (1 - L)``.

    References
    ----------
    .. [1] S. Banach, "Sur les operations dans les ensembles abstraits et leur application aux
       equations integrales", Fundamenta Mathematicae 3, 1922.
    .. [2] J. Behrmann, W. Grathwohl, R. T. Q. Chen, D. Duvenaud, J.-H. Jacobsen, "Invertible
       Residual Networks", ICML, 2019.

    Examples
    --------
    >>> import autograd.numpy as np
    >>> x, iters = fixed_point(lambda x: 0.5 * x + 1.0, np.zeros((2, 3)), lipschitz=0.5,
    ...                        tol=1e-12)
    >>> bool(np.all(np.abs(x - 2.0) <= 1e-12)), iters
    (True, 42)
    """
    if not (isinstance(lipschitz, numbers.Real) and 0 <= lipschitz < 1):
        raise ValueError(f"lipschitz: expected a number in [0, 1) (Banach needs L < 1), "
                         f"got {lipschitz!r}")
    _check_limit("max_iter", max_iter)
    x = getval(x0)
    _check_float("x0", x)
    if not isinstance(event_ndim, int) or not 1 <= event_ndim <= x.ndim:
        raise ValueError(f"event_ndim: expected an int in [1, x0.ndim], got {event_ndim!r}")
    if tol is None:
        tol = _eps(x) ** (2 / 3)
    elif not tol > 0:
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    factor = float(lipschitz) / (1 - float(lipschitz))
    bound = float("inf")
    for k in range(1, max_iter + 1):
        x_new = getval(g(x))
        bound = factor * _row_norm(x_new - x, event_ndim)
        x = x_new
        if _all(bound <= tol):
            return x, k
    raise ConvergenceError(
        f"fixed_point: after max_iter={max_iter} iterations the error bound "
        f"L / (1 - L) ||x_k - x_(k-1)|| reached {float(np.max(bound)):.3g} > tol={tol:.3g}"
    )


@primitive
def _residual_inverse(x, F, lipschitz, tol, max_iter, event_ndim, *params):
    z, _ = fixed_point(lambda z: x - F(z, *params), x, lipschitz=lipschitz, tol=tol,
                       max_iter=max_iter, event_ndim=event_ndim)
    return z


def _residual_inverse_vjp(argnums, z, args, kwargs):
    _, F, lipschitz, tol, max_iter, event_ndim, *params = args

    def vjp(v):
        # IFT on z + F(z) = x: the cotangent u = (I + J_F)^{-T} v solves u = v - J_F^T u, a
        # contraction with the same L (||J_F^T|| = ||J_F||), so the same iteration applies.
        # One adjoint solve serves x and every parameter.
        vjp_z, _ = make_vjp(lambda zz: F(zz, *params))(z)
        u, _ = fixed_point(lambda u: v - vjp_z(u), v, lipschitz=lipschitz, tol=tol,
                           max_iter=max_iter, event_ndim=event_ndim)
        wanted = [i - 6 for i in argnums if i != 0]
        if wanted:
            # one reverse pass of F for all differentiated parameters together
            def F_of(chosen):
                full = list(params)
                for i, p in zip(wanted, chosen):
                    full[i] = p
                return F(z, *full)

            vjp_p, _ = make_vjp(F_of)(tuple(params[i] for i in wanted))
            grads = iter(vjp_p(u))
        return tuple(u if i == 0 else -next(grads) for i in argnums)

    return vjp


defvjp_argnums(_residual_inverse, _residual_inverse_vjp)


def invert_residual(
    F: Callable[..., Array],
    x: Array,
    *params: Array,
    lipschitz: float,
    tol: float | None = None,
    max_iter: int = 10_000,
    event_ndim: int = 1,
) -> Array:
    r"""Differentiable inverse z = f^{-1}(x) of a contractive residual map f(z) = z + F(z).

    Parameters
    ----------
    F : callable
        ``F(z, *params)``, the residual block, a contraction in z with constant ``lipschitz``.
        Its parameters must be passed explicitly (not closed over) to receive gradients.
    x : array (..., *event), may be traced
    *params : arrays, may be traced
    lipschitz, tol, max_iter, event_ndim
        As in :func:`fixed_point`; ``tol`` also bounds the error of the adjoint solve.

    Returns
    -------
    z : array shaped like ``x``

    Notes
    -----
    Lecture: Residual flows, contraction and Banach's fixed-point theorem. The value is the
    fixed point of z = x - F(z) from :func:`fixed_point`, started at x. Gradients follow the
    implicit function theorem on z + F(z; theta) = x, with the adjoint u solved by the same
    contraction iteration:

    .. math::

        u = v - J_F(z)^\top u,\qquad
        \bar{x} = u = (I + J_F)^{-\top} v,\qquad
        \bar{\theta} = -\Big(\frac{\partial F}{\partial \theta}\Big)^{\top} u

    Exact first-order gradients for x and every array in ``params``; second derivatives are not
    supported. Needs Lip(F) <= L < 1. Cost: forward one fixed-point solve; backward one
    adjoint fixed-point solve (each step one VJP of F) shared by all differentiated
    arguments, then one VJP of F for all parameters together.

    References
    ----------
    .. [1] J. Behrmann, W. Grathwohl, R. T. Q. Chen, D. Duvenaud, J.-H. Jacobsen, "Invertible
       Residual Networks", ICML, 2019.
    .. [2] S. Bai, J. Z. Kolter, V. Koltun, "Deep Equilibrium Models", NeurIPS, 2019.

    Examples
    --------
    >>> import autograd.numpy as np
    >>> from autograd import grad
    >>> F = lambda z, a: a * np.tanh(z)
    >>> x = np.zeros((1, 2)) + 0.7
    >>> z = invert_residual(F, x, 0.5, lipschitz=0.5)
    >>> bool(np.allclose(z + 0.5 * np.tanh(z), x))
    True
    """
    return _residual_inverse(x, F, lipschitz, tol, max_iter, event_ndim, *params)
