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
a Richardson-extrapolated finite-difference Jacobian, per input row. Cost: 4 D calls of
``forward`` (and of ``inverse``) on 4N rows, plus O(N D^3) for the determinants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy

from refflow.testing.differences import ArrayAdapter, richardson_jacobian
from refflow.testing.report import CHECKS, CheckResult, Report

__all__ = ["check_bijection", "assert_bijection"]

BATCH_ROWS = 8  # rows re-evaluated alone by the batch-independence check
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

    def __init__(self, forward, inverse, z, event_shape, adapter, tols):
        self.forward, self.inverse = forward, inverse
        self.z, self.event_shape, self.adapter, self.tols = z, event_shape, adapter, tols
        self.n, self.dim = z.shape
        self.out_shape = event_shape

    def call(self, fn: Callable, u: numpy.ndarray, shape: tuple, what: str):
        """fn on the flat host rows u, as (output (M, D), log_det (M,)) in float64."""
        result = fn(self.adapter.to_user(u.reshape((u.shape[0],) + shape)))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ValueError(f"{what}: expected a callable returning (output, log_det), got "
                             f"{type(result).__name__}")
        out, ld = (self.adapter.to_host(v) for v in result)
        if out.size != u.size or ld.size != u.shape[0]:
            raise _Failed(f"{what} returned output {out.shape} and log_det {ld.shape} "
                          f"for input {(u.shape[0],) + shape}")
        return out.reshape(u.shape), ld.reshape(-1)

    def fwd(self, u):
        return self.call(self.forward, u, self.event_shape, "forward")

    def inv(self, u):
        return self.call(self.inverse, u, self.out_shape, "inverse")

    def result(self, name, err, tol, detail, rows=None) -> CheckResult:
        """The row with the largest err / tol; NaN errors count as failures."""
        err = numpy.where(numpy.isnan(err), numpy.inf, numpy.asarray(err, dtype=float))
        tol = numpy.broadcast_to(self.tols.get(name, tol), err.shape).astype(float)
        rows = numpy.arange(err.size) if rows is None else numpy.asarray(rows)
        bad = ~(numpy.isfinite(err) & (err <= tol))
        ratio = numpy.where(bad, numpy.inf, err / numpy.maximum(tol, 1e-300))
        k = int(numpy.argmax(ratio)) if bad.any() else int(numpy.argmax(err / numpy.maximum(
            tol, 1e-300)))
        row = int(rows[k])
        return CheckResult(name, not bool(bad.any()), float(err[k]), float(tol[k]), row,
                           self.z[row].copy(), detail(k, row) if callable(detail) else detail)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, detail=why)


