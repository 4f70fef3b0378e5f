"""Row blocks (``refflow.parallel``): chunks and threads give the unsplit numbers, never under
autograd; one owner of the BLAS limit whatever the interleaving; a bounded peak memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B
from refflow import parallel as P
from refflow.affine import Reverse
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow
from refflow.coupling import AffineCoupling
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline
from refflow.tree import map_arrays, partition

DIM, BATCH, MIN_ROWS = 3, 64, 8
# float64 came out bit-identical on OpenBLAS; float32 differs by a few ulp, as it does between
# one and two BLAS threads without any split (row blocks change the kernels' rounding)
TOL = {"float64": dict(rtol=1e-12, atol=0), "float32": dict(rtol=1e-5, atol=1e-5)}


@pytest.fixture(autouse=True)
def _split_state(monkeypatch):
    # small chunks keep the tests fast; other test modules must see the default state
    monkeypatch.setattr(P, "SPLIT_MIN_ROWS", MIN_ROWS)
    P.set_threads(1)
    yield
    P.set_threads(1)


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
    P.set_threads(2)
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
    P.set_threads(2)
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
    P.set_threads(3)
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
    P.set_threads(2)
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
    P.set_threads(2)
    recorder.sizes.clear()
    got = autograd.grad(lambda v: anp.sum(flow.log_prob(v)))(x)
    assert recorder.sizes == [BATCH]
    numpy.testing.assert_array_equal(got, expected)


def test_no_split_for_small_batches_or_single_events():
    flow, recorder = _flow("maf")
    P.set_threads(2)
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
    monkeypatch.setattr(P, "SPLIT_MIN_ROWS", 1)
    P.set_threads(2)
    got = flow.log_prob(x)
    assert recorder.sizes == [DIM] and numpy.shape(got) == ()
    numpy.testing.assert_allclose(got, _unsplit_log_prob(flow, x), rtol=1e-12)


def test_map_batch_leaves_foreign_backends_whole(monkeypatch):
    P.set_threads(2)
    calls = []

    def fn(a):
        calls.append(a.shape[0])
        return 2 * a

    x = numpy.ones((BATCH, 2))
    monkeypatch.setitem(B._state, "name", "cupy")
    P.map_batch(fn, x)
    monkeypatch.setitem(B._state, "name", "numpy")
    assert calls == [BATCH]
    P.map_batch(fn, x, params={"w": numpy.ones(2)})
    assert calls[1:] == [BATCH // 2, BATCH // 2]


def test_map_batch_tuple_results_and_several_arrays():
    P.set_threads(2)
    x, y = numpy.arange(2.0 * BATCH).reshape(BATCH, 2), numpy.arange(float(BATCH))
    total, prod = P.map_batch(lambda a, b: (a.sum(axis=-1) + b, a * b[:, None]), x, y)
    numpy.testing.assert_array_equal(total, x.sum(axis=-1) + y)
    numpy.testing.assert_array_equal(prod, x * y[:, None])


def test_worker_errors_reach_the_caller_and_blas_is_restored():
    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    P.set_threads(2)
    x = numpy.zeros((BATCH, 2))
    x[-1, 0] = 1.0  # only the second chunk, computed by the pool, fails

    def fn(a):
        if a[:, 0].max() > 0:
            raise ValueError("bad chunk")
        return a

    with pytest.raises(ValueError, match="bad chunk"):
        P.map_batch(fn, x)
    after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert after == before


def test_blas_runs_on_one_thread_inside_the_split():
    from threadpoolctl import threadpool_info

    P.set_threads(2)
    seen = []

    def fn(a):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return a

    P.map_batch(fn, numpy.zeros((BATCH, 2)))
    assert seen and set(seen) == {1}


def test_errstate_of_the_caller_holds_in_every_chunk():
    P.set_threads(2)
    x = numpy.ones((BATCH, 1))
    x[-1] = 0.0
    with numpy.errstate(divide="raise"), pytest.raises(FloatingPointError):
        P.map_batch(lambda a: 1.0 / a, x)


def test_nested_calls_do_not_split_again():
    P.set_threads(2)
    inner = []

    def fn(a):
        return P.map_batch(lambda b: inner.append(b.shape[0]) or b, a, min_rows=1)

    P.map_batch(fn, numpy.zeros((BATCH, 1)))
    assert sorted(inner) == [BATCH // 2, BATCH // 2]


def test_the_pool_is_reused_and_renewed_when_the_count_changes():
    x = numpy.zeros((BATCH, 1))
    P.set_threads(2)
    P.map_batch(lambda a: a, x)
    pool = P._splitter.pool
    P.map_batch(lambda a: a, x)
    assert pool is not None and P._splitter.pool is pool
    P.set_threads(3)
    P.map_batch(lambda a: a, x)
    assert P._splitter.pool is not pool


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        P.set_threads(bad)
    assert P.get_threads() == 1


def test_set_and_get_threads():
    assert P.get_threads() == 1
    P.set_threads(numpy.int64(2))
    assert P.get_threads() == 2 and type(P.get_threads()) is int


@pytest.mark.parametrize(("value", "expected"), [("", 1), ("1", 1), (" 2 ", 2), ("16", 16)])
def test_refflow_threads_parsing(value, expected):
    assert P.threads_from_env({"REFFLOW_THREADS": value}) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "2x"])
def test_refflow_threads_rejects_bad_values(value, monkeypatch):
    monkeypatch.setenv("REFFLOW_THREADS", value)
    with pytest.raises(ValueError, match="REFFLOW_THREADS"):
        P.threads_from_env()


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
    assert P.threads_from_env() == 1


@pytest.mark.standin
def test_no_split_for_strict_arrays():
    from tests.strict import StrictArray

    flow, recorder = _flow("maf")
    x = _data("float64")
    expected = _unsplit_log_prob(flow, x)
    strict_flow = map_arrays(StrictArray, flow)
    P.set_threads(2)
    recorder.sizes.clear()
    got = strict_flow.log_prob(StrictArray(x))
    assert isinstance(got, StrictArray)
    assert recorder.sizes == [BATCH]
    numpy.testing.assert_allclose(B.to_numpy(got), expected, rtol=1e-12)
    calls = []
    P.map_batch(lambda a: calls.append(a.shape[0]) or a, numpy.ones((BATCH, 2)),
                params=(StrictArray(numpy.ones(2)),))
    assert calls == [BATCH]


# ------------------------------------------------------------------ chunks: bounded memory


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["maf", "realnvp", "spline"])
def test_chunked_log_prob_and_sample_equal_unchunked(kind, threads, monkeypatch):
    flow, recorder = _flow(kind)
    n = 10 * MIN_ROWS + 3
    x = _data("float64", n)
    expected = _unsplit_log_prob(flow, x)
    z = flow.base.sample(n, B.rng(5))
    x_ref, log_det = flow.bijection.forward(z)
    monkeypatch.setattr(P, "_chunk_size", [4 * MIN_ROWS * DIM])  # blocks of 4 * MIN_ROWS rows
    P.set_threads(threads)
    recorder.sizes.clear()
    got = flow.log_prob(x)
    # 83 rows in blocks of at most 32: three blocks of 27 or 28, each cut in `threads` parts
    assert sum(recorder.sizes) == n and len(recorder.sizes) == 3 * threads
    assert max(recorder.sizes) <= 4 * MIN_ROWS
    numpy.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    x_got, lp = flow.sample_and_log_prob(n, B.rng(5))
    numpy.testing.assert_allclose(x_got, x_ref, rtol=1e-12, atol=0)
    numpy.testing.assert_allclose(lp, flow.base.log_prob(z) - log_det, rtol=1e-12, atol=0)


@dataclass(frozen=True, eq=False)
class _RowsWithContext:
    """A rowwise method of (x, context) whose rows reveal a misaligned context block."""

    recorder: Recorder = field(metadata={"static": True})
    event_shape: tuple = (DIM,)

    @P.rowwise
    def value(self, x, context=None):
        self.recorder.sizes.append((x.shape[0], None if context is None else context.shape))
        return anp.sum(x, axis=-1) * 10.0 + anp.sum(context * anp.arange(1.0, 3.0), axis=-1)


@pytest.mark.parametrize("threads", [1, 2])
def test_rowwise_cuts_the_context_rows_with_the_data_rows(threads, monkeypatch):
    recorder = Recorder()
    f = _RowsWithContext(recorder)
    n = 10 * MIN_ROWS + 3
    x = _data("float64", n)
    c = numpy.random.default_rng(1).standard_normal((n, 2))
    expected = numpy.sum(x, axis=-1) * 10.0 + c[:, 0] + 2.0 * c[:, 1]
    monkeypatch.setattr(P, "_chunk_size", [4 * MIN_ROWS * (DIM + 2)])  # 4 * MIN_ROWS rows
    P.set_threads(threads)
    numpy.testing.assert_allclose(f.value(x, c), expected, rtol=1e-12, atol=0)
    # three blocks, each cut in `threads` parts; each part's context has its rows
    assert len(recorder.sizes) == 3 * threads
    assert all(shape == (rows, 2) for rows, shape in recorder.sizes)
    recorder.sizes.clear()
    # one (C,) context for all rows: passed whole to every block
    numpy.testing.assert_allclose(f.value(x, c[0]),
                                  numpy.sum(x, axis=-1) * 10.0 + c[0, 0] + 2.0 * c[0, 1],
                                  rtol=1e-12, atol=0)
    assert len(recorder.sizes) > 1 and all(shape == (2,) for _, shape in recorder.sizes)
    recorder.sizes.clear()
    # a traced context: nothing is cut, and the gradient is the weights (1, 2) per row
    grad = autograd.grad(lambda cc: anp.sum(f.value(x, cc)))(c)
    numpy.testing.assert_array_equal(grad, numpy.tile([1.0, 2.0], (n, 1)))
    grad_one = autograd.grad(lambda cc: anp.sum(f.value(x, cc)))(c[0])
    numpy.testing.assert_allclose(grad_one, [n, 2.0 * n])
    assert [rows for rows, _ in recorder.sizes] == [n, n]


def test_a_block_holds_at_least_one_row_and_enough_rows_to_split(monkeypatch):
    calls = []
    monkeypatch.setattr(P, "_chunk_size", [1])
    P.map_batch(lambda a: calls.append(a.shape[0]) or a, numpy.ones((5, 4)))
    assert calls == [1] * 5
    calls.clear()
    P.set_threads(2)
    P.map_batch(lambda a: calls.append(a.shape[0]) or a, numpy.ones((4 * MIN_ROWS, 4)))
    assert calls == [MIN_ROWS] * 4  # two blocks of 2 * MIN_ROWS rows, each split in two


def test_no_chunks_under_autograd(monkeypatch):
    flow, recorder = _flow("realnvp")
    x = _data("float64")
    monkeypatch.setattr(P, "_chunk_size", [DIM * 8])
    autograd.grad(lambda v: anp.sum(flow.log_prob(v)))(x)
    assert recorder.sizes == [BATCH]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_chunk_size_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        P.set_chunk_size(bad)
    assert P.get_chunk_size() == P.CHUNK_SIZE


def test_set_and_get_chunk_size():
    try:
        P.set_chunk_size(numpy.int64(4096))
        assert P.get_chunk_size() == 4096 and type(P.get_chunk_size()) is int
    finally:
        P.set_chunk_size(P.CHUNK_SIZE)


@pytest.mark.parametrize(("value", "expected"), [("", P.CHUNK_SIZE), (" 4096 ", 4096)])
def test_refflow_chunk_size_parsing(value, expected):
    assert P.chunk_size_from_env({"REFFLOW_CHUNK_SIZE": value}) == expected


@pytest.mark.parametrize("value", ["0", "-2", "big", "1e6"])
def test_refflow_chunk_size_rejects_bad_values(value):
    with pytest.raises(ValueError, match="REFFLOW_CHUNK_SIZE"):
        P.chunk_size_from_env({"REFFLOW_CHUNK_SIZE": value})


_PEAK = """
import sys, tracemalloc, numpy, refflow
from refflow import parallel
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow
from refflow.distributions import StandardNormal
chunk, n = int(sys.argv[1]), int(sys.argv[2])
if chunk:
    parallel.set_chunk_size(chunk)
