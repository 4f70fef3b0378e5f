r"""Host-side evaluation of foreign callables, finite-difference and autodiff Jacobians.

The functions under test may be refflow bijections, NumPy code, PyTorch modules or JAX
functions, so everything here works on host float64 NumPy copies and calls the user's code
through an ``ArrayAdapter`` that hands it arrays of the type it was given (torch and jax are
imported only when the inputs are theirs). Every array the user gives (``inputs``,
``context``) passes ``host_real`` first: real, finite numbers, or a ``ValueError`` naming
the argument, never a silent conversion (a dropped imaginary part, parsed text).

Notes
-----
Finite differences: Ridders' method, a Richardson tableau over shrinking steps. With
D(h) = (f(u + h e_j) - f(u - h e_j)) / (2h) = f'(u) + c_2 h^2 + c_4 h^4 + ... and steps
h_i = h_0 / 2^i,

.. math::

    A_{i,0} = D(h_i), \qquad
    A_{i,m} = \frac{4^m A_{i,m-1} - A_{i-1,m-1}}{4^m - 1}, \qquad
    e_{i,m} = \max(|A_{i,m} - A_{i,m-1}|, |A_{i,m} - A_{i-1,m-1}|) + r_i,

r_i = NOISE eps max(1, |f|, |f'| |u|) / h_i the round-off of D(h_i). Each Jacobian entry takes the
tableau value with the smallest e: the error bound is measured from successive estimates,
entry by entry, not assumed from a fixed step. A fixed step (e.g. eps^{1/5} |u|, 2e-3 near
|u| = 3) fails on steep, narrow-featured maps: a spline whose bins are narrower than the
step, or a kink the step straddles, gives one Richardson estimate far from f' whose own
difference understates the error; the shrinking steps reach a scale where the estimates
agree (a point at distance d from a kink is differentiated by steps below d).

Complex steps are not used: they are exact only for analytic maps, and the maps checked
here (splines, leaky ReLU, piecewise tails) are not.

Autodiff: where the inputs are torch or JAX arrays, or NumPy code written with
``autograd.numpy``, the framework's own Jacobian of the forward map is computed too
(``autodiff_jacobian``); the checks use it only where it agrees with the finite differences
within their measured bound (see ``refflow.testing.bijection``).

References
----------
1. C. J. F. Ridders. Accurate computation of F'(x) and F'(x) F''(x). Advances in
   Engineering Software 4(2), 1982.
2. W. H. Press et al. Numerical Recipes, 3rd ed., Cambridge, 2007, section 5.7.
3. L. F. Richardson. The deferred approach to the limit. Phil. Trans. R. Soc. A 226, 1927.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy

from refflow.backend import is_array, to_numpy

__all__ = ["ArrayAdapter", "ComplexValues", "is_torch", "is_jax", "host_real",
           "richardson_jacobian", "autodiff_jacobian"]

# a function evaluated in floating point is trusted to about NOISE * eps * max(1, |f|)
NOISE = 16.0
# a measured error estimate is inflated by this factor before it becomes a tolerance
SAFETY = 4.0
# Ridders' estimate, the smallest of many, is inflated more (measured: up to 3x short on
# steep spline flows against their autodiff Jacobians)
RIDDERS_SAFETY = 8.0
LEVELS = 20  # steps h_0, h_0 / 2, ..., h_0 / 2^19
ORDERS = 3  # Richardson columns beyond the plain central difference


def _framework(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def is_torch(x: Any) -> bool:
    """True for a torch tensor, decided without importing torch."""
    return _framework(x) == "torch"


def is_jax(x: Any) -> bool:
    """True for a JAX array (``jax.Array``), decided without importing jax."""
    return _framework(x) in ("jax", "jaxlib")


# what NumPy dtype kinds other than real numbers hold, for the refusal's message
_NOT_REAL = {"c": "complex numbers", "O": "Python objects", "U": "text", "S": "bytes",
             "M": "dates", "m": "time deltas", "V": "raw or structured records"}
_EXPECTED = "a NumPy array, a torch tensor, a JAX array or a nested list of real numbers"


def _type_name(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")


def _real_dtype(dtype: numpy.dtype) -> bool:
    """Bool, integers and floats; also the ml_dtypes floats JAX uses (bfloat16, float8),
    which NumPy files under kind "V" but which convert to float64 exactly."""
    if dtype.kind in "biuf":
        return True
    return dtype.kind == "V" and dtype.fields is None \
        and dtype.type.__module__.split(".")[0] == "ml_dtypes"


def _torch_host(name: str, x: Any) -> numpy.ndarray:
    import torch  # already imported: x is torch's

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected {_EXPECTED}, got an object of type "
                         f"{_type_name(x)}")
    if x.is_complex():
        raise ValueError(f"{name}: expected real numbers, got a torch tensor of dtype {x.dtype}")
    try:  # bfloat16, float8 and quantized tensors have no NumPy counterpart to check with
        torch.zeros(0, dtype=x.dtype).numpy()
    except Exception:
        raise ValueError(f"{name}: expected a torch tensor of a dtype NumPy has, e.g. float64 "
                         f"(x.double()), got {x.dtype}") from None
    try:  # sparse, meta or otherwise unreadable tensors
        return x.detach().cpu().resolve_conj().resolve_neg().numpy()
    except Exception as exc:
        raise ValueError(f"{name}: cannot copy the torch tensor ({x.dtype}, {x.layout}, "
                         f"{x.device}) to host NumPy: {exc}") from None


def host_real(name: str, x: Any) -> numpy.ndarray:
    """A host NumPy copy of the user's array ``x`` of real, finite numbers, in its own dtype.

    Accepted: NumPy arrays of bool, integer or float dtype; torch tensors and JAX arrays
    of such dtypes; arrays of the refflow backend (CuPy); nested lists, tuples and numbers,
    and objects NumPy converts through ``__array__`` (pandas), when NumPy reads them as
    real numbers. Anything else raises ``ValueError`` naming ``name`` and what was found:
    complex numbers (whose imaginary part a float copy would drop), objects, text, bytes,
    dates, records, a masked array with masked entries (their hidden values would be
    used), an object with no conversion to NumPy, NaN or infinity (no check is meaningful
    at such a row: a correct map would fail them).

    Examples
    --------
    >>> host_real("inputs", [[0.5, 2.0]]).shape
    (1, 2)
    >>> host_real("context", numpy.array([[0.5, 2.0 + 1j]]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: context: expected real numbers, got a NumPy array of dtype complex128 ...
    """
    if is_torch(x):
        host = _torch_host(name, x)
    else:
        of = "of dtype"
        if isinstance(x, numpy.ndarray):
            what = "a NumPy array"
        elif is_jax(x):
            what = "a JAX array"
        elif is_array(x):
            what = f"a {_type_name(x)} array"
        elif isinstance(x, (list, tuple, numbers.Number)) or any(
                hasattr(x, a) for a in ("__array__", "__array_interface__",
                                        "__array_struct__")):
            what, of = f"a {_type_name(x)}", "that NumPy reads as dtype"
        else:
            found = ", ".join(f"{a} {getattr(x, a)!r}" for a in ("shape", "dtype")
                              if hasattr(x, a))
            raise ValueError(f"{name}: expected {_EXPECTED}, got an object of type "
                             f"{_type_name(x)}" + (f" ({found})" if found else "")
                             + " with no conversion to NumPy (__array__)")
        if isinstance(x, numpy.ma.MaskedArray) and numpy.ma.is_masked(x):
            raise ValueError(f"{name}: got a masked array with {int(numpy.ma.count_masked(x))} "
                             f"masked entries; pass the values to check (x.filled(...))")
        try:
            host = to_numpy(x) if is_array(x) else numpy.asarray(x)
        except Exception as exc:  # ragged lists, arrays that refuse conversion
            raise ValueError(f"{name}: expected {_EXPECTED}, got {what} that cannot be "
                             f"converted: {exc}") from None
        host = numpy.asarray(host)  # a matrix or masked array as a plain ndarray
        if not _real_dtype(host.dtype):
            kind = _NOT_REAL.get(host.dtype.kind, "non-numbers")
            raise ValueError(f"{name}: expected real numbers, got {what} {of} {host.dtype} "
                             f"({kind})")
    values = host.astype(numpy.float64)
    if not numpy.all(numpy.isfinite(values)):
        bad = numpy.argwhere(~numpy.isfinite(values))
        raise ValueError(f"{name}: expected finite values, found {len(bad)} NaN or infinite "
                         f"entries (the first at index {tuple(int(i) for i in bad[0])})")
    return host


class ComplexValues(ValueError):
    """Values of the code under test with a nonzero imaginary part (``largest``: the largest
    absolute imaginary part, NaN if one is NaN)."""

    def __init__(self, largest: float):
        super().__init__(f"complex values, largest |imaginary part| {largest:.3g}")
        self.largest = largest


class ArrayAdapter:
    """Moves host float64 arrays to the user's array type (NumPy, torch or JAX) and back.

    The user's arrays keep the dtype of the inputs the check was given (JAX: the dtype JAX
    actually uses, float32 unless x64 is enabled); ``eps`` is the machine epsilon of the
    coarsest dtype of the inputs and the maps' outputs seen so far, and ``ld_eps`` that of
    the log-dets too (a library may return a float32 log-det with float64 outputs, which
    must not coarsen the finite-difference steps of the map).
    """

    def __init__(self, example: Any):
        self.kind = {"torch": "torch", "jax": "jax", "jaxlib": "jax"}.get(_framework(example),
                                                                          "numpy")
        self.torch = self.kind == "torch"
        if self.torch:
            import torch

            self._torch = torch
            self.device = example.device
            self.np_dtype = numpy.dtype(str(example.dtype).replace("torch.", ""))
        elif self.kind == "jax":
            import jax.numpy as jnp

            self._jnp = jnp
            self.np_dtype = numpy.dtype(example.dtype)
        else:
            self.np_dtype = numpy.dtype(to_numpy(example).dtype)
        if self.np_dtype.kind != "f":
            self.np_dtype = numpy.dtype(numpy.float64)
        if self.kind == "jax":  # float64 only with jax_enable_x64; else JAX keeps float32
            with warnings.catch_warnings():  # the truncation warned of is what is asked here
                warnings.simplefilter("ignore", UserWarning)
                self.np_dtype = numpy.dtype(self._jnp.zeros(0, dtype=self.np_dtype).dtype)
        self.eps = float(numpy.finfo(self.np_dtype).eps)
        self.ld_eps = self.eps

    def cast(self, a: numpy.ndarray) -> numpy.ndarray:
        """``a`` rounded to the user's dtype, back in float64 (the point actually evaluated)."""
        return a.astype(self.np_dtype).astype(numpy.float64)

    def to_user(self, a: numpy.ndarray) -> Any:
        a = numpy.ascontiguousarray(a, dtype=self.np_dtype)
        if self.torch:
            return self._torch.from_numpy(a).to(self.device)
        if self.kind == "jax":
            return self._jnp.asarray(a)
        return a

    def to_host(self, v: Any, log_det: bool = False) -> numpy.ndarray:
        """``v`` as a host float64 array; ``log_det``: ``v`` is a log-det (see ``ld_eps``)."""
        if is_torch(v):
            v = v.detach().cpu().numpy()
        elif is_jax(v):
            v = numpy.asarray(v)
        a = to_numpy(v)
        if a.dtype.kind == "c":
            # a real map's values are real: a nonzero imaginary part is a finding about the
            # code under test (dropping it, as numpy.asarray does, would hide it); zero
            # imaginary parts are a library's choice of dtype, and are read as real
            largest = float(numpy.max(numpy.abs(a.imag), initial=0.0))
            if largest != 0.0:
                raise ComplexValues(largest)
            a = a.real
        if a.dtype.kind == "f":
            eps = float(numpy.finfo(a.dtype).eps)
            self.ld_eps = max(self.ld_eps, eps)
            if not log_det:
                self.eps = max(self.eps, eps)
        return numpy.asarray(a, dtype=numpy.float64)


def richardson_jacobian(
    g: Callable[[numpy.ndarray], numpy.ndarray],
    u: numpy.ndarray,
    adapter: ArrayAdapter,
    rel_step: float | None = None,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per-row Jacobians of ``g`` at ``u`` (N, D) and an entry-wise error bound, (N, D, D) each.

    Ridders' method (module notes): ``g`` maps host (M, D) arrays to host (M, D) arrays row
    by row and is called once per column j, on the 2 LEVELS N stacked points u +- h_i e_j.
    ``rel_step`` is the largest relative step h_0 / max(1, |u_j|); default
    min(0.1, 8 eps^(1/5)) (6e-3 in float64, 0.1 in float32), the smallest h_0 / 2^19.
    """
    n, dim = u.shape
    eps = adapter.eps
    if rel_step is None:
        rel_step = min(0.1, 8.0 * eps ** 0.2)
    h0 = rel_step * numpy.maximum(1.0, numpy.abs(u))  # (N, D)
    J = numpy.empty((n, dim, dim))
    E = numpy.empty((n, dim, dim))
    for j in range(dim):
        points = []
        for i in range(LEVELS):
            for sign in (1.0, -1.0):
                p = u.copy()
                p[:, j] = p[:, j] + sign * h0[:, j] / 2.0 ** i
                points.append(adapter.cast(p))
        out = g(numpy.concatenate(points, axis=0)).reshape(LEVELS, 2, n, -1)
        steps = numpy.stack([points[2 * i][:, j] - points[2 * i + 1][:, j]
                             for i in range(LEVELS)])[:, :, None]  # actual 2 h_i, (L, N, 1)
        column = (out[:, 0] - out[:, 1]) / steps
        # g is computed to about NOISE eps max(1, |g|, |dg/du_j| |u_j|): a steep map
        # amplifies the rounding of its own input
        slope = numpy.median(numpy.abs(column), axis=0) * numpy.maximum(1.0, numpy.abs(
            u[:, j]))[:, None]
        scale = numpy.maximum(numpy.maximum(1.0, numpy.max(numpy.abs(out), axis=(0, 1))), slope)
        rounding = 2.0 * NOISE * eps * scale / steps  # (L, N, D_out)
        best = column[0].copy()
        best_err = numpy.full(best.shape, numpy.inf)
        for m in range(1, ORDERS + 1):
            fac = 4.0 ** m
            nxt = (fac * column[1:] - column[:-1]) / (fac - 1.0)
            err = numpy.maximum(numpy.abs(nxt - column[1:]), numpy.abs(nxt - column[:-1]))
            # and the previous estimate of the same order: one accidental agreement of two
            # successive estimates must not make a small error bound
            err[1:] = numpy.maximum(err[1:], numpy.abs(nxt[1:] - nxt[:-1]))
            err[0] = numpy.inf
            err = err + 3.0 * rounding[m:]  # the extrapolation's weights sum to <= 3
            k = numpy.argmin(err, axis=0)
            e = numpy.take_along_axis(err, k[None], 0)[0]
            take = e < best_err
            best = numpy.where(take, numpy.take_along_axis(nxt, k[None], 0)[0], best)
            best_err = numpy.where(take, e, best_err)
            column = nxt
        J[:, :, j] = best
        E[:, :, j] = RIDDERS_SAFETY * numpy.maximum(best_err, _kink(out, points, j, rounding))
    return J, E


def _kink(out, points, j, rounding) -> numpy.ndarray:
    """Half the jump between the right and the left one-sided slopes where they differ by more
    than their own error, else 0: at a kink (e.g. a leaky ReLU at exactly 0) every central
    difference is the same average of the two slopes, which no step change reveals."""
    def secants(side):
        u = numpy.stack([points[2 * i + side][:, j] for i in range(LEVELS)])[:, :, None]
        return (out[1:, side] - out[:-1, side]) / (u[1:] - u[:-1])  # (L - 1, N, D_out)

    right, left = secants(0), secants(1)
    noise = numpy.abs(right[1:] - right[:-1]) + numpy.abs(left[1:] - left[:-1]) + \
        4.0 * rounding[1:-1]
    k = numpy.argmin(noise, axis=0)[None]
    jump = numpy.abs(numpy.take_along_axis(right[:-1] - left[:-1], k, 0)[0])
    return numpy.where(jump > 4.0 * numpy.take_along_axis(noise, k, 0)[0], 0.5 * jump, 0.0)


def autodiff_jacobian(
    fn: Callable, u: numpy.ndarray, adapter: ArrayAdapter, event_shape: tuple
) -> numpy.ndarray | None:
    """Per-row Jacobians (N, D, D) of ``fn`` (user arrays -> outputs) by the inputs' framework.

    torch tensors: ``torch.func.jacrev`` (``torch.autograd.grad`` row sums where functorch
    refuses the code); JAX arrays: ``jax.jacfwd``; NumPy: ``autograd.jacobian``, which works
    only for code written with ``autograd.numpy``. The Jacobian of the sum over rows is taken,
    so that one reverse pass per output coordinate serves all rows (rows are independent:
    ``batch_independence`` checks it). Returns None when the framework cannot differentiate
    the code (the checks then rest on finite differences alone).
    """
    n, dim = u.shape

    def summed(v):
        return fn(v).reshape(n, -1).sum(0)

    v = adapter.to_user(u.reshape((n,) + tuple(event_shape)))
    try:
        if adapter.kind == "torch":
            jac = _torch_jacobian(adapter._torch, summed, v)
        elif adapter.kind == "jax":
            import jax

            jac = jax.jacfwd(summed)(v)
        else:
            import autograd

            with warnings.catch_warnings():
                # plain NumPy code is invisible to autograd, which then warns and returns
                # zeros: that is "cannot differentiate", not a zero Jacobian
                warnings.simplefilter("error", UserWarning)
                jac = autograd.jacobian(summed)(v)
        jac = adapter.to_host(jac)
    except Exception:  # the code is not differentiable by its framework: FD only
        return None
    if jac.shape[0] * n * dim != jac.size or jac.shape[0] != dim \
            or not numpy.all(numpy.isfinite(jac)):
        return None
    return numpy.transpose(jac.reshape(dim, n, dim), (1, 0, 2))


def _torch_jacobian(torch, summed, v):
    try:
        return torch.func.jacrev(summed)(v)
    except Exception:  # functorch refuses in-place updates, .item() and some custom ops
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            out = summed(v)
            rows = [torch.autograd.grad(out[i], v, retain_graph=True)[0]
                    for i in range(out.shape[0])]
        return torch.stack(rows)