def _guard(name: str, compute: Callable[[], CheckResult]) -> CheckResult:
    try:
        return compute()
    except _Failed as exc:
        return CheckResult(name, False, detail=str(exc))
    except Exception as exc:  # foreign code may raise anything; the report names it
        return CheckResult(name, False, detail=f"raised {type(exc).__name__}: {exc}")


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
) -> Report:
    r"""Check a bijection x = f(z) numerically: inverse, log-det, Jacobian identities.

    Parameters
    ----------
    forward : callable z -> (x, log_det), or an object with ``forward`` and ``inverse``
        methods (a refflow bijection), in which case ``inverse`` must be None.
        ``log_det`` = log|det df/dz|, one value per row, shape (N,).
    inverse : callable x -> (z, log_det) with log_det = log|det df^{-1}/dx|, optional.
        Without it only the forward checks run.
    inputs : array (N, D) or (N, *event), or a torch tensor, optional
        Points z to test at. With a torch tensor the callables receive and must return
        torch tensors of its dtype and device (torch is imported only then); otherwise
        NumPy arrays. Give float64 for the tightest tolerances.
    dim : int, optional
        Without ``inputs``: draw ``n`` rows of dimension ``dim`` from N(0, I), every
        fourth row scaled by 3 to reach tails.
    n : int
        Number of rows drawn when ``inputs`` is None.
    rng : None, int seed, or a Generator (NumPy or refflow); default seed 0.
    tol : None (tolerances derived from the step and the dtype), a float (one absolute
        tolerance for every check) or a dict check name -> tolerance.
    structure : None, "diagonal", "lower", "upper" or a (D, D) boolean mask of the entries
        of J_f allowed to be non-zero (J[i, j] = dx_i / dz_j).
    density : None, "normal", or a callable log p_z(z) -> (N,): checks that
        p(x) = p_z(f^{-1}(x)) |det J_{f^{-1}}(x)| integrates to 1 (D = 1 or 2 only).
    domain : (low, high) arrays of length D bounding the quadrature box in x; by default
        the bounding box of f([-8, 8]^D).
    step : relative finite-difference step; default eps^(1/5) of the inputs' dtype.

    Returns
    -------
    Report
        ``report.ok``, ``report.failed`` (names from ``refflow.testing.CHECKS``), one
        ``CheckResult`` per check with its worst error, tolerance and input row;
        ``print(report)`` shows the table.

    Notes
    -----
    Lecture: "Flow-based Models", change of variables and inverse function theorem.

    .. math::

        x = f(z), \quad z = f^{-1}(x), \quad
        \log|\det J_{f^{-1}}(x)| = -\log|\det J_f(z)|, \quad
        J_{f^{-1}}(f(z)) J_f(z) = I

    Derived tolerances, with eps the machine epsilon of the coarsest dtype seen: round
    trips sqrt(eps) max(1, |z|, |x|); log_det ||E||_F / sigma_min(J) + D eps, E the
    Richardson error bound of the Jacobian; row independence and statelessness
    1e4 eps max(1, |x|). The finite-difference checks assume rows are independent:
    read them only when ``batch_independence`` passes. Cost: O(D) batched calls per
    direction, O(N D^3) host work.

    References
    ----------
    1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
       JMLR 22(57), 2021.
    2. L. F. Richardson. The deferred approach to the limit. Phil. Trans. R. Soc. A, 1927.

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
    if inputs is None:
        inputs = _draw(dim, n, rng)
    adapter = ArrayAdapter(inputs)
    host = adapter.to_host(inputs)
    if host.ndim < 2 or host.shape[0] < 1 or host.size == 0:
        raise ValueError(f"inputs: expected an (N, D) or (N, *event) array with N >= 1, "
                         f"got shape {host.shape}")
    event_shape = tuple(host.shape[1:])
    z = adapter.cast(host.reshape(host.shape[0], -1))
    s = _Session(forward, inverse, z, event_shape, adapter, _tolerances(tol))
    mask = _mask(structure, s.dim)
    meta = {"N": s.n, "D": s.dim, "dtype": adapter.np_dtype.name,
            "arrays": "torch" if adapter.torch else "numpy"}
    checks = _run_checks(s, mask, density, domain, step)
    order = list(CHECKS)
    checks.sort(key=lambda c: order.index(c.name))
    return Report(tuple(checks), "check_bijection", meta)


def _run_checks(s: _Session, mask, density, domain, step) -> list:
    checks = []
    raw = s.forward(s.adapter.to_user(s.z.reshape((s.n,) + s.event_shape)))
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        raise ValueError(f"forward: expected a callable returning (output, log_det), got "
                         f"{type(raw).__name__}")
    out_raw, ld_raw = (s.adapter.to_host(v) for v in raw)
    problems = []
    if out_raw.size != s.z.size or out_raw.shape[:1] != (s.n,):
        problems.append(f"output shape {out_raw.shape} for input {(s.n,) + s.event_shape}")
    if ld_raw.shape != (s.n,):
        hint = " (reshape it to (N,))" if ld_raw.size == s.n else ""
        problems.append(f"log_det shape {ld_raw.shape}, expected ({s.n},){hint}")
    checks.append(CheckResult("shapes", not problems, detail="; ".join(problems) or
                              f"output {out_raw.shape}, log_det {ld_raw.shape}"))
    if out_raw.size != s.z.size or ld_raw.size != s.n:
        return checks + [_skip(name, "needs correct shapes") for name in CHECKS
                         if name not in ("shapes", "gradients")]
    s.out_shape = tuple(out_raw.shape[1:])
    x, ld = out_raw.reshape(s.z.shape), ld_raw.reshape(-1)
    st: dict = {}

    def eval_inverse():
        z_back, ld_inv = s.inv(x)
        st.update(z_back=z_back, ld_inv=ld_inv)

    inverse_error = None
    if s.inverse is not None:
        try:
            eval_inverse()
        except Exception as exc:  # reported by every check that needs the inverse
            inverse_error = f"inverse raised {type(exc).__name__}: {exc}"
    checks.append(_finite(s, x, ld, st))

    def need_inverse(name, compute):
        if s.inverse is None:
            return _skip(name, "no inverse given")
        if inverse_error:
            return CheckResult(name, False, detail=inverse_error)
        return _guard(name, compute)

    checks.append(need_inverse("round_trip", lambda: _round_trip(s, x, st)))
    jac = _guard("log_det", lambda: _log_det(s, x, ld, st, step))
    checks.append(jac)
    checks.append(need_inverse("inverse_log_det", lambda: _inverse_log_det(s, ld, st)))
    checks.append(need_inverse("inverse_function_theorem", lambda: _ift(s, x, st, step)))
    checks.append(_guard("batch_independence", lambda: _batch(s, x, ld, st)))
    checks.append(_guard("stateless", lambda: _stateless(s, x, ld, st)))
    if mask is None:
        checks.append(_skip("structure", "structure=None"))
    else:
        checks.append(_guard("structure", lambda: _structure(s, mask, st)))
    if density is None:
        checks.append(_skip("normalization", "density=None"))
    elif s.dim > 2:
        checks.append(_skip("normalization", f"quadrature needs D <= 2, got D = {s.dim}"))
    else:
        checks.append(need_inverse("normalization",
                                   lambda: _normalization(s, density, domain)))
    return checks


def _finite(s, x, ld, st) -> CheckResult:
    parts = [x, ld[:, None]] + ([st["z_back"], st["ld_inv"][:, None]] if "z_back" in st else [])
    bad = numpy.sum(~numpy.isfinite(numpy.concatenate(parts, axis=1)), axis=1)
    return s.result("finite", bad.astype(float), 0.0,
                    lambda k, row: f"{int(bad[k])} non-finite values in row {row}"
                    if bad[k] else "forward" + (" and inverse" if "z_back" in st else ""))


def _round_trip(s, x, st) -> CheckResult:
    z, z_back = s.z, st["z_back"]
    x_again, _ = s.fwd(z_back)
    root = math.sqrt(s.adapter.eps)
    scale = numpy.maximum(1.0, numpy.maximum(_rowmax(z), _rowmax(x)))
    e1, e2 = _rowmax(z_back - z), _rowmax(x_again - x)
    worst_first = e1 >= e2

    def detail(k, row):
        which = "inverse(forward(z)) - z" if worst_first[k] else "forward(inverse(x)) - x"
        return f"{which}, x = forward(z)"

    return s.result("round_trip", numpy.maximum(e1, e2), root * scale, detail)


def _log_det(s, x, ld, st, step) -> CheckResult:
    J, E = richardson_jacobian(lambda u: s.fwd(u)[0], s.z, s.adapter, step)
    sign, fd = numpy.linalg.slogdet(J)
    fd = numpy.where(sign == 0, -numpy.inf, fd)
    sigma_min = numpy.linalg.svd(J, compute_uv=False)[:, -1]
    with numpy.errstate(divide="ignore"):
        tol = numpy.sqrt(numpy.sum(E ** 2, axis=(1, 2))) / sigma_min
    tol = tol + 64 * s.dim * s.adapter.eps * numpy.maximum(1.0, numpy.abs(ld))
    st.update(J=J, E=E, tol_log_det=tol)
    err = numpy.abs(ld - fd)
    return s.result("log_det", err, tol,
                    lambda k, row: f"log_det {ld[row]:.8g} vs finite differences {fd[row]:.8g}")


def _inverse_log_det(s, ld, st) -> CheckResult:
    ld_inv = st["ld_inv"]
    tol = math.sqrt(s.adapter.eps) * numpy.maximum(1.0, numpy.abs(ld))
    if "tol_log_det" in st:
        tol = numpy.maximum(tol, st["tol_log_det"])
    return s.result("inverse_log_det", numpy.abs(ld_inv + ld), tol,
                    lambda k, row: f"inverse log_det {ld_inv[row]:.8g} at x = forward(z), "
                                   f"forward log_det {ld[row]:.8g}")


def _ift(s, x, st, step) -> CheckResult:
    if "J" not in st:
        raise _Failed("needs the forward Jacobian (see log_det)")
    Jf, Ef = st["J"], st["E"]
    Jg, Eg = richardson_jacobian(lambda u: s.inv(u)[0], x, s.adapter, step)
    M = Jg @ Jf - numpy.eye(s.dim)
    bound = numpy.abs(Eg) @ numpy.abs(Jf) + numpy.abs(Jg) @ numpy.abs(Ef)
    tol = numpy.max(bound, axis=(1, 2)) + 64 * s.dim * s.adapter.eps
    err = numpy.max(numpy.abs(M), axis=(1, 2))

    def detail(k, row):
        i, j = numpy.unravel_index(numpy.argmax(numpy.abs(M[row])), M[row].shape)
        return f"worst entry ({i}, {j}) of J_inv(f(z)) J_f(z) - I"

    return s.result("inverse_function_theorem", err, tol, detail)


def _compare(s, name, pairs, rows) -> CheckResult:
    """pairs: (direction, (M, D) outputs, (M,) log_dets, reference outputs, reference lds)."""
    errs, tols = [], []
    for _, out, ld, out_ref, ld_ref in pairs:
        errs.append(numpy.maximum(_rowmax(out - out_ref), numpy.abs(ld - ld_ref)))
        tols.append(1e4 * s.adapter.eps * numpy.maximum(
            1.0, numpy.maximum(_rowmax(out_ref), numpy.abs(ld_ref))))
    errs, tols = numpy.stack(errs), numpy.stack(tols)  # (directions, M)
    which = numpy.argmax(numpy.nan_to_num(errs / tols, nan=numpy.inf), axis=0)
    cols = numpy.arange(len(rows))
    return s.result(name, errs[which, cols], tols[which, cols],
                    lambda k, row: pairs[which[k]][0], rows=rows)


def _batch(s, x, ld, st) -> CheckResult:
    rows = numpy.arange(min(s.n, BATCH_ROWS))
    alone = [s.fwd(s.z[i:i + 1]) for i in rows]
    pairs = [("forward of the row alone vs inside the batch",
              numpy.concatenate([a[0] for a in alone]), numpy.concatenate([a[1] for a in alone]),
              x[rows], ld[rows])]
    if "z_back" in st:
        alone = [s.inv(x[i:i + 1]) for i in rows]
        pairs.append(("inverse of the row alone vs inside the batch",
                      numpy.concatenate([a[0] for a in alone]),
                      numpy.concatenate([a[1] for a in alone]),
                      st["z_back"][rows], st["ld_inv"][rows]))
    return _compare(s, "batch_independence", pairs, rows)


def _stateless(s, x, ld, st) -> CheckResult:
    # forward and inverse interleaved on reordered rows: a cache keyed on anything but
    # the values (the shape, the object, the last call) returns another input's result
    rev = numpy.arange(s.n)[::-1]
    out, ld_r = s.fwd(s.z[rev])
    pairs = [("forward of the rows in reverse order, after other calls",
              out[rev], ld_r[rev], x, ld)]
    if "z_back" in st:
        out, ld_r = s.inv(x)
        pairs.append(("inverse, just after a forward call on other rows",
                      out, ld_r, st["z_back"], st["ld_inv"]))
        out, ld_r = s.inv(x[rev])
        pairs.append(("inverse of the rows in reverse order, after other calls",
                      out[rev], ld_r[rev], st["z_back"], st["ld_inv"]))
        out, ld_r = s.fwd(s.z)
        pairs.append(("forward, just after an inverse call on other rows", out, ld_r, x, ld))
    return _compare(s, "stateless", pairs, numpy.arange(s.n))


def _structure(s, mask, st) -> CheckResult:
    if "J" not in st:
        raise _Failed("needs the forward Jacobian (see log_det)")
    off = numpy.where(mask, 0.0, numpy.abs(st["J"]))
    err = numpy.max(off, axis=(1, 2))
    tol = numpy.max(numpy.where(mask, 0.0, st["E"]), axis=(1, 2))

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
