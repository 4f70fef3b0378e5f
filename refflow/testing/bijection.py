r"""check_bijection: verify any bijection's inverse and log-determinant numerically.

The function under test is treated as a black box: it may be a refflow bijection, NumPy
code, or a PyTorch transform from another library. Every reference value is computed
here, on host float64 NumPy, from evaluations of the callables alone.

Notes
-----
Lecture: "Flow-based Models", the change of variables and the inverse function theorem:

.. math::

    z = f^{-1}(f(z)), \qquad
    \log|\det J_{f^{-1}}(f(z))| = -\log|\det J_f(z)|, \qquad
    J_{f^{-1}}(f(z))\, J_f(z) = I.

Round-trip tests alone miss log-det bugs (a sign error, a missing H*W factor, a wrong
branch of a piecewise map); each is caught here by comparing ``log_det`` with log|det| of
a Jacobian per input row: Ridders' finite differences with a measured error bound, and the
framework's own autodiff Jacobian where it agrees with them. Further checks catch a map
that folds (det J changes sign), rows that fail only alone or among tail rows, results
that depend on the order of earlier calls, and exceptions (a failed check naming the
exception and the row). Cost: 2 LEVELS D calls of ``forward`` (and of ``inverse``) on N
rows each, one call per row alone, plus O(N D^3) for the determinants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy

from refflow.testing.conditional import with_context
from refflow.testing.differences import (
    ArrayAdapter,
    ComplexValues,
    autodiff_jacobian,
    host_real,
    is_jax,
    is_torch,
    richardson_jacobian,
)
from refflow.testing.report import CHECKS, CheckResult, Report

__all__ = ["check_bijection", "assert_bijection"]

BATCH_ROWS = 64  # rows re-evaluated alone by batch_independence (all of them up to 64)
CHUNK = 4  # isolation: tail/edge rows also evaluated in chunks of this many
TAIL = 2.0  # isolation: a row with some |z_j| or |x_j| above this is a tail row
DECIDABLE = 0.05  # a log-det or J_inv J_f - I tolerance above this decides nothing
AUTODIFF_NOISE = 512.0  # autodiff Jacobian entries are trusted to this many eps max|J|
ILL_CONDITIONED = "condition number kappa above 1 / sqrt(eps): round-off decides nothing"
MISSHAPEN = "shape"  # how a log-det of N values that does not broadcast to (N,) is described
STRUCTURES = ("diagonal", "lower", "upper")


class _Failed(Exception):
    """A check could not be computed; the message says why."""


def _host_rng(rng: Any) -> numpy.random.Generator:
    if rng is None or isinstance(rng, (int, numpy.integer)):
        return numpy.random.default_rng(0 if rng is None else int(rng))
    if isinstance(rng, numpy.random.Generator):
        return rng
    host = getattr(rng, "host", None)  # refflow.backend.Generator
    if isinstance(host, numpy.random.Generator):
        return host
    raise ValueError(f"rng: expected None, an int seed or a Generator, got {type(rng).__name__}")


def _draw(dim: Any, n: Any, rng: Any) -> numpy.ndarray:
    if isinstance(dim, bool) or not isinstance(dim, (int, numpy.integer)) or dim < 1:
        raise ValueError(f"dim: expected a positive int (or pass inputs), got {dim!r}")
    if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    z = _host_rng(rng).standard_normal((int(n), int(dim)))
    # every fourth row three times wider, to reach tails and outer branches
    return z * numpy.where(numpy.arange(int(n)) % 4 == 3, 3.0, 1.0)[:, None]


def _tolerances(tol: Any) -> dict:
    if tol is None:
        return {}
    if isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0:
        return {name: float(tol) for name in CHECKS}
    if isinstance(tol, dict):
        unknown = sorted(set(tol) - set(CHECKS))
        if unknown:
            raise ValueError(f"tol: unknown check names {unknown}; known: {list(CHECKS)}")
        return {k: float(v) for k, v in tol.items()}
    raise ValueError(f"tol: expected None, a positive float or a dict name -> float, got {tol!r}")


def _mask(structure: Any, dim: int) -> numpy.ndarray | None:
    if structure is None:
        return None
    if isinstance(structure, str):
        if structure not in STRUCTURES:
            raise ValueError(f"structure: expected one of {STRUCTURES} or a (D, D) boolean "
                             f"mask, got {structure!r}")
        full = numpy.ones((dim, dim), dtype=bool)
        return {"diagonal": numpy.eye(dim, dtype=bool), "lower": numpy.tril(full),
                "upper": numpy.triu(full)}[structure]
    mask = numpy.asarray(structure, dtype=bool)
    if mask.shape != (dim, dim):
        raise ValueError(f"structure: expected a ({dim}, {dim}) mask, got shape {mask.shape}")
    return mask


def _rowmax(a: numpy.ndarray) -> numpy.ndarray:
    return numpy.max(numpy.abs(a.reshape(a.shape[0], -1)), axis=1)


class _Session:
    """The callables, the inputs and the results computed so far, in host float64."""

    def __init__(self, forward, inverse, log_det, z, event_shape, adapter, tols):
        self.forward, self.inverse, self.log_det = forward, inverse, log_det
        self.z, self.event_shape, self.adapter, self.tols = z, event_shape, adapter, tols
        self.n, self.dim = z.shape
        self.out_shape = event_shape
        self.conventions: dict = {}  # direction -> how its log-det was brought to (N,)

    def user(self, u: numpy.ndarray, shape: tuple) -> Any:
        return self.adapter.to_user(u.reshape((u.shape[0],) + shape))

    def output_only(self, direction: str) -> Callable:
        """The user's map of one direction, user arrays -> outputs (for autodiff)."""
        fn = self.forward if direction == "forward" else self.inverse
        return fn if self.log_det is not None else (lambda v: fn(v)[0])

    def call(self, direction: str, u: numpy.ndarray):
        """One direction on the flat host rows u, as (output (M, D), log_det (M,)) in float64."""
        forward = direction == "forward"
        shape = self.event_shape if forward else self.out_shape
        v = self.user(u, shape)
        fn = self.forward if forward else self.inverse
        if self.log_det is not None:
            out = fn(v)
            ld = self.log_det(v, out) if forward else self.log_det(out, v)
            ld = ld if forward else -ld
        else:
            result = fn(v)
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise ValueError(f"{direction}: expected a callable returning (output, log_det)"
                                 f", got {type(result).__name__} (with log_det=..., return the "
                                 f"output alone)")
            out, ld = result
        try:
            out, ld = self.adapter.to_host(out), self.adapter.to_host(ld, log_det=True)
        except ComplexValues as exc:
            raise _Failed(f"{direction} returned {exc}: the output and log-det of a real "
                          f"map are real") from None
        if out.size != u.size:
            raise _Failed(f"{direction} returned output {out.shape} for input "
                          f"{(u.shape[0],) + shape}")
        rows, how = _log_det_rows(ld, u.shape[0], tuple(out.shape[1:]))
        if rows is None:
            raise _Failed(f"{direction} returned log_det {ld.shape} for input "
                          f"{(u.shape[0],) + shape}")
        if how:
            self.conventions.setdefault(direction, how)
        return out.reshape(u.shape), rows

    def fwd(self, u):
        return self.call("forward", u)

    def inv(self, u):
        return self.call("inverse", u)

    def result(self, name, err, tol, detail, rows=None, undecided=None, why="") -> CheckResult:
        """The row with the largest err / tol; NaN errors count as failures.

        Rows flagged ``undecided`` never fail or pass: with no decided failure the check is
        inconclusive, and ``why`` (with the rows) becomes its detail.
        """
        err = numpy.where(numpy.isnan(err), numpy.inf, numpy.asarray(err, dtype=float))
        user_tol = name in self.tols
        tol = numpy.broadcast_to(self.tols.get(name, tol), err.shape).astype(float)
        rows = numpy.arange(err.size) if rows is None else numpy.asarray(rows)
        undecided = numpy.zeros(err.shape, bool) if undecided is None or user_tol \
            else numpy.asarray(undecided, bool)
        bad = ~(numpy.isfinite(err) & (err <= tol)) & ~undecided
        ratio = numpy.where(bad, numpy.inf, err / numpy.maximum(tol, 1e-300))
        ratio = numpy.where(undecided & ~bad.any(), numpy.inf, numpy.where(undecided, -1, ratio))
        k = int(numpy.argmax(ratio))
        row = int(rows[k])
        text = detail(k, row) if callable(detail) else detail
        if not bad.any() and undecided.any():
            return CheckResult(name, None, float(err[k]), float(tol[k]), row, self.z[row].copy(),
                               f"{why or 'undecided rows ' + _rows_text(undecided)}; {text}",
                               inconclusive=True)
        return CheckResult(name, not bool(bad.any()), float(err[k]), float(tol[k]), row,
                           self.z[row].copy(), text)


