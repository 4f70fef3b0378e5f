"""The batch split over threads (``backend.map_batch``): same numbers, never under autograd."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B
from refflow.affine import Reverse
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow
from refflow.coupling import AffineCoupling
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline
from refflow.tree import map_arrays, partition
from tests.strict import StrictArray

DIM, BATCH, MIN_ROWS = 3, 64, 8
# float64 came out bit-identical on OpenBLAS; float32 differs by a few ulp, as it does between
# one and two BLAS threads without any split (row blocks change the kernels' rounding)
TOL = {"float64": dict(rtol=1e-12, atol=0), "float32": dict(rtol=1e-5, atol=1e-5)}


@pytest.fixture(autouse=True)
def _split_state(monkeypatch):
    # small chunks keep the tests fast; other test modules must see the default state
    monkeypatch.setattr(B, "SPLIT_MIN_ROWS", MIN_ROWS)
    B.set_threads(1)
    yield
    B.set_threads(1)


class Recorder:
    """Not a dataclass or a sequence, so the flow's tree keeps it as static configuration."""

    def __init__(self):
        self.sizes: list[int] = []


@dataclass(frozen=True, eq=False)
class Recorded:
    """A bijection that records the batch size of every call, from whichever thread."""

    bijection: Any
    recorder: Recorder = field(metadata={"static": True})

    def forward(self, z):
        self.recorder.sizes.append(z.shape[0])
        return self.bijection.forward(z)

    def inverse(self, x):
        self.recorder.sizes.append(x.shape[0])
        return self.bijection.inverse(x)


def _layers(kind: str, rng):
    if kind == "maf":
        return [MAF.init(rng, DIM, (16, 16), order=o) for o in ("natural", "reversed")]
    if kind == "realnvp":
        return [AffineCoupling.init(rng, DIM, hidden=(16, 16)), Reverse(),
                AffineCoupling.init(rng, DIM, hidden=(16, 16))]
    return [MAF.init(rng, DIM, (16, 16), transformer=RationalQuadraticSpline, order=o,
                     bins=4, bound=3.0) for o in ("natural", "reversed")]


def _flow(kind: str, dtype: str = "float64"):
    recorder = Recorder()
    flow = Flow(StandardNormal(DIM, dtype=dtype),
                Recorded(Compose(*_layers(kind, B.rng(1))), recorder))
    flow = map_arrays(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, flow)
    return flow, recorder


def _data(dtype: str, n: int = BATCH):
    return numpy.random.default_rng(0).standard_normal((n, DIM)).astype(dtype)


