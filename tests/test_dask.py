"""refflow.dask on a LocalCluster of two worker processes (one thread each).

Every function is compared with an independent single-process computation: ``Flow.log_prob``
on the whole array, the per-chunk streams of ``numpy.random.SeedSequence(seed).spawn(k)`` run
here, NumPy's mean/std and SciPy's logsumexp over the concatenated Monte Carlo terms,
``refflow.fit`` with the same seed, ``refflow verify`` run in this process. Worker processes
are killed with SIGKILL to show that lost work is recomputed (same numbers) or, where it
cannot be, that ``fit`` fails the step instead of dropping a shard.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal

import numpy
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import refflow  # noqa: E402  (after the importorskip of the optional extra)
import refflow.dask as rd  # noqa: E402
from refflow import backend as B  # noqa: E402
from refflow.affine import Diagonal, Reverse  # noqa: E402
from refflow.autoregressive import MAF  # noqa: E402
from refflow.core import Compose, Flow  # noqa: E402
from refflow.coupling import AffineCoupling  # noqa: E402
from refflow.distributions import StandardNormal  # noqa: E402
from refflow.testing import verify_main  # noqa: E402
from refflow.tree import map_arrays, partition  # noqa: E402

DIM = 4
# rows are independent, so a chunk's log-densities are the whole array's rows: bit-identical
# in float64 on OpenBLAS; in float32 a different number of rows may change BLAS's blocking
# and so the rounding, by a few ulp (as between one and two BLAS threads)
TOL = {"float64": dict(rtol=0, atol=0), "float32": dict(rtol=1e-5, atol=1e-5)}
# fit: the parts of a batch are summed in another order than one log_prob over the batch;
# after 30 Adam steps in float64 the parameters differed by ~1e-14 relative (measured)
FIT_RTOL = 1e-9


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _realnvp(dtype="float64", seed=0):
    rng = B.rng(seed)
    flow = Flow(StandardNormal(DIM, dtype=dtype),
                Compose(AffineCoupling.init(rng, DIM, hidden=(16,)), Reverse(),
                        AffineCoupling.init(rng, DIM, hidden=(16,))))
    return map_arrays(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, flow)


def _maf(dtype="float64", seed=1):
    rng = B.rng(seed)
    flow = Flow(StandardNormal(DIM, dtype=dtype), Compose(MAF.init(rng, DIM, (16,))))
    return map_arrays(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, flow)


def _kill_workers(client, count):
    """SIGKILL ``count`` worker processes (their nannies start new ones)."""
    pids = list(client.run(os.getpid).values())
    for pid in pids[:count]:
        os.kill(pid, signal.SIGKILL)


def _local_samples(flow, seed, sizes):
    """The single-process counterpart: chunk i from the i-th child of SeedSequence(seed)."""
    children = numpy.random.SeedSequence(seed).spawn(len(sizes))
    parts = [flow.sample_and_log_prob(m, B.rng(child)) for m, child in zip(sizes, children)]
    return numpy.concatenate([p[0] for p in parts]), numpy.concatenate([p[1] for p in parts])


# ----------------------------------------------------------------------------- log_prob


@pytest.mark.parametrize("make", [_realnvp, _maf], ids=["realnvp", "maf"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_prob_equals_flow_log_prob(client, make, dtype):
    flow = make(dtype)
    X = numpy.random.default_rng(3).standard_normal((1000, DIM)).astype(dtype)
    lp = rd.log_prob(flow, da.from_array(X, chunks=(300, DIM)))
    # metadata declared, not learnt by running the flow: shape, chunks, dtype, chunk type
    assert lp.shape == (1000,) and lp.chunks == ((300, 300, 300, 100),)
    assert lp.dtype == numpy.dtype(dtype) and type(lp._meta) is numpy.ndarray
    got = lp.compute()
    assert got.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(got, flow.log_prob(X), **TOL[dtype])


def test_log_prob_sends_the_flow_once(client):
    flow = _realnvp()
    X = da.from_array(numpy.zeros((100, DIM)), chunks=(10, DIM))
    graph = dict(rd.log_prob(flow, X).__dask_graph__())
    flow_keys = [k for k in graph if isinstance(k, str) and k.startswith("Flow-")]
    # one key holds the flow; ten chunk tasks depend on it (a worker fetches it once)
    assert len(flow_keys) == 1
    assert sum(1 for k in graph if isinstance(k, tuple) and k[0].startswith("_log_prob")) == 10


def test_log_prob_with_context(client):
    rng = B.rng(4)
    flow = Flow(StandardNormal(DIM),
                Compose(AffineCoupling.init(rng, DIM, hidden=(8,), context_dim=3), Reverse(),
                        AffineCoupling.init(rng, DIM, hidden=(8,), context_dim=3)))
    X = numpy.random.default_rng(0).standard_normal((500, DIM))
    C = numpy.random.default_rng(1).standard_normal((500, 3))
    rows = da.from_array(X, chunks=(200, DIM))
    # per-row contexts chunked differently from X (rechunked to X's rows), and one shared
    got = rd.log_prob(flow, rows, context=da.from_array(C, chunks=(150, 3))).compute()
    numpy.testing.assert_array_equal(got, flow.log_prob(X, context=C))
    got = rd.log_prob(flow, rows, context=C[7]).compute()
    numpy.testing.assert_array_equal(got, flow.log_prob(X, context=C[7]))
    with pytest.raises(ValueError, match="context: this flow expects"):
        rd.log_prob(flow, rows)
    with pytest.raises(ValueError, match="context: expected shape"):
        rd.log_prob(flow, rows, context=C[:10])
    # sampling, Monte Carlo and training take unconditional flows only: refused up front
    with pytest.raises(ValueError, match="flow: a conditional flow"):
        rd.sample(flow, 10, 0, 5)
    with pytest.raises(ValueError, match="flow: a conditional flow"):
        rd.fit(flow, [X], steps=1, rng=B.rng(0), client=client)


def test_log_prob_bad_input():
    flow = _realnvp()
    with pytest.raises(ValueError, match="X: expected shape"):
        rd.log_prob(flow, da.zeros((10, DIM + 1)))
    with pytest.raises(ValueError, match="X: expected a floating"):
        rd.log_prob(flow, da.zeros((10, DIM), dtype=int))
    with pytest.raises(ValueError, match="context: this flow takes no context"):
        rd.log_prob(flow, da.zeros((10, DIM)), context=da.zeros((10, 2)))
    with pytest.raises(ValueError, match="flow: expected"):
        rd.log_prob(object(), da.zeros((10, DIM)))


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("make", [_realnvp, _maf], ids=["realnvp", "maf"])
def test_sample_equals_local_streams_and_worker_counts(client, make):
    flow = make()
    sizes = (300, 300, 250, 150)
    x, lp = rd.sample_and_log_prob(flow, 1000, seed=7, chunks=sizes)
    want_x, want_lp = _local_samples(flow, 7, sizes)
    one = list(client.scheduler_info()["workers"])[:1]
    runs = {
        "2 workers": client.compute([x, lp], sync=True),
        "1 worker": client.compute([x, lp], workers=one, allow_other_workers=False,
                                   sync=True),
        "one process": dask.compute(x, lp, scheduler="sync"),
    }
    for name, (got_x, got_lp) in runs.items():
        numpy.testing.assert_array_equal(got_x, want_x, err_msg=name)
        numpy.testing.assert_array_equal(got_lp, want_lp, err_msg=name)
    numpy.testing.assert_array_equal(rd.sample(flow, 1000, 7, sizes).compute(), want_x)
    # the log-densities are those of the samples (the flow's own density, independently)
    numpy.testing.assert_allclose(want_lp, flow.log_prob(want_x), rtol=1e-9, atol=1e-9)


def test_sample_int_chunks_and_metadata(client):
    flow = _realnvp("float32")
    x, lp = rd.sample_and_log_prob(flow, 10, seed=1, chunks=4)
    assert x.chunks == ((4, 4, 2), (DIM,)) and lp.chunks == ((4, 4, 2),)
    assert x.dtype == lp.dtype == numpy.float32
    got_x, got_lp = dask.compute(x, lp)
    assert got_x.dtype == got_lp.dtype == numpy.float32
    numpy.testing.assert_array_equal(got_x, _local_samples(flow, 1, (4, 4, 2))[0])
    for bad in (0, (4, 4), (4, 4, 2.0), True):
        with pytest.raises(ValueError, match="chunks"):
            rd.sample(flow, 10, 1, bad)
    with pytest.raises(ValueError, match="seed"):
        rd.sample(flow, 10, -1, 4)


def test_lost_workers_during_log_prob_and_sampling_give_the_same_result(client):
    flow = _maf()
    X = numpy.random.default_rng(4).standard_normal((4000, DIM))
    lp = client.persist(rd.log_prob(flow, da.from_array(X, chunks=(500, DIM))))
    x, lps = rd.sample_and_log_prob(flow, 2000, seed=3, chunks=250)
    pending = client.compute([x, lps])
    distributed.wait(lp)
    # both workers die: the persisted chunks are lost and the sampling is in flight
    _kill_workers(client, 2)
    numpy.testing.assert_array_equal(lp.compute(), flow.log_prob(X))
    got_x, got_lp = client.gather(pending)
    want_x, want_lp = _local_samples(flow, 3, (250,) * 8)
    numpy.testing.assert_array_equal(got_x, want_x)
    numpy.testing.assert_array_equal(got_lp, want_lp)
    client.wait_for_workers(2)


# ----------------------------------------------------------------------------- Monte Carlo


def _gaussian_q(mu, sigma):
    return Flow(StandardNormal(2), Diagonal(numpy.array(sigma), numpy.array(mu)))


def _target(z):
    # unnormalised N((1, -1), diag(0.5, 2)^2) plus a bump, so that log p~ - log q varies
    return (-0.5 * ((z[:, 0] - 1.0) / 0.5) ** 2 - 0.5 * ((z[:, 1] + 1.0) / 2.0) ** 2
            + 0.3 * numpy.tanh(z[:, 0] * z[:, 1]))


def test_elbo_and_iw_equal_the_concatenated_terms(client):
    q = _gaussian_q([0.8, -0.5], [0.6, 1.5])
    sizes = (1, 999, 500, 37)  # uneven: an average of chunk averages would be far off
    z, log_q = _local_samples(q, 11, sizes)
    w = _target(z) - log_q
    n = sum(sizes)
    est, se = rd.elbo(q, _target, n, 11, sizes, client=client)
    assert math.isclose(est, numpy.mean(w), rel_tol=1e-12)
    assert math.isclose(se, numpy.std(w) / math.sqrt(n), rel_tol=1e-10)
    from scipy.special import logsumexp

    log_z, se_iw = rd.iw_log_likelihood(q, _target, n, 11, sizes, client=client)
    assert math.isclose(log_z, logsumexp(w) - math.log(n), rel_tol=1e-12)
    weights = numpy.exp(w)
    want_se = numpy.std(weights) / math.sqrt(n) / numpy.mean(weights)  # delta method
    assert math.isclose(se_iw, want_se, rel_tol=1e-8)
    # the naive mean of the chunk means is far outside the tolerance: the test tells them apart
    bounds = numpy.cumsum((0,) + sizes)
    naive = numpy.mean([numpy.mean(w[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    assert abs(naive - est) > 1e-6 * abs(est)


def test_elbo_and_iw_exact_when_q_is_the_target(client):
    # q = N((1, -1), diag(0.5, 2)^2) and p~ its density times e^c: log p~ - log q = c for
    # every draw, so ELBO = log Z = c with zero spread
    q = _gaussian_q([1.0, -1.0], [0.5, 2.0])
    c = 0.7
    log_norm = -math.log(2 * math.pi * 0.5 * 2.0)

    def target(z):
        return c + log_norm - 0.5 * ((z[:, 0] - 1.0) / 0.5) ** 2 - 0.5 * ((z[:, 1] + 1.0)
                                                                           / 2.0) ** 2

    est, se = rd.elbo(q, target, 3000, 0, 1000, client=client)
    log_z, se_iw = rd.iw_log_likelihood(q, target, 3000, 0, 1000, client=client)
    assert math.isclose(est, c, abs_tol=1e-12) and se < 1e-12
    assert math.isclose(log_z, c, abs_tol=1e-12) and se_iw < 1e-6


def test_monte_carlo_bad_target(client):
    q = _gaussian_q([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="log_target"):
        rd.elbo(q, lambda z: z, 10, 0, 5, client=client)
    with pytest.raises(ValueError, match="log_target"):
        rd.elbo(q, "not callable", 10, 0, 5, client=client)


# ----------------------------------------------------------------------------- verify


def test_verify_sweep_gives_the_local_reports(client, capsys):
    argvs = [["refflow.affine:Diagonal", "--dim", str(d), "--seed", str(s)]
             for d in (2, 3) for s in (0, 1)] + [["refflow.affine:NoSuchThing"]]
    got = rd.verify_sweep(argvs, client=client)
    for argv, (status, text) in zip(argvs, got):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            want = verify_main(argv)
        assert (status, text) == (want, out.getvalue())
    assert [s for s, _ in got] == [0, 0, 0, 0, 2]
    from refflow.cli import main as refflow_command

    code = refflow_command(["verify", "refflow.affine:Diagonal", "--dask",
                            client.scheduler.address, "--dims", "2", "3", "--seeds", "5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("== refflow verify refflow.affine:Diagonal --dim") == 2
    assert printed.count("check_bijection: ok") == 2


# ----------------------------------------------------------------------------- fit


def _data(n=3000, seed=2):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, DIM)) * numpy.array([1.0, 0.5, 2.0, 1.0]) + 1.0


def _assert_same_flow(a, b, rtol):
    for p, q in zip(partition(a)[0], partition(b)[0]):
        numpy.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * numpy.max(numpy.abs(q)))


@pytest.mark.parametrize("kind", ["dask.array", "shards"])
def test_fit_equals_single_process_fit(client, kind):
    X = _data()
    data = (da.from_array(X, chunks=(700, DIM)) if kind == "dask.array"
            else [X[:1000], X[1000:1100], X[1100:]])
    kwargs = dict(steps=30, batch_size=256, lr=1e-2, schedule="cosine", clip_norm=5.0,
                  eval_every=10)
    # the shards go through refflow.fit(..., client=), which delegates to refflow.dask.fit
    fit = rd.fit if kind == "dask.array" else refflow.fit
    got, hist = fit(_realnvp(), data, rng=B.rng(5), client=client, **kwargs)
    want, want_hist = refflow.fit(_realnvp(), X, rng=B.rng(5), progress=False, **kwargs)
    _assert_same_flow(got, want, FIT_RTOL)
    numpy.testing.assert_allclose(hist["loss"], want_hist["loss"], rtol=FIT_RTOL)
    assert hist["step"] == want_hist["step"] == [10, 20, 30]
    assert hist["loss"][-1] < hist["loss"][0]  # it trained


def test_fit_batch_larger_than_data(client):
    # batch >= N: the whole set every step, no permutation drawn (as refflow.fit)
    X = _data(300)
    got, _ = rd.fit(_maf(), da.from_array(X, chunks=(128, DIM)), steps=5, batch_size=512,
                    lr=1e-2, rng=B.rng(1), client=client)
    want, _ = refflow.fit(_maf(), X, steps=5, batch_size=512, lr=1e-2, rng=B.rng(1),
                          progress=False)
    _assert_same_flow(got, want, FIT_RTOL)


def test_fit_recomputes_blocks_of_lost_workers(client):
    X = _data()

    def kill_at_10(step, flow, history):
        if step == 10:
            _kill_workers(client, 2)  # every block of the data is lost

    got, _ = rd.fit(_realnvp(), da.from_array(X, chunks=(700, DIM)), steps=20,
                    batch_size=256, lr=1e-2, rng=B.rng(5), client=client, eval_every=10,
                    callback=kill_at_10)
    want, _ = refflow.fit(_realnvp(), X, steps=20, batch_size=256, lr=1e-2, rng=B.rng(5),
                          progress=False)
    _assert_same_flow(got, want, FIT_RTOL)
    client.wait_for_workers(2)


def test_fit_fails_the_step_when_shards_are_lost(client):
    X = _data()
    killed = []

    def kill_at_3(step, flow, history):
        if step == 3:
            _kill_workers(client, 2)  # scattered shards cannot be recomputed
            killed.append(step)

    with pytest.raises(RuntimeError, match="fit: step 4"):
        rd.fit(_realnvp(), [X[:1500], X[1500:]], steps=10, batch_size=256, lr=1e-2,
               rng=B.rng(5), client=client, eval_every=1, callback=kill_at_3)
    assert killed == [3]
    client.wait_for_workers(2)


def test_fit_bad_arguments(client):
    with pytest.raises(ValueError, match="data"):
        rd.fit(_realnvp(), numpy.zeros((10, DIM)), steps=1, rng=B.rng(0), client=client)
    with pytest.raises(ValueError, match="data: shard 1"):
        rd.fit(_realnvp(), [numpy.zeros((10, DIM)), numpy.zeros((10, 3))], steps=1,
               rng=B.rng(0), client=client)
    with pytest.raises(ValueError, match="client: data-parallel fit takes no validation"):
        refflow.fit(_realnvp(), [numpy.zeros((10, DIM))], steps=1, rng=B.rng(0),
                    validation=0.5, client=client)
    with pytest.raises(ValueError, match="batch_size"):
        rd.fit(_realnvp(), [numpy.zeros((10, DIM))], steps=1, batch_size=0, rng=B.rng(0),
               client=client)


def test_no_address_starts_and_closes_a_local_cluster():
    with rd.cluster(n_workers=1) as c:
        assert list(c.nthreads().values()) == [1]
        cluster = c.cluster
        assert c.submit(os.getpid).result() != os.getpid()  # a worker process
    assert cluster.status.name == "closed"


def test_settings_reach_the_workers(client):
    from refflow import fast

    default = fast.is_enabled()
    with fast.enabled(not default):
        # a bare task sees the worker's own default; under _run (what every task of
        # refflow.dask runs its work under) it sees the driver's switch
        plain = client.submit(fast.is_enabled, pure=False).result()
        carried = client.submit(rd._run, rd._settings(), fast.is_enabled, pure=False).result()
    assert plain is default and carried is (not default)


def test_fit_refuses_workers_with_several_threads():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            with pytest.raises(ValueError, match="one thread each"):
                rd.fit(_realnvp(), [_data(100)], steps=1, rng=B.rng(0), client=c)


def test_command_line_log_prob_equals_flow_log_prob(client, tmp_path, capsys):
    flow = _maf()
    X = numpy.random.default_rng(6).standard_normal((1000, DIM))
    refflow.save(tmp_path / "model.npz", flow)
    numpy.save(tmp_path / "x.npy", X)
    rows = rd.read_npy(str(tmp_path / "x.npy"), chunk=300)
    assert rows.chunks == ((300, 300, 300, 100), (DIM,))
    code = rd.main(["log-prob", "--model", str(tmp_path / "model.npz"), "--data",
                    str(tmp_path / "x.npy"), "--out", str(tmp_path / "lp.npy"), "--dask",
                    client.scheduler.address, "--chunk", "300"])
    assert code == 0 and "over 1000 rows" in capsys.readouterr().out
    numpy.testing.assert_array_equal(numpy.load(tmp_path / "lp.npy"), flow.log_prob(X))
    assert rd.main(["log-prob", "--model", str(tmp_path / "x.npy"), "--data",
                    str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.npy"), "--dask",
                    client.scheduler.address]) == 2