def _log_det_rows(ld: numpy.ndarray, m: int, event: tuple):
    """A log-det brought to one value per row (M,), and how; (None, "") if it cannot be.

    Accepted: (M,); one value per coordinate (M, *event), summed (element-wise maps); a
    scalar, broadcast; one value per coordinate without a batch axis, summed and broadcast.
    """
    size = int(numpy.prod(event, dtype=int))
    if ld.shape == (m,):
        return ld, ""
    if ld.shape in ((m,) + event, (m, size)):
        return ld.reshape(m, -1).sum(1), "one per coordinate (N, ...), summed over the event"
    if ld.ndim == 0:
        return numpy.full(m, float(ld)), "a scalar, broadcast to (N,)"
    if ld.shape in (event, (size,)):
        return numpy.full(m, float(ld.sum())), \
            "one per coordinate without a batch axis, summed and broadcast to (N,)"
    if ld.size == m:  # e.g. (N, 1): does not broadcast to (N,); checked, but shapes fails
        return ld.reshape(-1), f"{MISSHAPEN} {ld.shape}, expected (N,) (reshape it to (N,))"
    return None, ""


def _rows_text(mask: numpy.ndarray) -> str:
    rows = [int(r) for r in numpy.flatnonzero(mask)]
    return str(rows[:8])[:-1] + (", ...]" if len(rows) > 8 else "]")


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, detail=why)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _guard(name: str, compute: Callable[[], CheckResult]) -> CheckResult:
    try:
        return compute()
    except _Failed as exc:
        return CheckResult(name, False, detail=str(exc))
    except Exception as exc:  # foreign code may raise anything; the report names it
        return CheckResult(name, False, detail=f"raised {_describe(exc)}")


