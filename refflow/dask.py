r"""refflow on Dask: evaluation, sampling, Monte Carlo estimates, verification sweeps and
data-parallel training over a ``dask.distributed`` cluster (optional extra ``refflow[dask]``).

Most of refflow's work is parallel over rows: the log-densities of a large data set, samples,
the terms of a Monte Carlo estimate, the checks of many configurations. Maximum-likelihood
training is data-parallel: the gradient of L(S) = -(1/|B|) sum_{x in B} log p(x) over a global
batch B is the sum of its parts' gradients. This module maps that parallelism onto Dask, the
engine that already runs NumPy and CuPy arrays on a laptop's processes or a cluster of GPU
nodes; it has no scheduler of its own.

1. ``log_prob(flow, X)``: a lazy ``dask.array`` of log p(x), one task per row chunk of X;
   the flow is one key of the graph, so it reaches each worker once, not once per chunk.
2. ``sample(flow, n, seed, chunks)`` and ``sample_and_log_prob``: chunk i draws from its own
   stream ``refflow.backend.rng(SeedSequence(seed).spawn(k)[i])`` (the i-th child,
   ``SeedSequence(seed, spawn_key=(i,))``), so the result depends on the seed and the chunk
   sizes only, never on the number of workers or the order of scheduling.
3. ``elbo`` and ``iw_log_likelihood``: estimates from per-chunk sufficient statistics,
   combined exactly (counts, means and centred sums of squares by Chan's update;
   log-sum-exp over chunks), with standard errors.
4. ``verify_sweep`` / ``verify_main``: ``refflow verify ... --dask ADDRESS`` run over
   configurations (dims, seeds) on the cluster, one report per configuration.
5. ``fit(flow, data, ..., client=client)``: data-parallel maximum likelihood. The driver
   draws each step's global batch, workers compute the gradients of their rows' share of the
   NLL, the driver sums them and takes one Adam step; the parameters go out once per step.

The process-wide settings of the driver (the array backend, the fast-layer switch
``refflow.fast.is_enabled()``) travel with every task and are applied on the worker; the
dtype travels with the arrays. ``import refflow`` never imports Dask: only this module does.

Notes
-----
Lecture: "MLE problem" (the NLL is a sum over samples, so its gradient is a sum of the
shards' gradients) and the variational-inference application (the ELBO and the
importance-weighted bound are Monte Carlo averages over independent draws).

.. math::

    \nabla_\theta \mathcal{L}(B) = \sum_{s} \nabla_\theta \Big(-\frac{1}{|B|}
        \sum_{x \in B \cap S_s} \log p_\theta(x)\Big), \qquad
    \log \hat Z = \operatorname{LSE}_c\big(\operatorname{LSE}_{i \in c}\, w_i\big) - \log n

Measured on a 2-core machine, and what changes on a cluster of GPU nodes:
``docs/dask.md``.

References
----------
1. M. Rocklin. Dask: Parallel Computation with Blocked algorithms and Task Scheduling.
   SciPy, 2015.
2. T. F. Chan, G. H. Golub, R. J. LeVeque. Algorithms for computing the sample variance:
   analysis and recommendations. The American Statistician 37(3), 1983.
3. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR, 2016.
4. M. E. O'Neill. PCG: A Family of Simple Fast Space-Efficient Statistically Good
   Algorithms for Random Number Generation, 2014 (NumPy's SeedSequence).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy
from autograd import value_and_grad

from refflow import backend as B
from refflow.checks import check_int
from refflow.tree import partition

__all__ = [
    "cluster",
    "chunk_rng",
    "log_prob",
    "sample",
    "sample_and_log_prob",
    "elbo",
    "iw_log_likelihood",
    "verify_sweep",
    "verify_main",
    "fit",
    "read_npy",
    "main",
]


def _distributed():
    try:
        import dask.array  # noqa: F401  (the array collection is a separate submodule)
        import distributed
    except ImportError as exc:
        raise ImportError("refflow.dask needs Dask: pip install 'refflow[dask]'") from exc
    return distributed


def _settings() -> dict:
    """The driver's process-wide settings that a task must reproduce on its worker."""
    from refflow import fast

    return {"backend": B.get_backend(), "fast": fast.is_enabled()}