def _unsplit_log_prob(flow, x):
    # the definition, computed without map_batch
    z, log_det = flow.bijection.inverse(x)
    return flow.base.log_prob(z) + log_det


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["maf", "realnvp", "spline"])
def test_split_log_prob_equals_unsplit(kind, dtype):
    flow, recorder = _flow(kind, dtype)
    x = _data(dtype)
    expected = _unsplit_log_prob(flow, x)
    B.set_threads(2)
    recorder.sizes.clear()
    got = flow.log_prob(x)
    assert sorted(recorder.sizes) == [BATCH // 2, BATCH // 2]
    assert got.dtype == expected.dtype == numpy.dtype(dtype)
    assert got.shape == (BATCH,)
    numpy.testing.assert_allclose(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["maf", "realnvp", "spline"])
def test_split_sample_equals_unsplit(kind, dtype):
    flow, recorder = _flow(kind, dtype)
    # the definition: the same noise stream, pushed forward in one piece
    z = flow.base.sample(BATCH, B.rng(7))
    x_ref, log_det = flow.bijection.forward(z)
    lp_ref = flow.base.log_prob(z) - log_det
    B.set_threads(2)
    recorder.sizes.clear()
    x, lp = flow.sample_and_log_prob(BATCH, B.rng(7))
    assert sorted(recorder.sizes) == [BATCH // 2, BATCH // 2]
    assert x.dtype == lp.dtype == numpy.dtype(dtype)
    assert x.shape == (BATCH, DIM) and lp.shape == (BATCH,)
    numpy.testing.assert_allclose(x, x_ref, **TOL[dtype])
    numpy.testing.assert_allclose(lp, lp_ref, **TOL[dtype])
    numpy.testing.assert_allclose(flow.sample(BATCH, B.rng(7)), x_ref, **TOL[dtype])


def test_three_threads_three_chunks_and_odd_batch():
    flow, recorder = _flow("maf")
    x = _data("float64", 3 * MIN_ROWS + 2)
    B.set_threads(3)
    got = flow.log_prob(x)
    assert sorted(recorder.sizes) == [MIN_ROWS, MIN_ROWS + 1, MIN_ROWS + 1]
    numpy.testing.assert_allclose(got, _unsplit_log_prob(flow, x), rtol=1e-12, atol=0)


def test_no_split_under_autograd():
    flow, recorder = _flow("maf")
    x = _data("float64")
    leaves, rebuild = partition(flow)

    def loss(params):
        return -anp.sum(rebuild(params).log_prob(x)) / BATCH

    expected = autograd.grad(loss)(leaves)
    B.set_threads(2)
    recorder.sizes.clear()
    got = autograd.grad(loss)(leaves)
    # x is a plain array here: only the traced parameters can keep the call whole
    assert recorder.sizes == [BATCH]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        numpy.testing.assert_array_equal(g, e)


def test_no_split_when_the_input_is_traced():
    flow, recorder = _flow("realnvp")
    x = _data("float64")
    expected = autograd.grad(lambda v: anp.sum(flow.log_prob(v)))(x)
    B.set_threads(2)
    recorder.sizes.clear()
    got = autograd.grad(lambda v: anp.sum(flow.log_prob(v)))(x)
    assert recorder.sizes == [BATCH]
    numpy.testing.assert_array_equal(got, expected)


def test_no_split_for_strict_arrays():
    flow, recorder = _flow("maf")
    x = _data("float64")
    expected = _unsplit_log_prob(flow, x)
    strict_flow = map_arrays(StrictArray, flow)
    B.set_threads(2)
    recorder.sizes.clear()
    got = strict_flow.log_prob(StrictArray(x))
    assert isinstance(got, StrictArray)
    assert recorder.sizes == [BATCH]
    numpy.testing.assert_allclose(B.to_numpy(got), expected, rtol=1e-12)


def test_no_split_for_small_batches_or_single_events():
    flow, recorder = _flow("maf")
    B.set_threads(2)
    flow.log_prob(_data("float64", 2 * MIN_ROWS - 1))
    assert recorder.sizes == [2 * MIN_ROWS - 1]
    recorder.sizes.clear()
    flow.log_prob(_data("float64", 2 * MIN_ROWS))
    assert recorder.sizes == [MIN_ROWS, MIN_ROWS]
    # sampling asks for twice the rows per thread
    recorder.sizes.clear()
    flow.sample(4 * MIN_ROWS - 1, B.rng(0))
    assert recorder.sizes == [4 * MIN_ROWS - 1]
    recorder.sizes.clear()
    flow.sample(4 * MIN_ROWS, B.rng(0))
    assert recorder.sizes == [2 * MIN_ROWS, 2 * MIN_ROWS]


def test_a_single_event_is_not_cut_along_its_event_axis(monkeypatch):
    flow, recorder = _flow("maf")
    x = _data("float64", 1)[0]  # (D,): no batch axis
    monkeypatch.setattr(B, "SPLIT_MIN_ROWS", 1)
    B.set_threads(2)
    got = flow.log_prob(x)
    assert recorder.sizes == [DIM] and numpy.shape(got) == ()
    numpy.testing.assert_allclose(got, _unsplit_log_prob(flow, x), rtol=1e-12)


def test_map_batch_leaves_foreign_backends_and_flows_whole(monkeypatch):
    B.set_threads(2)
    calls = []

    def fn(a):
        calls.append(a.shape[0])
        return 2 * a

    x = numpy.ones((BATCH, 2))
    monkeypatch.setitem(B._state, "name", "cupy")
    B.map_batch(fn, x)
    monkeypatch.setitem(B._state, "name", "numpy")
    B.map_batch(fn, x, params=(StrictArray(numpy.ones(2)),))
    assert calls == [BATCH, BATCH]
    B.map_batch(fn, x, params={"w": numpy.ones(2)})
    assert calls[2:] == [BATCH // 2, BATCH // 2]


def test_map_batch_tuple_results_and_several_arrays():
    B.set_threads(2)
    x, y = numpy.arange(2.0 * BATCH).reshape(BATCH, 2), numpy.arange(float(BATCH))
    total, prod = B.map_batch(lambda a, b: (a.sum(axis=-1) + b, a * b[:, None]), x, y)
    numpy.testing.assert_array_equal(total, x.sum(axis=-1) + y)
    numpy.testing.assert_array_equal(prod, x * y[:, None])


def test_worker_errors_reach_the_caller_and_blas_is_restored():
    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    B.set_threads(2)
    x = numpy.zeros((BATCH, 2))
    x[-1, 0] = 1.0  # only the second chunk, computed by the pool, fails

    def fn(a):
        if a[:, 0].max() > 0:
            raise ValueError("bad chunk")
        return a

    with pytest.raises(ValueError, match="bad chunk"):
        B.map_batch(fn, x)
    after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert after == before


def test_blas_runs_on_one_thread_inside_the_split():
    from threadpoolctl import threadpool_info

    B.set_threads(2)
    seen = []

    def fn(a):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return a

    B.map_batch(fn, numpy.zeros((BATCH, 2)))
    assert seen and set(seen) == {1}


def test_errstate_of_the_caller_holds_in_every_chunk():
    B.set_threads(2)
    x = numpy.ones((BATCH, 1))
    x[-1] = 0.0
    with numpy.errstate(divide="raise"), pytest.raises(FloatingPointError):
        B.map_batch(lambda a: 1.0 / a, x)


def test_nested_calls_do_not_split_again():
    B.set_threads(2)
    inner = []

    def fn(a):
        return B.map_batch(lambda b: inner.append(b.shape[0]) or b, a, min_rows=1)

    B.map_batch(fn, numpy.zeros((BATCH, 1)))
    assert sorted(inner) == [BATCH // 2, BATCH // 2]


def test_the_pool_is_reused_and_renewed_when_the_count_changes():
    x = numpy.zeros((BATCH, 1))
    B.set_threads(2)
    B.map_batch(lambda a: a, x)
    pool = B._split["executor"]
    B.map_batch(lambda a: a, x)
    assert pool is not None and B._split["executor"] is pool
    B.set_threads(3)
    B.map_batch(lambda a: a, x)
    assert B._split["executor"] is not pool


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        B.set_threads(bad)
    assert B.get_threads() == 1


def test_set_and_get_threads():
    assert B.get_threads() == 1
    B.set_threads(numpy.int64(2))
    assert B.get_threads() == 2 and type(B.get_threads()) is int


@pytest.mark.parametrize(("value", "expected"), [("", 1), ("1", 1), (" 2 ", 2), ("16", 16)])
def test_refflow_threads_parsing(value, expected):
    assert B.threads_from_env({"REFFLOW_THREADS": value}) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "2x"])
def test_refflow_threads_rejects_bad_values(value, monkeypatch):
    monkeypatch.setenv("REFFLOW_THREADS", value)
    with pytest.raises(ValueError, match="REFFLOW_THREADS"):
        B.threads_from_env()


def test_refflow_threads_is_read_at_import():
    import subprocess
    import sys

    code = "import refflow; print(refflow.get_threads())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "REFFLOW_THREADS": "2"}, check=True)
    assert run.stdout.strip() == "2"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "REFFLOW_THREADS": "0"})
    assert bad.returncode != 0 and "REFFLOW_THREADS" in bad.stderr


def test_refflow_threads_unset_means_one(monkeypatch):
    monkeypatch.delenv("REFFLOW_THREADS", raising=False)
    assert B.threads_from_env() == 1