def check_bijection(
    forward: Any,
    inverse: Callable | None = None,
    *,
    inputs: Any = None,
    dim: int | None = None,
    n: int = 16,
    rng: Any = None,
    tol: float | dict | None = None,
    structure: Any = None,
    density: Any = None,
    domain: Any = None,
    step: float | None = None,
    log_det: Callable | None = None,
    autodiff: bool = True,
    context: Any = None,
) -> Report:
    r"""Check a bijection x = f(z) numerically: inverse, log-det, Jacobian identities.

    Parameters
    ----------
    forward : callable z -> (x, log_det), or an object with ``forward`` and ``inverse``
        methods (a refflow bijection), in which case ``inverse`` must be None.
        ``log_det`` = log|det df/dz|, one value per row, shape (N,); a log-det that
        broadcasts to it is accepted and the report says so (a scalar; one value per
        coordinate, (N, D) or (D,), summed, as element-wise maps return it).
    inverse : callable x -> (z, log_det) with log_det = log|det df^{-1}/dx|, optional.
        Without it only the forward checks run.
    inputs : array (N, D) or (N, *event) of real, finite numbers, optional
        Points z to test at: a NumPy array of any real dtype, a torch tensor or a JAX
        array. With torch tensors or JAX arrays the callables receive and must return
        arrays of that kind, dtype and device (torch or jax is imported only then);
        otherwise NumPy arrays. As a convenience, nested lists of numbers, CuPy arrays and
        objects with ``__array__`` are converted to NumPy. Integer and boolean inputs are
        converted to float64. JAX keeps float32 unless x64 is enabled: the tolerances
        follow the dtype actually used. Give float64 for the tightest ones. Refused with
        a ``ValueError`` naming ``inputs`` and what was found: complex numbers (a float
        copy would drop the imaginary part), text, bytes, Python objects, dates, records,
        a masked array with masked entries, NaN or infinity (a correct map would fail at
        such a row), a torch dtype NumPy lacks (bfloat16: pass ``x.double()``) and any
        object that is neither an array nor convertible to one.
    dim : int, optional
        Without ``inputs``: draw ``n`` rows of dimension ``dim`` from N(0, I), every
        fourth row scaled by 3 to reach tails.
    n : int
        Number of rows drawn when ``inputs`` is None.
    rng : None, int seed, or a Generator (NumPy or refflow); default seed 0.
    tol : None (tolerances derived from measured error bounds and the dtype), a float (one
        absolute tolerance for every check) or a dict check name -> tolerance.
    structure : None, "diagonal", "lower", "upper" or a (D, D) boolean mask of the entries
        of J_f allowed to be non-zero (J[i, j] = dx_i / dz_j).
    density : None, "normal", or a callable log p_z(z) -> (N,): checks that
        p(x) = p_z(f^{-1}(x)) |det J_{f^{-1}}(x)| integrates to 1 (D = 1 or 2 only).
    domain : (low, high) arrays of length D bounding the quadrature box in x; by default
        the bounding box of f([-8, 8]^D).
    step : largest relative finite-difference step; default min(0.1, 8 eps^(1/5)).
    log_det : callable (z, x) -> log|det J_f(z)|, optional: the log-det computed by a
        call of its own, as zuko and pyro do (``t.log_abs_det_jacobian(z, x)``). Then
        ``forward`` returns x alone, ``inverse`` returns z alone, the inverse log-det is
        -log_det(z, x), and ``call_order`` calls it in different orders.
    autodiff : use the inputs' framework (torch, JAX, autograd) for Jacobians too, where it
        can differentiate the callables and agrees with finite differences.
    context : (N, C) or (C,) array, for a conditional bijection x = f(z; c), of real,
        finite numbers under the rules of ``inputs`` (a refusal names ``context``), passed
        to the callables as arrays of the inputs' kind: they then take ``(z, context)``
        (``(x, context)``; a ``log_det`` takes ``(z, x, context)``) and every check runs
        at each row's fixed context, on the augmented map (z, c) -> (f(z; c), c)
        (``refflow.testing.conditional``): its log-det is f's in z; the inverse function
        theorem checks the derivatives in c by finite differences; ``batch_independence``
        and ``isolation`` evaluate a row with its context alone and among other contexts.
        A reported ``input`` row is z followed by its context. ``density`` is not used
        with a context.

    Returns
    -------
    Report
        ``report.ok``, ``report.failed`` and ``report.inconclusive`` (names from
        ``refflow.testing.CHECKS``), one ``CheckResult`` per check with its worst error,
        tolerance and input row; ``print(report)`` shows the table.

    Notes
    -----
    Lecture: "Flow-based Models", change of variables and inverse function theorem.

    .. math::

        x = f(z), \quad z = f^{-1}(x), \quad
        \log|\det J_{f^{-1}}(x)| = -\log|\det J_f(z)|, \quad
        J_{f^{-1}}(f(z)) J_f(z) = I

    The Jacobians: Ridders' finite differences (a Richardson tableau over shrinking steps,
    each entry with a measured error bound E), and, where the inputs' framework can
    differentiate the callables, its own Jacobian. A row takes the autodiff Jacobian (error
    512 D eps max|J|) only where it agrees with the finite differences within E; where the
    two disagree, a row fails only if it fails against both, and is otherwise
    inconclusive, so that no verdict rests on the code under test alone. A log-det or
    inverse-function-theorem tolerance above ``DECIDABLE`` (0.05) decides nothing: such
    rows are inconclusive, never ok.

    Tolerances, with eps the machine epsilon of the coarsest dtype seen and kappa =
    max(1, ||J_f||_2, ||J_f^{-1}||_2) per row: round trips sqrt(eps) max(1, |z|, |x|)
    (1 + 1e4 sqrt(eps) kappa); log_det ||E||_F / sigma_min(J) + 64 D eps max(1, |ld|);
    row independence, statelessness and call order 1e4 eps kappa max(1, |x|, |ld|). The
    finite-difference checks assume rows are independent: read them only when
    ``batch_independence`` passes. Cost: O(D) batched calls per direction, one call per
    row alone, O(N D^3) host work.

    References
    ----------
    1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
       JMLR 22(57), 2021.
    2. C. J. F. Ridders. Accurate computation of F'(x) and F'(x) F''(x). Advances in
       Engineering Software 4(2), 1982.

    Examples
    --------
    >>> import numpy
    >>> fwd = lambda z: (2.0 * z + 1.0, numpy.full(len(z), 2 * numpy.log(2.0)))
    >>> inv = lambda x: ((x - 1.0) / 2.0, numpy.full(len(x), -2 * numpy.log(2.0)))
    >>> check_bijection(fwd, inv, dim=2).ok
    True
    >>> bad = lambda z: (2.0 * z + 1.0, numpy.full(len(z), numpy.log(2.0)))  # one log 2 lost
    >>> check_bijection(bad, inv, dim=2).failed
    ['log_det', 'inverse_log_det']
    """
    if hasattr(forward, "forward") and hasattr(forward, "inverse") and not callable(inverse):
        if inverse is not None:
            raise ValueError("inverse: expected None when forward is a bijection object")
        forward, inverse = forward.forward, forward.inverse
    if not callable(forward):
        raise ValueError(f"forward: expected a callable z -> (x, log_det), got "
                         f"{type(forward).__name__}")
    if inverse is not None and not callable(inverse):
        raise ValueError(f"inverse: expected a callable x -> (z, log_det) or None, got "
                         f"{type(inverse).__name__}")
    if log_det is not None and not callable(log_det):
        raise ValueError(f"log_det: expected a callable (z, x) -> log|det J_f(z)| or None, "
                         f"got {type(log_det).__name__}")
    if inputs is None:
        inputs = _draw(dim, n, rng)
    host = host_real("inputs", inputs)
    if not (is_torch(inputs) or is_jax(inputs)):
        inputs = host  # lists, CuPy arrays: the callables receive NumPy arrays, as documented
    if host.ndim < 2 or host.shape[0] < 1 or host.size == 0:
        raise ValueError(f"inputs: expected an (N, D) or (N, *event) array with N >= 1, "
                         f"got shape {host.shape}")
    context_dim = 0
    if context is not None:
        if density is not None:
            raise ValueError("density: the normalization check runs without a context")
        z_dim = int(numpy.prod(host.shape[1:]))
        forward, inverse, log_det, augmented, structure = with_context(
            forward, inverse, log_det, inputs, context, _mask(structure, z_dim))
        context_dim = int(numpy.prod(numpy.shape(augmented))) // len(augmented) - z_dim
        inputs = augmented
    adapter = ArrayAdapter(inputs)
    host = adapter.to_host(inputs)
    event_shape = tuple(host.shape[1:])
    z = adapter.cast(host.reshape(host.shape[0], -1))
    s = _Session(forward, inverse, log_det, z, event_shape, adapter, _tolerances(tol))
    mask = _mask(structure, s.dim)
    checks = _run_checks(s, mask, density, domain, step, bool(autodiff))
    meta = {"N": s.n, "D": s.dim - context_dim, "dtype": numpy.dtype(adapter.np_dtype).name,
            "arrays": adapter.kind}
    if context_dim:
        meta["C"] = context_dim
    meta.update({f"{d} log_det": how for d, how in s.conventions.items()})
    order = list(CHECKS)
    checks.sort(key=lambda c: order.index(c.name))
    return Report(tuple(checks), "check_bijection", meta)


