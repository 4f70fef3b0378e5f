"""Catalog sweeps: every flow-building bijection of a peer library through check_bijection.

``refflow verify --catalog LIB`` (LIB one of ``LIBRARIES``) builds each transform of the
library's adapter table with random non-identity parameters, runs ``check_bijection`` on it
at several dimensions, parameter spreads and seeds, and prints one conformance row per
transform and setting.

An adapter table is a module ``refflow.testing.catalog._LIB`` with

- ``FRAMEWORK``: ``"numpy"``, ``"torch"`` or ``"jax"``, the kind of arrays the transforms take;
- ``ENTRIES``: a tuple of ``Entry``: a name, and ``build(dim, scale, seed)`` returning the
  keyword arguments of ``check_bijection`` (``forward``, ``inverse`` and, for libraries that
  compute the log-det by a call of its own, ``log_det``), with the library's initial
  parameters perturbed by N(0, scale^2);
- ``EXCLUDED``: ``(name, reason)`` pairs: the public transforms that are not bijections of
  R^D (a domain smaller than R^D, a change of dimension, not injective, a container of other
  transforms, or a stochastic layer), so that the table accounts for every public name.

The inputs: 32 float64 rows from N(0, I), every fourth one uniform on [-4, 4]^D (8 rows in
the tails), drawn from the seed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy

from refflow.testing.bijection import check_bijection
from refflow.testing.report import Report

__all__ = ["LIBRARIES", "Entry", "SweepRow", "load", "sweep_inputs", "run_entry", "sweep",
           "conformance_table", "summary"]

#: The libraries with an adapter table, and the module each one needs.
LIBRARIES = {"zuko": "zuko", "nflows": "nflows", "normflows": "normflows", "pyro": "pyro",
             "flowjax": "flowjax"}


@dataclass(frozen=True)
class Entry:
    """One catalogued transform: how to build it with random parameters.

    ``build(dim, scale, seed)`` returns a dict of ``check_bijection`` keyword arguments
    (``forward``, ``inverse``, optionally ``log_det``); ``note`` states the library's
    convention where it differs from refflow's (density direction, per-coordinate log-det,
    forward only).
    """

    name: str
    build: Callable[[int, float, int], dict]
    note: str = ""


@dataclass
class SweepRow:
    """The outcome of one transform at one setting (dimension, spread, seed)."""

    name: str
    dim: int
    scale: float
    seed: int
    report: Report | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """``ok``, ``FAIL`` (a check failed, or the transform could not be built) or
        ``inconclusive``."""
        if self.error or self.report.failed:
            return "FAIL"
        return "inconclusive" if self.report.inconclusive else "ok"


def load(library: str) -> Any:
    """The adapter table of ``library``, importing the library itself.

    Raises
    ------
    ValueError
        If ``library`` has no adapter table.
    ImportError
        If the library is not installed.
    """
    if library not in LIBRARIES:
        raise ValueError(f"library: expected one of {sorted(LIBRARIES)}, got {library!r}")
    return importlib.import_module(f"refflow.testing.catalog._{library}")


def sweep_inputs(dim: int, seed: int, framework: str, n: int = 32) -> Any:
    """``n`` float64 rows of dimension ``dim``: N(0, I), every fourth uniform on [-4, 4]^D.

    Returned as a NumPy array, a torch tensor or a JAX array (``framework``: ``"numpy"``,
    ``"torch"`` or ``"jax"``); JAX needs x64 enabled, which the flowjax table does on import.
    """
    rng = numpy.random.default_rng(seed)
    z = rng.standard_normal((n, dim))
    z[::4] = rng.uniform(-4.0, 4.0, size=z[::4].shape)
    if framework == "numpy":
        return z
    if framework == "torch":
        import torch

        return torch.from_numpy(z)
    if framework == "jax":
        import jax.numpy as jnp

        return jnp.asarray(z, dtype=jnp.float64)
    raise ValueError(f"framework: expected 'numpy', 'torch' or 'jax', got {framework!r}")


def run_entry(table: Any, entry: Entry, dim: int, scale: float, seed: int) -> SweepRow:
    """Build ``entry`` of the adapter module ``table`` and check it at one setting.

    A transform that cannot be built or raises outside ``check_bijection``'s own guards is a
    failed row whose ``error`` holds the exception's text.
    """
    row = SweepRow(entry.name, dim, scale, seed)
    start = time.perf_counter()
    try:
        kwargs = entry.build(dim, scale, seed)
        row.report = check_bijection(inputs=sweep_inputs(dim, seed, table.FRAMEWORK), **kwargs)
    except Exception as exc:  # one transform's failure must not end the sweep
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    row.seconds = time.perf_counter() - start
    return row


def sweep(library: str, dims: Iterable[int] = (2, 5), scales: Iterable[float] = (0.2, 0.5),
          seeds: Iterable[int] = (0,), names: Iterable[str] | None = None,
          progress: Callable[[Iterable], Iterable] | None = None) -> list[SweepRow]:
    """Check every catalogued transform of ``library`` at every (dim, scale, seed).

    Parameters
    ----------
    library : one of ``LIBRARIES``.
    dims, scales, seeds : the settings; each transform is run at their product.
    names : only the entries with these names (default: all).
    progress : wraps the list of runs, e.g. ``tqdm.tqdm``.

    Returns
    -------
    list of SweepRow, in the order dims, scales, entries, seeds.
    """
    table = load(library)
    entries = list(table.ENTRIES)
    if names is not None:
        wanted = set(names)
        unknown = wanted - {e.name for e in entries}
        if unknown:
            raise ValueError(f"names: no entries {sorted(unknown)} in the {library} table")
        entries = [e for e in entries if e.name in wanted]
    runs = [(e, d, s, k) for d in dims for s in scales for e in entries for k in seeds]
    return [run_entry(table, *run) for run in (progress(runs) if progress else runs)]


def _worst(report: Report, name: str) -> str:
    if name not in report:
        return "-"
    c = report[name]
    return "-" if c.passed is None and not c.inconclusive else f"{c.error:.1e}"


def conformance_table(rows: list[SweepRow]) -> str:
    """One line per row: status, checks ok / failed / inconclusive, worst errors, time."""
    head = (f"{'transform':<40}{'D':>3}{'s':>5}{'seed':>5}  {'status':<13}{'ok':>3}{'fail':>5}"
            f"{'inc':>4}{'round_trip':>11}{'log_det':>9}{'IFT':>9}{'time':>7}  not ok")
    lines = [head]
    for r in rows:
        if r.error:
            counts, errors, bad = (0, 1, 0), ("-",) * 3, r.error
        else:
            rep = r.report
            counts = (sum(c.passed is True for c in rep.checks), len(rep.failed),
                      len(rep.inconclusive))
            errors = tuple(_worst(rep, n) for n in
                           ("round_trip", "log_det", "inverse_function_theorem"))
            bad = ", ".join([f"{n} (FAIL)" for n in rep.failed] + rep.inconclusive)
        lines.append(f"{r.name[:39]:<40}{r.dim:>3}{r.scale:>5}{r.seed:>5}  {r.status:<13}"
                     f"{counts[0]:>3}{counts[1]:>5}{counts[2]:>4}{errors[0]:>11}{errors[1]:>9}"
                     f"{errors[2]:>9}{r.seconds:>6.1f}s  {bad}")
    return "\n".join(lines)


def summary(library: str, rows: list[SweepRow], seconds: float) -> str:
    """The closing line: transforms tried, runs ok / failed / inconclusive, time."""
    status = [r.status for r in rows]
    return (f"{library}: {len({r.name for r in rows})} transforms, {len(rows)} runs: "
            f"{status.count('ok')} ok, {status.count('FAIL')} failed, "
            f"{status.count('inconclusive')} inconclusive, {seconds:.0f} s")