def _run(settings: dict, fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` on a worker under the driver's backend and fast-layer switch."""
    from refflow import fast

    if B.get_backend() != settings["backend"]:
        B.set_backend(settings["backend"])
    with fast.enabled(settings["fast"]):
        return fn(*args)


# ------------------------------------------------------------------------- clusters


@contextlib.contextmanager
def cluster(address: Any = None, n_workers: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: to ``address``, or to a new local cluster of processes.

    Parameters
    ----------
    address : ``None`` or ``"local"`` (start a ``LocalCluster`` of ``n_workers`` processes,
        one thread each, and close it on exit), a scheduler address such as
        ``"tcp://10.0.0.1:8786"`` (connect, and close only the connection), or an existing
        ``Client`` (used as it is, left open).
    n_workers : worker processes of a local cluster (default: one per core).

    Notes
    -----
    One thread per worker: autograd's tape is not thread-safe, and one process per core
    sidesteps the GIL for the many small NumPy calls of a flow.
    """
    distributed = _distributed()
    if isinstance(address, distributed.Client):
        yield address
        return
    if address is None or address == "local":
        if n_workers is not None:
            check_int("n_workers", n_workers)
        with distributed.LocalCluster(n_workers=n_workers or os.cpu_count(),
                                      threads_per_worker=1, processes=True,
                                      dashboard_address=None) as local:
            with distributed.Client(local) as client:
                yield client
        return
    if not isinstance(address, str):
        raise ValueError(f"address: expected None, 'local', a scheduler address or a Client, "
                         f"got {address!r}")
    with distributed.Client(address) as client:
        yield client


# ------------------------------------------------------------------------- helpers


def chunk_rng(seed: int, i: int) -> Any:
    """The generator of chunk i: ``refflow.backend.rng(SeedSequence(seed).spawn(k)[i])``.

    The i-th child of ``SeedSequence(seed).spawn(k)`` is ``SeedSequence(seed,
    spawn_key=(i,))`` for every k > i, so a chunk's stream depends on the seed and its index
    only. Running ``flow.sample_and_log_prob(size_i, chunk_rng(seed, i))`` for each chunk
    and concatenating is the single-process counterpart of ``sample``.
    """
    return B.rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))


def _row_chunks(n: int, chunks: Any) -> tuple[int, ...]:
    n = check_int("n", n)
    if isinstance(chunks, (int, numpy.integer)) and not isinstance(chunks, bool):
        size = check_int("chunks", chunks)
        return tuple(min(size, n - s) for s in range(0, n, size))
    sizes = tuple(chunks) if isinstance(chunks, (tuple, list)) else None
    if (not sizes or any(isinstance(c, bool) or not isinstance(c, (int, numpy.integer))
                         or c < 1 for c in sizes) or sum(sizes) != n):
        raise ValueError(f"chunks: expected rows per chunk (a positive int) or positive chunk "
                         f"sizes summing to n = {n}, got {chunks!r}")
    return tuple(int(c) for c in sizes)


def _check_flow(flow: Any, *methods: str, conditional: bool = True) -> tuple:
    event = tuple(getattr(flow, "event_shape", ()))
    if not event or not all(callable(getattr(flow, m, None)) for m in methods):
        raise ValueError(f"flow: expected a refflow.Flow, got {type(flow).__name__}")
    if not conditional and getattr(flow, "context_dim", 0):
        # raised here rather than lazily on every worker
        raise ValueError(f"flow: a conditional flow (context_dim {flow.context_dim}); "
                         f"refflow.dask samples and trains unconditional flows only")
    return event


def _result_dtype(flow: Any, *dtypes: Any) -> numpy.dtype:
    """The dtype refflow's arithmetic gives: NumPy promotion of the inputs and parameters.

    Told to Dask so that it never calls the flow on a dummy chunk to learn it.
    """
    leaves, _ = partition(flow)
    return numpy.result_type(*dtypes, *(leaf.dtype for leaf in leaves))


def _base_dtype(flow: Any) -> numpy.dtype:
    dtype = getattr(flow.base, "dtype", None)
    return numpy.dtype(numpy.float64 if dtype is None else dtype)


def _meta(shape_rank: int, dtype: Any) -> Any:
    """An empty chunk of the current backend's array type (what Dask calls ``meta``)."""
    return B.xp().empty((0,) * shape_rank, dtype=dtype)


def _shared(obj: Any) -> Any:
    """``obj`` as one key of a Dask graph: each worker fetches it once, whatever the chunks."""
    import dask

    return dask.delayed(obj, pure=False, traverse=False)


# ------------------------------------------------------------------------- evaluation


def _log_prob_block(x, context, flow, settings):
    if context is None:
        return _run(settings, flow.log_prob, x)
    return _run(settings, lambda a, c: flow.log_prob(a, context=c), x, context)


def log_prob(flow: Any, X: Any, context: Any = None) -> Any:
    r"""log p(x) for every row of a ``dask.array`` X, as a lazy ``dask.array`` (rows chunked).

    Parameters
    ----------
    flow : ``refflow.Flow``.
    X : (N, *event_shape) ``dask.array`` with NumPy or CuPy chunks (any array is wrapped
        with ``dask.array.asarray``); chunked by rows (event axes are merged into one chunk).
    context : ``None``, or for a conditional flow (``flow.context_dim`` C > 0) its (N, C)
        rows (rechunked like X) or one (C,) context for every row.

    Returns
    -------
    (N,) ``dask.array`` with X's row chunks and chunk type; its dtype is NumPy's promotion
    of X's dtype and the flow's parameter dtypes, declared, so Dask never runs the flow on
    a dummy chunk to learn it.

    Notes
    -----
    One task per row chunk; the rows are independent, so every value equals
    ``flow.log_prob`` on the whole array (bit-identical: the same arithmetic row by row).
    The flow is a single key of the graph, sent to each worker once. A worker lost during
    the computation loses only its chunks, which Dask recomputes elsewhere: the same result.

    Examples
    --------
    >>> import numpy, dask.array as da
    >>> from refflow import Flow, StandardNormal, Diagonal
    >>> flow = Flow(StandardNormal(1), Diagonal(numpy.array([2.0]), numpy.array([0.0])))
    >>> lp = log_prob(flow, da.zeros((6, 1), chunks=(2, 1)))
    >>> lp.chunks, bool(numpy.allclose(lp.compute(scheduler="sync"),
    ...                                -0.5 * numpy.log(2 * numpy.pi) - numpy.log(2.0)))
    (((2, 2, 2),), True)
    """
    import dask.array as da

    event = _check_flow(flow, "log_prob")
    X = da.asarray(X)
    if X.ndim != 1 + len(event) or tuple(X.shape[1:]) != event:
        raise ValueError(f"X: expected shape (N, {', '.join(map(str, event))}), got "
                         f"{tuple(X.shape)}")
    if X.dtype.kind != "f":
        raise ValueError(f"X: expected a floating-point array, got dtype {X.dtype}")
    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    context_dim = int(getattr(flow, "context_dim", 0) or 0)
    if context is None and context_dim:
        raise ValueError(f"context: this flow expects a context of dimension {context_dim}, "
                         f"got None")
    if context is not None:
        if not context_dim:
            raise ValueError("context: this flow takes no context (context_dim 0)")
        if tuple(getattr(context, "shape", ())) == (context_dim,):
            # one context for every row: one key of the graph, like the flow
            context = _shared(B.asarray(context))
        elif tuple(getattr(context, "shape", ())) == (X.shape[0], context_dim):
            context = da.asarray(context).rechunk((X.chunks[0], -1))
        else:
            raise ValueError(f"context: expected shape ({X.shape[0]}, {context_dim}) or "
                             f"({context_dim},), got {getattr(context, 'shape', context)!r}")
    dtype = _result_dtype(flow, X.dtype)
    meta = numpy.empty_like(X._meta, shape=(0,), dtype=dtype)
    return da.map_blocks(_log_prob_block, X, context, _shared(flow), _settings(),
                         drop_axis=tuple(range(1, X.ndim)), dtype=dtype, meta=meta)


# ------------------------------------------------------------------------- sampling


def _sample_chunk(flow, settings, seed, i, size):
    return _run(settings, flow.sample_and_log_prob, size, chunk_rng(seed, i))


def _sample_parts(flow: Any, n: int, seed: int, chunks: Any):
    import dask
    import dask.array as da

    event = _check_flow(flow, "sample_and_log_prob", conditional=False)
    seed = check_int("seed", seed, minimum=0)
    sizes = _row_chunks(n, chunks)
    dtype = _result_dtype(flow, _base_dtype(flow))
    shared, settings = _shared(flow), _settings()
    xs, lps = [], []
    for i, size in enumerate(sizes):
        part = dask.delayed(_sample_chunk, pure=True)(shared, settings, seed, i, size)
        xs.append(da.from_delayed(part[0], (size,) + event, dtype=dtype,
                                  meta=_meta(1 + len(event), dtype)))
        lps.append(da.from_delayed(part[1], (size,), dtype=dtype, meta=_meta(1, dtype)))
    return da.concatenate(xs), da.concatenate(lps)


def sample_and_log_prob(flow: Any, n: int, seed: int, chunks: Any) -> tuple[Any, Any]:
    r"""n samples x = f(z), z ~ p_z, and their log p(x), as two lazy ``dask.array``\ s.

    Parameters
    ----------
    flow : ``refflow.Flow``.
    n : number of samples.
    seed : a non-negative integer; chunk i draws from ``chunk_rng(seed, i)``.
    chunks : rows per chunk (int) or the chunk sizes (a tuple summing to n).

    Returns
    -------
    x : (n, *event_shape) ``dask.array``, chunked by ``chunks``.
    log_prob : (n,) ``dask.array``; computing x and log_prob together
        (``dask.compute(x, log_prob)``) samples each chunk once.

    Notes
    -----
    Chunk i is ``flow.sample_and_log_prob(size_i, chunk_rng(seed, i))``: its stream is the
    i-th child of ``numpy.random.SeedSequence(seed)``, so the result depends on ``seed``
    and ``chunks`` only, not on the number of workers, the scheduling, or lost and retried
    tasks. The same chunks run locally give bit-identical arrays.

    Examples
    --------
    >>> import numpy, dask
    >>> from refflow import Flow, StandardNormal, Diagonal
    >>> flow = Flow(StandardNormal(2), Diagonal(numpy.ones(2), numpy.zeros(2)))
    >>> x, lp = sample_and_log_prob(flow, 5, seed=0, chunks=2)
    >>> x.chunks[0], dask.compute(x, lp, scheduler="sync")[0].shape
    ((2, 2, 1), (5, 2))
    """
    return _sample_parts(flow, n, seed, chunks)


def sample(flow: Any, n: int, seed: int, chunks: Any) -> Any:
    """n samples x = f(z), z ~ p_z, as a lazy (n, *event_shape) ``dask.array``.

    The x of ``sample_and_log_prob(flow, n, seed, chunks)``: the same streams and values.
    """
    return _sample_parts(flow, n, seed, chunks)[0]


# ------------------------------------------------------------------------- Monte Carlo


def _logsumexp(a: numpy.ndarray) -> float:
    top = float(numpy.max(a))
    if not math.isfinite(top):
        return top
    return top + math.log(float(numpy.sum(numpy.exp(a - top))))


def _mc_chunk(flow, log_target, settings, seed, i, size):
    """Sufficient statistics of w = log p~(z) - log q(z) over one chunk, in host float64."""

    def terms():
        z, log_q = flow.sample_and_log_prob(size, chunk_rng(seed, i))
        out = log_target(z)
        if tuple(getattr(out, "shape", ())) != (size,):
            raise ValueError(f"log_target: expected one log-density per sample, shape "
                             f"({size},), got shape {getattr(out, 'shape', None)}")
        return B.to_numpy(out - log_q).astype(numpy.float64)

    w = _run(settings, terms)
    if not numpy.all(numpy.isfinite(w)):
        raise FloatingPointError(f"log p~(z) - log q(z) is not finite for some samples of "
                                 f"chunk {i}")
    mean = float(numpy.mean(w))
    return (size, mean, float(numpy.sum((w - mean) ** 2)), _logsumexp(w), _logsumexp(2 * w))


def _mc_stats(q, log_target, n, seed, chunks, client):
    """The per-chunk statistics of ``_mc_chunk``, in chunk order."""
    _check_flow(q, "sample_and_log_prob", conditional=False)
    if not callable(log_target):
        raise ValueError(f"log_target: expected a callable z -> log p~(z), got {log_target!r}")
    seed = check_int("seed", seed, minimum=0)
    sizes = _row_chunks(n, chunks)
    settings = _settings()
    with cluster(client) as c:
        # a task, not scattered data: lost with a worker, the scheduler rebuilds it
        shared = c.submit(_identity, q, pure=False)
        futures = [c.submit(_mc_chunk, shared, log_target, settings, seed, i, size, pure=False)
                   for i, size in enumerate(sizes)]
        return c.gather(futures)


def elbo(q: Any, log_target: Callable[[Any], Any], n: int, seed: int, chunks: Any,
         client: Any = None) -> tuple[float, float]:
    r"""Monte Carlo ELBO = mean_i [log p~(z_i) - log q(z_i)], z_i ~ q, and its standard error.

    Parameters
    ----------
    q : ``refflow.Flow``, the variational density.
    log_target : z (m, *event_shape) -> (m,), the unnormalised log-density log p~; it is
        pickled to the workers (a module-level function travels by name: its module must
        be importable there; a lambda or closure travels by value).
    n, seed, chunks : samples, seed and chunking as in ``sample_and_log_prob``.
    client : a ``Client``, a scheduler address, or ``None`` (a local cluster of processes
        for this call, see ``cluster``).

    Returns
    -------
    estimate, standard_error : floats; se = std(w) / sqrt(n) (population std, as
    ``refflow.train.elbo``), infinite for n = 1.

    Notes
    -----
    Each chunk returns its count m_c, mean and centred sum of squares M_c; the driver
    combines them in chunk order with Chan et al.'s update, mean = mean_a + delta m_b / m,
    M = M_a + M_b + delta^2 m_a m_b / m (delta = mean_b - mean_a): the n-sample mean and
    variance, equal to those of the concatenated terms up to summation order (relative
    difference ~1e-15 in float64), never an unweighted average of chunk averages.
    """
    stats = _mc_stats(q, log_target, n, seed, chunks, client)
    count, mean, m2 = 0, 0.0, 0.0
    for m, mean_c, m2_c, _, _ in stats:
        total = count + m
        delta = mean_c - mean
        mean += delta * m / total
        m2 += m2_c + delta * delta * count * m / total
        count = total
    se = math.sqrt(m2 / count) / math.sqrt(count) if count > 1 else math.inf
    return mean, se


def iw_log_likelihood(q: Any, log_target: Callable[[Any], Any], n: int, seed: int,
                      chunks: Any, client: Any = None) -> tuple[float, float]:
    r"""Importance-weighted log Z-hat = log (1/n) sum_i p~(z_i) / q(z_i), z_i ~ q, and its se.

    With log_target(z) = log p(x, z) this is the importance-weighted log-likelihood
    log p(x) (Burda et al.); with an unnormalised target, the log normaliser log Z.

    Parameters
    ----------
    q, log_target, n, seed, chunks, client : as in ``elbo``.

    Returns
    -------
    estimate, standard_error : floats. The standard error is the delta method's
    se(log Z-hat) = se(Z-hat) / Z-hat = sqrt(S_2 / S_1^2 - 1 / n), S_k = sum_i w_i^k
    (w_i the importance weights); n / (S_2 / S_1^2) is the effective sample size.

    Notes
    -----
    Chunks return log S_1 and log S_2 over their own draws (log-sum-exp, so no weight
    overflows); the driver combines them by another log-sum-exp, which is exact: the result
    equals the log-sum-exp of all n terms up to rounding. log Z-hat is biased low by about
    se^2 / 2 (Jensen), and the bias shrinks as 1 / n.

    .. math::

        \log \hat Z = \operatorname{LSE}_c(\log S_{1,c}) - \log n, \qquad
        \mathrm{se} = \sqrt{e^{\operatorname{LSE}_c(\log S_{2,c})
                       - 2 \operatorname{LSE}_c(\log S_{1,c})} - 1/n}
    """
    stats = _mc_stats(q, log_target, n, seed, chunks, client)
    log_s1 = _logsumexp(numpy.array([s[3] for s in stats]))
    log_s2 = _logsumexp(numpy.array([s[4] for s in stats]))
    count = sum(s[0] for s in stats)
    relative = math.exp(log_s2 - 2.0 * log_s1) - 1.0 / count
    return log_s1 - math.log(count), math.sqrt(max(relative, 0.0))


# ------------------------------------------------------------------------- verification


def _verify_one(settings: dict, argv: list) -> tuple[int, str]:
    """``refflow verify`` with ``argv`` on this process: (exit status, printed text)."""
    from refflow.testing import verify_main as local_verify

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = _run(settings, local_verify, list(argv))
    return int(status), out.getvalue()


def _module_file(target: str) -> str | None:
    """The single-file module of a ``MODULE:FACTORY`` target in the current directory."""
    path = target.partition(":")[0].replace(".", os.sep) + ".py"
    return path if os.path.isfile(path) else None


def verify_sweep(argvs: Sequence[Sequence[str]], client: Any = None,
                 upload: Sequence[str] = ()) -> list[tuple[int, str]]:
    """``refflow verify`` for each argument list, spread over a cluster, in the given order.

    Parameters
    ----------
    argvs : argument lists of ``refflow verify`` (``refflow.testing.verify_main``), e.g.
        ``[["refflow.affine:Diagonal", "--dim", "3", "--seed", str(s)] for s in range(8)]``.
    client : a ``Client``, a scheduler address, or ``None`` (a local cluster for this call).
    upload : files sent to every worker first (``Client.upload_file``: ``.py``, ``.zip``,
        ``.egg``), for a factory module that is not installed on the workers.

    Returns
    -------
    list of (exit status, printed text): what ``verify_main(argv)`` returns and prints on
    one process, configuration by configuration (checks are deterministic given the seed,
    so the texts equal the local run's).

    Notes
    -----
    A factory reaches the workers by name: its module must be importable there (installed
    in the workers' environment, or uploaded with ``upload``; ``verify_main`` uploads a
    target module that is a ``.py`` file in the current directory).
    """
    argvs = [list(a) for a in argvs]
    if not argvs or not all(a and all(isinstance(s, str) for s in a) for a in argvs):
        raise ValueError("argvs: expected non-empty lists of command-line strings")
    settings = _settings()
    with cluster(client) as c:
        for path in upload:
            c.upload_file(path)
        futures = [c.submit(_verify_one, settings, a, pure=False) for a in argvs]
        return c.gather(futures)


def verify_main(argv: list[str] | None = None) -> int:
    """``refflow verify TARGET [options] --dask [ADDRESS] [--dims D ...] [--seeds S ...]``.

    Runs ``refflow verify TARGET [options]`` once per (dim, seed) on a Dask cluster (at
    ADDRESS, or a local cluster when ADDRESS is omitted or ``local``) and prints each
    configuration's table under a header line, as the local runs print them. Exit status:
    the largest of the runs' (0 all pass, 1 a check failed, 2 a usage error).
    """
    parser = argparse.ArgumentParser(prog="refflow verify --dask", add_help=False)
    parser.add_argument("--dask", nargs="?", const="local", required=True)
    parser.add_argument("--dims", type=int, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+")
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (args.dims and "--dim" in rest) or (args.seeds and "--seed" in rest):
        print("refflow verify: error: give --dim or --dims, --seed or --seeds, not both")
        return 2
    configs = [rest + (["--dim", str(d)] if d is not None else [])
               + (["--seed", str(s)] if s is not None else [])
               for d in (args.dims or [None]) for s in (args.seeds or [None])]
    target = next((a for a in rest if not a.startswith("-")), "")
    module = _module_file(target)
    results = verify_sweep(configs, args.dask, upload=[module] if module else [])
    for config, (_, text) in zip(configs, results):
        print(f"== refflow verify {' '.join(config)}")
        print(text, end="")
    return max(status for status, _ in results)


# ------------------------------------------------------------------------- training


def _share(flow: Any, x: Any, total: int) -> Any:
    """This part's share of the batch NLL, -(1/|B|) sum_{x in part} log p(x) (``train.nll``
    times |part| / |B|, written as the sum over the part divided by the global batch size).
    """
    import autograd.numpy as anp

    return -anp.sum(flow.log_prob(x)) / total


def _grad_part(settings, flow, params, block, rows, total):
    """(rows used, this part's share of the batch NLL, its gradient), on a worker.

    Summed over the parts of a global batch, the shares are the batch NLL and the gradients
    its gradient.
    """
    from refflow.train import _flat_parameters

    def work():
        _, rebuild = _flat_parameters(flow)
        x = block[B.asarray(rows)]
        value, grads = value_and_grad(lambda p: _share(rebuild(p), x, total))(params)
        return len(rows), value, grads

    return _run(settings, work)


def _blocks(data: Any, event: tuple, client: Any) -> tuple[list, numpy.ndarray, bool]:
    """Futures of the row blocks of ``data`` on the workers, their row offsets, and whether
    they are scattered (no lineage: a lost one cannot be recomputed)."""
    import dask.array as da

    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("data: expected at least one shard")
        for k, shard in enumerate(data):
            if not B.is_array(shard) or tuple(shard.shape[1:]) != event or shard.shape[0] < 1:
                raise ValueError(f"data: shard {k} must be a non-empty array of shape "
                                 f"(m, {', '.join(map(str, event))})")
        sizes = [shard.shape[0] for shard in data]
        dtype = numpy.result_type(*(shard.dtype for shard in data))
        # scattered shards have no lineage: a worker lost with one fails the step (below)
        futures = client.scatter(list(data), hash=False)
    elif isinstance(data, da.Array):
        if data.ndim != 1 + len(event) or tuple(data.shape[1:]) != event:
            raise ValueError(f"data: expected shape (N, {', '.join(map(str, event))}), got "
                             f"{tuple(data.shape)}")
        data = data.rechunk({axis: -1 for axis in range(1, data.ndim)})
        sizes, dtype = list(data.chunks[0]), data.dtype
        # computed blocks keep their graph: a block lost with a worker is recomputed
        futures = client.compute(list(data.to_delayed().ravel()))
    else:
        raise ValueError(f"data: expected a dask.array or a list of shards, got "
                         f"{type(data).__name__}")
    if numpy.dtype(dtype).kind != "f":
        raise ValueError(f"data: expected floating-point values, got dtype {dtype}")
    return futures, numpy.cumsum([0] + sizes), isinstance(data, (list, tuple))


def _identity(obj: Any) -> Any:
    return obj


def _gather_step(distributed: Any, client: Any, parts: list, blocks: list, step: int) -> list:
    """The results of one step's tasks, or ``RuntimeError`` when they cannot all complete.

    A task whose input was scattered data lost with its worker would wait forever (the
    scheduler cannot recompute it), so the wait polls the status of the scattered ``blocks``
    (a lost computed block is only briefly "lost": the scheduler recomputes it).
    """
    lost: list = []
    try:
        while not lost:
            try:
                distributed.wait(parts, timeout=0.5)
                return client.gather(parts)
            except distributed.TimeoutError:
                lost = [k for k, block in enumerate(blocks) if block.status == "lost"]
    except (distributed.KilledWorker, distributed.CancelledError) as exc:
        # a task that killed a worker on every retry, or one the scheduler dropped when its
        # input was lost; an error raised by the computation itself passes as it is
        raise RuntimeError(f"fit: step {step} failed on the cluster ({exc!r}); no partial "
                           f"batch was used") from exc
    raise RuntimeError(f"fit: step {step} cannot complete: shards {lost} were lost with "
                       f"their worker (scattered data cannot be recomputed; pass a dask.array "
                       f"to have lost blocks recomputed)")


def fit(flow: Any, data: Any, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
        rng: Any = None, *, client: Any = None, eval_every: int = 50,
        schedule: str | Callable[[int], float] = "constant", clip_norm: float | None = None,
        callback: Callable[..., Any] | None = None) -> tuple[Any, dict]:
    r"""Data-parallel maximum likelihood: ``refflow.fit`` with the batch spread over workers.

    Parameters
    ----------
    flow : ``refflow.Flow``.
    data : (N, *event_shape) ``dask.array`` (chunked by rows; its blocks are computed once
        and stay on the workers, so N may exceed one worker's memory), or a list of shards,
        (N_s, *event_shape) arrays that are scattered over the workers; rows are numbered
        as in their concatenation.
    steps, batch_size, lr, rng, eval_every, schedule, clip_norm, callback : as in
        ``refflow.fit`` (no validation split here: evaluate with ``log_prob``).
    client : a ``Client``, a scheduler address, or ``None`` (a local cluster for this call).
        Its workers must run one thread each.

    Returns
    -------
    flow, history : as ``refflow.fit`` (``"loss"``: every step's batch NLL; ``"step"``,
        ``"lr"`` per evaluation).

    Raises
    ------
    ValueError : bad arguments, or workers with more than one thread.
    RuntimeError : a step could not be completed (a shard lost with its worker and no way to
        recompute it, a task that failed on every retry), naming the step.
    FloatingPointError : the NLL or a gradient became NaN or infinite.

    Notes
    -----
    Lecture: "MLE problem". Each step, the driver draws the global batch indices exactly as
    ``refflow.fit`` draws its batch (the same generator calls, ``train._batches`` on the row
    numbers), each worker computes the share -(1/|B|) sum log p(x) of its rows and its
    gradient, and the driver sums the parts, checks that they cover all |B| rows, and takes
    one Adam step. The result equals ``refflow.fit`` with the same seed and batch size up to
    the order of the sums over rows (tests: relative difference below 1e-9 after 30 steps
    in float64). The parameters go out once per step (broadcast), the flow's structure once.
    A worker lost during a step: its tasks are rerun elsewhere (and a lost ``dask.array``
    block recomputed), so the step completes with the same numbers; a lost scattered shard
    cannot be recomputed and the step fails with ``RuntimeError``. No step ever proceeds on
    part of a batch.
    """
    from refflow import train

    train._check_common(steps, batch_size, lr, rng, clip_norm, eval_every, schedule)
    event = _check_flow(flow, "log_prob", conditional=False)
    distributed = _distributed()
    settings = _settings()
    params, rebuild = train._flat_parameters(flow)  # one vector, as refflow.fit trains
    opt = train.Adam(lr=lr)
    state = opt.init(params)
    history: dict[str, Any] = {"loss": [], "step": [], "lr": []}
    history["train_nll"] = history["loss"]
    with cluster(client) as c:
        threads = c.nthreads()
        if any(t != 1 for t in threads.values()):
            raise ValueError(f"client: fit needs workers with one thread each (autograd's "
                             f"tape is not thread-safe), got {threads}")
        futures, offsets, scattered = _blocks(data, event, c)
        n = int(offsets[-1])
        size = min(batch_size, n)
        batches = train._batches(B.arange(n), size, rng)
        # the flow and each step's parameters are tasks, not scattered data: a worker lost
        # with them is no loss, the scheduler recomputes them from the task's spec
        shared = c.submit(_identity, flow, pure=False)

        def value_and_grads(p, step, rows):
            """The batch NLL and its gradient: the sum of the parts computed on the workers."""
            owner = numpy.searchsorted(offsets, rows, side="right") - 1
            sent = c.submit(_identity, p, pure=False)
            parts = [c.submit(_grad_part, settings, shared, sent, futures[b],
                              rows[owner == b] - offsets[b], size, pure=False)
                     for b in numpy.unique(owner)]
            results = _gather_step(distributed, c, parts, futures if scattered else [], step)
            if sum(r[0] for r in results) != size:
                raise RuntimeError(f"fit: step {step} covered {sum(r[0] for r in results)} "
                                   f"of {size} rows")
            return (sum(r[1] for r in results),
                    [sum(g) for g in zip(*(r[2] for r in results))])

        for step in range(1, steps + 1):
            rate = train.learning_rate(schedule, lr, step - 1, steps)
            params, state, loss, grads = train._gradient_step(
                value_and_grads, params, state, opt, rate, clip_norm, step,
                B.to_numpy(next(batches)))
            history["loss"].append(float(B.to_numpy(loss)))
            if step % eval_every and step != steps:
                continue
            train._check_finite_step(history["loss"][-1], grads, step, "training NLL")
            history["step"].append(step)
            history["lr"].append(rate)
            if callback is not None and callback(step, rebuild(params), history) is True:
                break
    return rebuild(params), history


# ------------------------------------------------------------------------- command line


def _npy_rows(path: str, start: int, stop: int) -> numpy.ndarray:
    return numpy.array(numpy.load(path, mmap_mode="r")[start:stop])


def read_npy(path: str, chunk: int = 65536) -> Any:
    """A ``.npy`` file as a ``dask.array`` of ``chunk`` rows per block, read by the workers.

    Each block is one task that memory-maps the file and copies its rows, so the file is
    never loaded whole, nor sent through the scheduler; on a cluster, ``path`` must be on a
    file system that every worker sees.
    """
    import dask
    import dask.array as da

    chunk = check_int("chunk", chunk)
    path = os.path.abspath(path)
    try:
        header = numpy.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"path: cannot read {path!r} as .npy ({exc})") from None
    if header.ndim < 2 or header.shape[0] < 1:
        raise ValueError(f"path: expected rows of samples, got shape {header.shape}")
    n, rest = header.shape[0], tuple(header.shape[1:])
    return da.concatenate([
        da.from_delayed(dask.delayed(_npy_rows, pure=True)(path, s, min(s + chunk, n)),
                        (min(chunk, n - s),) + rest, dtype=header.dtype)
        for s in range(0, n, chunk)])


def main(argv: list[str] | None = None) -> int:
    """``python -m refflow.dask log-prob --model M.npz --data X.npy --out LOGP.npy [--dask
    ADDRESS] [--chunk ROWS]``: log p(x) of every row, evaluated on a Dask cluster.

    Without ``--dask``, a local cluster of processes (one per core) is started and closed.
    Exit status 0, or 2 for a usage error (unreadable model or data, wrong shape).
    """
    parser = argparse.ArgumentParser(prog="python -m refflow.dask")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("log-prob", help="log p(x) per row of a .npy file, on a cluster")
    p.add_argument("--model", required=True, help="a model saved by refflow.save (.npz)")
    p.add_argument("--data", required=True, help="a .npy file, one row per sample")
    p.add_argument("--out", required=True, help="output .npy file, one value per row")
    p.add_argument("--dask", default=None, help="scheduler address (default: a local cluster)")
    p.add_argument("--chunk", type=int, default=65536, help="rows per task (default 65536)")
    args = parser.parse_args(argv)
    from refflow.io import load

    try:
        flow = load(args.model)
        rows = read_npy(args.data, args.chunk)
        with cluster(args.dask) as client:
            log_p = B.to_numpy(client.compute(log_prob(flow, rows)).result())
    except ValueError as exc:
        print(f"python -m refflow.dask: error: {exc}")
        return 2
    numpy.save(args.out, log_p)
    print(f"mean log p(x) {float(numpy.mean(log_p)):.4f} nats over {log_p.shape[0]} rows; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