def _raised(s: _Session, direction: str, u: numpy.ndarray, exc: Exception) -> CheckResult:
    """The exceptions check's failure: the text, and the first row that raises alone."""
    text = f"{direction} on the batch raised {_describe(exc)}"
    for i in range(min(len(u), BATCH_ROWS)):
        try:
            s.call(direction, u[i:i + 1])
        except Exception as alone:  # the row to reproduce it with
            return CheckResult("exceptions", False, row=i, input=s.z[i].copy(),
                               detail=f"{text}; row {i} alone raises {_describe(alone)}")
    return CheckResult("exceptions", False,
                       detail=f"{text}; no row raises alone: only the whole batch does")


def _run_checks(s: _Session, mask, density, domain, step, autodiff) -> list:
    checks = []
    try:
        x, ld = s.fwd(s.z)
    except ValueError as exc:  # a callable with the wrong return type: a usage error
        if str(exc).startswith("forward: expected"):
            raise
        x = exc
    except _Failed as exc:
        return [CheckResult("shapes", False, detail=str(exc)), _skip("exceptions", "-")] + [
            _skip(name, "needs correct shapes") for name in CHECKS
            if name not in ("shapes", "exceptions", "gradients")]
    except Exception as exc:  # foreign code may raise anything: a failed check, not a crash
        x = exc
    if isinstance(x, Exception):
        return [_raised(s, "forward", s.z, x)] + [
            _skip(name, "forward raised (see exceptions)") for name in CHECKS
            if name not in ("exceptions", "gradients")]
    how = s.conventions.get("forward", "")
    checks.append(CheckResult("shapes", not how.startswith(MISSHAPEN),
                              detail=f"output {(s.n,) + s.event_shape}, log_det "
                                     f"{how or '(N,)'}"))
    st: dict = {}
    raised = None
    if s.inverse is not None:
        try:
            z_back, ld_inv = s.inv(x)
            st.update(z_back=z_back, ld_inv=ld_inv)
        except Exception as exc:  # reported by the exceptions check
            raised = _raised(s, "inverse", x, exc)
    inverse_error = raised is not None
    checks.append(raised or CheckResult("exceptions", True, detail="forward" + (
        " and inverse" if s.inverse else "") + " returned on the batch"))
    checks.append(_finite(s, x, ld, st))

    def need_inverse(name, compute):
        if s.inverse is None:
            return _skip(name, "no inverse given")
        if inverse_error:
            return _skip(name, "inverse raised (see exceptions)")
        return _guard(name, compute)

    # The rows themselves returned (the exceptions check); a raise at the finite-difference
    # probes around them, e.g. a step leaving an open image such as tanh's (-1, 1)^D, says
    # nothing about the map at the rows: the checks that need that Jacobian are inconclusive.
    jac_error = {}
    for key, direction, at in (("jf", "forward", s.z), ("jg", "inverse", x)):
        if key == "jg" and (s.inverse is None or inverse_error):
            continue
        try:
            st[key] = _Jacobian(s, direction, at, step, autodiff)
        except Exception as exc:
            jac_error[key] = (f"evaluating {direction} near the rows for the Jacobian raised "
                              f"{_describe(exc)}")
    kappa = _conditioning(st)

    def need_jacobian(name, compute, inverse_too=False):
        errors = [jac_error[k] for k in ("jf", "jg")[:1 + inverse_too] if k in jac_error]
        if errors:
            return CheckResult(name, None, detail="; ".join(errors), inconclusive=True)
        if inverse_too:
            return need_inverse(name, compute)
        return _guard(name, compute)

    checks.append(need_inverse("round_trip", lambda: _round_trip(s, x, st, kappa)))
    checks.append(need_jacobian("log_det", lambda: _log_det(s, ld, st)))
    checks.append(need_inverse("inverse_log_det", lambda: _inverse_log_det(s, ld, st)))
    checks.append(need_jacobian("inverse_function_theorem", lambda: _ift(s, st), True))
    checks.append(need_jacobian("orientation", lambda: _orientation(s, st)))
    refs = {"f": (x, ld), "g": (st.get("z_back"), st.get("ld_inv")), "z": s.z, "x": x}
    checks.append(_guard("batch_independence", lambda: _batch(s, refs, kappa)))
    checks.append(_guard("isolation", lambda: _isolation(s, refs, kappa, st)))
    checks.append(_guard("stateless", lambda: _stateless(s, refs, kappa)))
    checks.append(_guard("call_order", lambda: _call_order(s, refs, kappa)))
    if mask is None:
        checks.append(_skip("structure", "structure=None"))
    else:
        checks.append(need_jacobian("structure", lambda: _structure(s, mask, st)))
    if density is None:
        checks.append(_skip("normalization", "density=None"))
    elif s.dim > 2:
        checks.append(_skip("normalization", f"quadrature needs D <= 2, got D = {s.dim}"))
    else:
        checks.append(need_inverse("normalization",
                                   lambda: _normalization(s, density, domain)))
    return checks