rng = refflow.backend.rng(0)
flow = Flow(StandardNormal(16), Compose(*[MAF.init(rng, 16, (32, 32)) for _ in range(2)]))
x = numpy.random.default_rng(0).standard_normal((n, 16))
tracemalloc.start()
lp = flow.log_prob(x)
print(tracemalloc.get_traced_memory()[1], float(lp[:100_000].sum()))
"""


def test_chunks_bound_the_peak_memory():
    """log_prob's peak (tracemalloc) stays put from 100,000 to 200,000 rows with the default
    chunks; evaluated in one block it grows with the batch. The results are the same."""
    import subprocess
    import sys

    def run(chunk: int, n: int):
        out = subprocess.run([sys.executable, "-c", _PEAK, str(chunk), str(n)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "REFFLOW_THREADS": "1"})
        peak, total = out.stdout.split()
        return int(peak), float(total)

    small, large = run(0, 100_000), run(0, 200_000)
    whole = run(10**9, 200_000)
    assert large[0] < 1.1 * small[0], (small, large)  # bounded: about 40 MB here
    assert whole[0] > 3 * large[0], (whole, large)    # about 160 MB here, 6x the input
    assert large[1] == whole[1] == small[1]


# ------------------------------------------------------------------ the caller's context


def test_split_parts_see_the_callers_fast_switch():
    import refflow.fast as fast

    seen = []

    def fn(a):
        seen.append(fast.is_enabled())
        return a

    P.set_threads(2)
    for flag in (False, True):
        seen.clear()
        with fast.enabled(flag):
            P.map_batch(fn, numpy.zeros((BATCH, 1)))
        assert seen == [flag, flag]


# ------------------------------------------------------------------ one owner of the BLAS limit


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


@pytest.mark.parametrize("first_to_finish", ["A", "B"])
def test_blas_limit_is_restored_whatever_the_interleaving(first_to_finish):
    """Two callers split at once; whichever finishes first, BLAS stays at one thread until the
    other is done, then returns to the value found before either."""
    import threading

    from threadpoolctl import threadpool_limits

    inside = {"A": threading.Event(), "B": threading.Event()}
    go = {"A": threading.Event(), "B": threading.Event()}
    done = {"A": threading.Event(), "B": threading.Event()}
    leave = threading.Event()  # the callers stay alive until the end, as a program's would
    results, errors = {}, []

    def fn(a):
        name = threading.current_thread().name
        if name in inside:  # only the callers' own parts wait; the pool's run through
            inside[name].set()
            assert go[name].wait(10), "the test did not release this part"
        return 2 * a

    def caller():
        name = threading.current_thread().name
        try:
            results[name] = P.map_batch(fn, numpy.ones((BATCH, 2)))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
        done[name].set()
        leave.wait(10)

    if _blas_threads() == []:
        pytest.skip("no BLAS found by threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        assert set(_blas_threads()) == {2}
        P.set_threads(2)
        threads = {n: threading.Thread(target=caller, name=n) for n in ("A", "B")}
        threads["A"].start()
        assert inside["A"].wait(10)
        threads["B"].start()
        assert inside["B"].wait(10)
        assert set(_blas_threads()) == {1}  # both splits running
        last = "B" if first_to_finish == "A" else "A"
        go[first_to_finish].set()
        assert done[first_to_finish].wait(10)
        assert set(_blas_threads()) == {1}  # the other split still runs
        go[last].set()
        assert done[last].wait(10)
        assert set(_blas_threads()) == {2}  # both callers still alive
        leave.set()
        for t in threads.values():
            t.join(10)
    assert not errors, errors
    for name in ("A", "B"):
        numpy.testing.assert_array_equal(results[name], 2 * numpy.ones((BATCH, 2)))


def test_set_threads_during_a_split_does_not_break_it(monkeypatch):
    """set_threads runs between the split's taking its pool and submitting to it (forced):
    the pool it took stays usable until the split ends, and the result is right."""
    acquire = P._splitter.acquire

    def acquire_then_set_threads():
        taken = acquire()
        P.set_threads(3)
        return taken

    monkeypatch.setattr(P._splitter, "acquire", acquire_then_set_threads)
    P.set_threads(2)
    P.map_batch(lambda a: a, numpy.zeros((BATCH, 1)))  # creates the pool of the first split
    x = numpy.arange(2.0 * BATCH).reshape(BATCH, 2)
    P.set_threads(2)
    got = P.map_batch(lambda a: 2 * a, x)
    numpy.testing.assert_array_equal(got, 2 * x)
    assert P.get_threads() == 3


def test_backend_and_package_names_still_reach_the_split():
    """set_threads, get_threads, map_batch, SPLIT_MIN_ROWS moved to refflow.parallel; the old
    names in refflow.backend (kept for one release) and refflow's own names are the same."""
    import refflow

    assert B.set_threads is P.set_threads and refflow.set_threads is P.set_threads
    assert B.get_threads is P.get_threads and refflow.get_threads is P.get_threads
    assert B.map_batch is P.map_batch and B.threads_from_env is P.threads_from_env
    assert B.SPLIT_MIN_ROWS == P.SPLIT_MIN_ROWS == MIN_ROWS  # follows the current value
    B.set_threads(2)
    assert P.get_threads() == 2


def test_the_program_can_still_limit_blas_after_a_split():
    """refflow gives control of OpenBLAS back when the last split ends, so a
    limit the program sets afterwards (from this thread) takes effect."""
    from threadpoolctl import threadpool_limits

    if _blas_threads() == []:
        pytest.skip("no BLAS found by threadpoolctl")
    before = _blas_threads()
    P.set_threads(2)
    P.map_batch(lambda a: a, numpy.zeros((BATCH, 1)))
    assert _blas_threads() == before
    with threadpool_limits(limits=1, user_api="blas"):
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
