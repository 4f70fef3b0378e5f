"""Hypothesis strategies for inputs that reach the edges of a bijection's domain.

Random normal inputs rarely land on a spline's knots, exactly on the boundary of its
interval, or in the tails; those are where peer libraries returned NaN or wrong log-dets.
``points`` mixes ordinary values with values at, just inside and just outside given edges,
tail values, and whole batches in the tails. Requires ``hypothesis`` (imported only here).

Examples
--------
>>> from hypothesis import given, settings
>>> from refflow.testing import check_bijection, strategies
>>> import numpy
>>> fwd = lambda z: (z ** 3 + z, numpy.sum(numpy.log(3 * z ** 2 + 1), axis=-1))
>>> @settings(max_examples=5, deadline=None)
... @given(z=strategies.points(2, edges=(-1.0, 1.0)))
... def test_cubic(z):
...     assert check_bijection(fwd, inputs=z).ok
>>> test_cubic()
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

__all__ = ["edge_values", "points"]


def edge_values(edges: Sequence[float], offset: float = 1e-9) -> st.SearchStrategy[float]:
    """A value at an edge, one ulp either side, or ``offset`` either side of it."""
    candidates = []
    for e in edges:
        e = float(e)
        up, down = numpy.nextafter(e, numpy.inf), numpy.nextafter(e, -numpy.inf)
        candidates += [e, float(up), float(down), e + offset, e - offset]
    if not candidates:
        raise ValueError("edges: expected at least one edge value")
    return st.sampled_from(candidates)


def points(
    dim: int,
    *,
    min_rows: int = 1,
    max_rows: int = 8,
    scale: float = 3.0,
    edges: Sequence[float] = (),
    tail: float | None = None,
) -> st.SearchStrategy[numpy.ndarray]:
    """(N, dim) float64 arrays: ordinary values, edge values, tails, and all-tail batches.

    Parameters
    ----------
    dim : event dimension D.
    min_rows, max_rows : range of the batch size N.
    scale : ordinary values are drawn from [-scale, scale].
    edges : values where the map changes formula (spline bounds and knots, a kink at 0).
    tail : values beyond +-tail are "tails"; default ``2 * max(|edges|, scale)``.
    """
    if dim < 1 or min_rows < 1 or max_rows < min_rows:
        raise ValueError(f"dim, min_rows, max_rows: expected 1 <= dim and 1 <= min_rows <= "
                         f"max_rows, got {dim}, {min_rows}, {max_rows}")
    bound = max([scale] + [abs(float(e)) for e in edges])
    tail = 2.0 * bound if tail is None else float(tail)
    ordinary = st.floats(-scale, scale, allow_nan=False, allow_infinity=False)
    tails = st.floats(tail, 10.0 * tail).flatmap(lambda v: st.sampled_from([v, -v]))
    parts = [ordinary, tails] + ([edge_values(edges)] if edges else [])
    mixed = st.one_of(*parts)
    rows = st.integers(min_rows, max_rows)
    return st.one_of(
        rows.flatmap(lambda n: arrays(numpy.float64, (n, dim), elements=mixed)),
        rows.flatmap(lambda n: arrays(numpy.float64, (n, dim), elements=tails)),
    )