class _Jacobian:
    """One direction's per-row Jacobians: finite differences, and autodiff where it agrees.

    ``J``, ``E``: the reference Jacobian and its entry-wise error bound, per row the autodiff
    one where it agrees with the finite differences within their bound (``agree``), else
    the finite-difference one; ``fd``, ``ad``: the (J, E) pairs of each method (``ad`` None
    without autodiff).
    """

    def __init__(self, s: _Session, direction: str, u: numpy.ndarray, step, autodiff: bool):
        shape = s.event_shape if direction == "forward" else s.out_shape
        self.fd = richardson_jacobian(lambda v: s.call(direction, v)[0], u, s.adapter, step)
        J_ad = autodiff_jacobian(s.output_only(direction), u, s.adapter, shape) \
            if autodiff else None
        self.ad = None
        self.agree = numpy.zeros(len(u), bool)
        self.J, self.E = self.fd
        self.source = "finite differences"
        if J_ad is None:
            return
        eps = s.adapter.eps
        top = numpy.maximum(1.0, numpy.max(numpy.abs(J_ad), axis=(1, 2)))[:, None, None]
        # autodiff is exact for the computed program up to its own rounding (measured:
        # ~100 eps max|J| on spline couplings)
        E_ad = numpy.broadcast_to(AUTODIFF_NOISE * s.dim * eps * top, J_ad.shape)
        self.ad = (J_ad, E_ad)
        self.agree = numpy.all(numpy.abs(J_ad - self.fd[0]) <= self.fd[1] + E_ad, axis=(1, 2))
        pick = self.agree[:, None, None]
        self.J = numpy.where(pick, J_ad, self.fd[0])
        self.E = numpy.where(pick, E_ad, self.fd[1])
        self.source = f"{s.adapter.kind} autodiff confirmed by finite differences on " \
                      f"{int(self.agree.sum())}/{len(u)} rows"


def _conditioning(st) -> numpy.ndarray | float:
    """kappa = max(1, ||J_f||_2, ||J_f^-1||_2) per row: how much the map amplifies rounding."""
    if "jf" not in st:
        return 1.0
    sv = numpy.linalg.svd(st["jf"].J, compute_uv=False)
    with numpy.errstate(divide="ignore"):
        return numpy.maximum(1.0, numpy.maximum(sv[:, 0], 1.0 / sv[:, -1]))


def _ill_conditioned(s, kappa, n) -> numpy.ndarray:
    """Rows whose kappa exceeds 1 / sqrt(eps): half the digits may go to amplified round-off,
    so round-off tolerances scaled by kappa would pass almost anything."""
    return numpy.broadcast_to(kappa > 1.0 / math.sqrt(s.adapter.eps), (n,))


def _decide(s, name, evaluate, jacobians, detail):
    """Run ``evaluate(Js, Es) -> (err, tol)`` on the reference Jacobians and decide per row.

    Rows where autodiff disagrees with finite differences are evaluated against both; they
    fail only if both fail, and are inconclusive otherwise. Rows whose tolerance exceeds
    DECIDABLE are inconclusive.
    """
    err, tol = evaluate([j.J for j in jacobians], [j.E for j in jacobians])
    wide = tol > DECIDABLE
    undecided = wide
    split = numpy.zeros(len(err), bool)
    if all(j.ad is not None for j in jacobians):
        agree = numpy.logical_and.reduce([j.agree for j in jacobians])
        err_fd, tol_fd = evaluate([j.fd[0] for j in jacobians], [j.fd[1] for j in jacobians])
        err_ad, tol_ad = evaluate([j.ad[0] for j in jacobians], [j.ad[1] for j in jacobians])
        both_fail = ~(err_fd <= tol_fd) & ~(err_ad <= tol_ad) & (tol_fd <= DECIDABLE)
        split = ~agree & ~both_fail
        undecided = numpy.where(agree, wide, ~both_fail)
    reasons = []
    if (split & undecided).any():
        reasons.append("autodiff and finite-difference Jacobians disagree beyond the finite "
                       "differences' bound, rows " + _rows_text(split & undecided))
    if (wide & undecided & ~split).any():
        reasons.append(f"error bound above {DECIDABLE}, rows " +
                       _rows_text(wide & undecided & ~split))
    why = "; ".join(reasons)
    return s.result(name, err, tol, detail, undecided=undecided, why=why)


def _finite(s, x, ld, st) -> CheckResult:
    parts = [x, ld[:, None]] + ([st["z_back"], st["ld_inv"][:, None]] if "z_back" in st else [])
    bad = numpy.sum(~numpy.isfinite(numpy.concatenate(parts, axis=1)), axis=1)
    return s.result("finite", bad.astype(float), 0.0,
                    lambda k, row: f"{int(bad[k])} non-finite values in row {row}"
                    if bad[k] else "forward" + (" and inverse" if "z_back" in st else ""))


def _round_trip(s, x, st, kappa) -> CheckResult:
    z, z_back = s.z, st["z_back"]
    x_again, _ = s.fwd(z_back)
    root = math.sqrt(s.adapter.eps)
    scale = numpy.maximum(1.0, numpy.maximum(_rowmax(z), _rowmax(x)))
    e1, e2 = _rowmax(z_back - z), _rowmax(x_again - x)
    worst_first = e1 >= e2

    def detail(k, row):
        which = "inverse(forward(z)) - z" if worst_first[k] else "forward(inverse(x)) - x"
        return f"{which}, x = forward(z)"

    tol = root * scale * (1.0 + 1e4 * root * kappa)
    return s.result("round_trip", numpy.maximum(e1, e2), tol, detail,
                    undecided=_ill_conditioned(s, kappa, s.n), why=ILL_CONDITIONED)


def _log_det_error(ld, s):
    def evaluate(Js, Es):
        J, E = Js[0], Es[0]
        sign, ref = numpy.linalg.slogdet(J)
        ref = numpy.where(sign == 0, -numpy.inf, ref)
        sigma_min = numpy.linalg.svd(J, compute_uv=False)[:, -1]
        with numpy.errstate(divide="ignore", invalid="ignore"):
            tol = numpy.sqrt(numpy.sum(E ** 2, axis=(1, 2))) / sigma_min
        tol = numpy.nan_to_num(tol, nan=numpy.inf)
        tol = tol + 64 * s.dim * s.adapter.ld_eps * numpy.maximum(1.0, numpy.abs(ld))
        return numpy.abs(ld - ref), tol
    return evaluate


def _log_det(s, ld, st) -> CheckResult:
    jf = st["jf"]
    evaluate = _log_det_error(ld, s)
    _, tol = evaluate([jf.J], [jf.E])
    st["tol_log_det"] = tol
    sign, ref = numpy.linalg.slogdet(jf.J)
    return _decide(s, "log_det", evaluate, [jf],
                   lambda k, row: f"log_det {ld[row]:.8g} vs {ref[row]:.8g} from the Jacobian "
                                  f"({jf.source})")


def _inverse_log_det(s, ld, st) -> CheckResult:
    ld_inv = st["ld_inv"]
    tol = math.sqrt(s.adapter.ld_eps) * numpy.maximum(1.0, numpy.abs(ld))
    if "tol_log_det" in st:
        tol = numpy.maximum(tol, numpy.minimum(st["tol_log_det"], DECIDABLE))
    return s.result("inverse_log_det", numpy.abs(ld_inv + ld), tol,
                    lambda k, row: f"inverse log_det {ld_inv[row]:.8g} at x = forward(z), "
                                   f"forward log_det {ld[row]:.8g}")


def _ift(s, st) -> CheckResult:
    jf, jg = st["jf"], st["jg"]
    eye = numpy.eye(s.dim)

    def evaluate(Js, Es):
        (Jf, Jg), (Ef, Eg) = Js, Es
        M = Jg @ Jf - eye
        product = numpy.abs(Jg) @ numpy.abs(Jf)  # the rounding of the product itself
        bound = numpy.abs(Eg) @ numpy.abs(Jf) + numpy.abs(Jg) @ numpy.abs(Ef) + \
            64 * s.dim * s.adapter.eps * product
        tol = numpy.max(bound, axis=(1, 2))
        return numpy.max(numpy.abs(M), axis=(1, 2)), tol

    M = jg.J @ jf.J - eye

    def detail(k, row):
        i, j = numpy.unravel_index(numpy.argmax(numpy.abs(M[row])), M[row].shape)
        return f"worst entry ({i}, {j}) of J_inv(f(z)) J_f(z) - I (forward: {jf.source}; " \
               f"inverse: {jg.source})"

    return _decide(s, "inverse_function_theorem", evaluate, [jf, jg], detail)


def _orientation(s, st) -> CheckResult:
    jf = st["jf"]
    sign, _ = numpy.linalg.slogdet(jf.J)
    # the sign is known where the first-order relative error of det J is below 1/2
    known = (st.get("tol_log_det", numpy.zeros(s.n)) < 0.5) & (sign != 0)
    if known.sum() < 2:
        return CheckResult("orientation", None, detail="fewer than 2 rows with a known sign of "
                           "det J_f", inconclusive=s.n > 1)
    major = 1.0 if numpy.sum(sign[known] > 0) >= numpy.sum(sign[known] < 0) else -1.0
    other = known & (sign == -major)
    err = other.astype(float)
    word = {1.0: "> 0", -1.0: "< 0"}
    listed = [int(r) for r in numpy.flatnonzero(other)]
    return s.result("orientation", err, 0.0,
                    f"det J_f {word[-major]} on rows {listed[:8]}, {word[major]} on "
                    f"{int(numpy.sum(known & (sign == major)))} rows" if listed else
                    f"det J_f {word[major]} on all {int(known.sum())} rows with a known sign")


def _difference(s, kappa, rows, out, ld, out_ref, ld_ref):
    """Per row: the larger of the output and log-det differences relative to their
    tolerances 1e4 eps kappa max(1, |ref|) (eps of the outputs and of the log-dets), as
    (error, tolerance) of the one that is larger."""
    k = kappa if numpy.isscalar(kappa) else kappa[rows]
    e_out = _rowmax(out - out_ref)
    t_out = 1e4 * s.adapter.eps * k * numpy.maximum(1.0, _rowmax(out_ref))
    e_ld = numpy.abs(ld - ld_ref)
    t_ld = 1e4 * s.adapter.ld_eps * k * numpy.maximum(1.0, numpy.abs(ld_ref))
    e_out, e_ld = (numpy.where(numpy.isnan(e), numpy.inf, e) for e in (e_out, e_ld))
    first = e_out / t_out >= e_ld / t_ld
    return numpy.where(first, e_out, e_ld), numpy.where(first, t_out, t_ld)


def _sequence(s, name, refs, kappa, steps) -> CheckResult:
    """Run the calls ``steps`` in order and compare each with the reference results.

    Each step is (description, kind, rows): kind "f" (forward on z[rows]), "g" (inverse on
    x[rows]) or "ld" (the separate log-det callable on (z[rows], x[rows])). A call that
    raises fails the check with the exception's text and the first of its rows.
    """
    err = numpy.zeros(s.n)
    tol = numpy.full(s.n, numpy.inf)
    what = [""] * s.n
    for desc, kind, rows in steps:
        rows = numpy.asarray(rows)
        try:
            if kind == "f":
                out, ld = s.fwd(s.z[rows])
                out_ref, ld_ref = refs["f"][0][rows], refs["f"][1][rows]
            elif kind == "g":
                out, ld = s.inv(refs["x"][rows])
                out_ref, ld_ref = refs["g"][0][rows], refs["g"][1][rows]
            else:
                z_u, x_u = s.user(s.z[rows], s.event_shape), s.user(refs["x"][rows], s.out_shape)
                ld = s.adapter.to_host(s.log_det(z_u, x_u), log_det=True)
                ld, _ = _log_det_rows(ld, len(rows), s.out_shape)
                ld_ref = refs["f"][1][rows]
                out = out_ref = numpy.zeros((len(rows), 1))
        except Exception as exc:  # the exception is the finding: name it and the row
            r = int(rows[0])
            err[r], tol[r], what[r] = numpy.inf, 0.0, f"{desc} raised {_describe(exc)}"
            continue
        if ld is None:
            raise _Failed(f"{desc}: log_det of shape that does not broadcast to the batch")
        e, t = _difference(s, kappa, rows, out, ld, out_ref, ld_ref)
        for r, ei, ti in zip(rows, e, t):
            if ei / max(ti, 1e-300) > err[r] / max(tol[r], 1e-300) or not what[r]:
                err[r], tol[r], what[r] = ei, ti, desc
    tested = numpy.array([bool(w) for w in what])
    if not tested.any():
        return _skip(name, "no calls to make")
    idx = numpy.flatnonzero(tested)
    return s.result(name, err[idx], tol[idx], lambda k, row: what[row], rows=idx,
                    undecided=_ill_conditioned(s, kappa, s.n)[idx], why=ILL_CONDITIONED)


def _batch(s, refs, kappa) -> CheckResult:
    rows = range(min(s.n, BATCH_ROWS))
    steps = [("forward of the row alone vs inside the batch", "f", [i]) for i in rows]
    if refs["g"][0] is not None:
        steps += [("inverse of the row alone vs inside the batch", "g", [i]) for i in rows]
    return _sequence(s, "batch_independence", refs, kappa, steps)


def _edge_rows(s, x, st) -> numpy.ndarray:
    """Tail rows (some |z_j| or |x_j| > TAIL) and edge rows (the finite differences saw a
    kink or knot nearby: a relative error bound above 1e-6)."""
    tail = (_rowmax(s.z) > TAIL) | (_rowmax(x) > TAIL)
    if "jf" in st:
        J, E = st["jf"].fd
        rel = numpy.max(E, axis=(1, 2)) / numpy.maximum(1.0, numpy.max(numpy.abs(J), axis=(1, 2)))
        tail |= rel > 1e-6
    return numpy.flatnonzero(tail)


def _isolation(s, refs, kappa, st) -> CheckResult:
    rows = _edge_rows(s, refs["x"], st)
    if len(rows) == 0:
        return CheckResult("isolation", True, detail="no tail or edge rows among the inputs")
    steps = [("tail/edge row alone", "f", [i]) for i in rows]
    steps.append(("the tail/edge rows as a batch of their own", "f", rows))
    steps += [(f"tail/edge rows in a chunk of {CHUNK}", "f", rows[i:i + CHUNK])
              for i in range(0, len(rows), CHUNK)]
    if refs["g"][0] is not None:
        steps += [("inverse, " + d, "g", r) for d, _, r in list(steps)]
    return _sequence(s, "isolation", refs, kappa, steps)


def _stateless(s, refs, kappa) -> CheckResult:
    # forward and inverse interleaved on reordered rows: a cache keyed on anything but
    # the values (the shape, the object, the last call) returns another input's result
    rev = numpy.arange(s.n)[::-1]
    steps = [("forward of the rows in reverse order, after other calls", "f", rev)]
    if refs["g"][0] is not None:
        steps += [("inverse, just after a forward call on other rows", "g", numpy.arange(s.n)),
                  ("inverse of the rows in reverse order, after other calls", "g", rev),
                  ("forward, just after an inverse call on other rows", "f", numpy.arange(s.n))]
    return _sequence(s, "stateless", refs, kappa, steps)


def _call_order(s, refs, kappa) -> CheckResult:
    # batch A (all rows), B (every other row, reversed: another size and order) and R (all
    # rows reversed), in an order where each call follows calls on other batches and of the
    # other kinds
    A, B, R = numpy.arange(s.n), numpy.arange(s.n)[::-2], numpy.arange(s.n)[::-1]
    plan = [("ld", A), ("f", B), ("ld", A), ("f", R), ("ld", A), ("f", A), ("g", B), ("f", A),
            ("ld", B), ("g", R), ("ld", A), ("f", B), ("g", B), ("f", A), ("g", A)]
    allowed = {"f"} | ({"g"} if refs["g"][0] is not None else set()) | \
        ({"ld"} if s.log_det is not None else set())
    plan = [(k, r) for k, r in plan if k in allowed]
    names = {"f": "forward", "g": "inverse", "ld": "log_det"}
    label = lambda k, r: f"{names[k]}({'B' if len(r) < s.n else 'A' if r[0] == 0 else 'R'})"  # noqa: E501,E731
    steps = []
    for i, (k, r) in enumerate(plan):
        before = " ".join(label(*p) for p in plan[max(0, i - 2):i]) or "first"
        steps.append((f"{label(k, r)} after {before} (A: all rows, B: every other row "
                      f"reversed, R: all reversed)", k, r))
    return _sequence(s, "call_order", refs, kappa, steps)


def _structure(s, mask, st) -> CheckResult:
    jf = st["jf"]
    off = numpy.where(mask, 0.0, numpy.abs(jf.J))
    err = numpy.max(off, axis=(1, 2))
    tol = numpy.max(numpy.where(mask, 0.0, jf.E), axis=(1, 2))

    def detail(k, row):
        i, j = numpy.unravel_index(numpy.argmax(off[row]), off[row].shape)
        return f"largest entry outside the pattern: dx_{i}/dz_{j}"

    return s.result("structure", err, tol, detail)


def _trapezoid_weights(m: int, width: float) -> numpy.ndarray:
    w = numpy.full(m, width / (m - 1))
    w[[0, -1]] *= 0.5
    return w


def _normalization(s, density, domain) -> CheckResult:
    dim = s.dim
    if domain is None:
        side = numpy.linspace(-8.0, 8.0, 801 if dim == 1 else 81)
        grid = numpy.stack(numpy.meshgrid(*[side] * dim, indexing="ij"), -1).reshape(-1, dim)
        images, _ = s.fwd(grid)
        low, high = numpy.min(images, axis=0), numpy.max(images, axis=0)
    else:
        low, high = (numpy.asarray(b, dtype=float).reshape(dim) for b in domain)
    m = 4001 if dim == 1 else 301
    sides = [numpy.linspace(low[i], high[i], m) for i in range(dim)]
    pts = numpy.stack(numpy.meshgrid(*sides, indexing="ij"), -1).reshape(-1, dim)
    z, ld_inv = s.inv(pts)
    if density == "normal":
        log_pz = -0.5 * numpy.sum(z ** 2, axis=1) - 0.5 * dim * math.log(2 * math.pi)
    elif callable(density):
        log_pz = s.adapter.to_host(density(s.adapter.to_user(z))).reshape(-1)
    else:
        raise ValueError(f"density: expected None, 'normal' or a callable, got {density!r}")
    p = numpy.exp(log_pz + ld_inv).reshape((m,) * dim)
    if not numpy.all(numpy.isfinite(p)):
        raise _Failed("non-finite density on the quadrature grid")

    def integrate(values, stride):
        out = values
        for i in reversed(range(dim)):
            w = _trapezoid_weights((m - 1) // stride + 1, high[i] - low[i])
            out = numpy.tensordot(out[(slice(None),) * i + (slice(None, None, stride),)], w,
                                  axes=([i], [0]))
        return float(out)

    total, coarse = integrate(p, 1), integrate(p, 2)
    tol = 1e-3 + abs(total - coarse)
    return CheckResult("normalization", bool(abs(total - 1.0) <= s.tols.get("normalization", tol)),
                       abs(total - 1.0), s.tols.get("normalization", tol), None, None,
                       f"integral {total:.6f} on {'x'.join([str(m)] * dim)} points over "
                       f"[{', '.join(f'{v:.3g}' for v in low)}] .. "
                       f"[{', '.join(f'{v:.3g}' for v in high)}]")


def assert_bijection(forward: Any, inverse: Callable | None = None, **kwargs: Any) -> Report:
    """``check_bijection`` for a test suite: raises ``AssertionError`` with the table.

    Takes the same arguments as ``check_bijection`` and returns the report when it is ok.

    Examples
    --------
    >>> import numpy
    >>> from refflow.affine import Diagonal
    >>> report = assert_bijection(Diagonal(numpy.array([0.5, 2.0]), numpy.zeros(2)), dim=2)
    >>> report.ok
    True
    """
    report = check_bijection(forward, inverse, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + report.table())
    return report
