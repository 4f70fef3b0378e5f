"""refflow.dask on a LocalCluster against one process: throughput and training-step overhead.

For RealNVP and MAF at D = 16 (the architectures of ``benchmarks/models.py``), float32:

1. ``log_prob`` of N rows and sampling N rows, in chunks of ``--chunk`` rows: one process
   with ``refflow.set_threads(2)``, and ``refflow.dask`` on 1 and 2 worker processes (one
   thread each). The rows are generated and persisted on the workers before the clock
   starts; the results are persisted on the workers (not gathered), as a pipeline would.
2. The data-parallel training step (``refflow.dask.fit``) at batch 256, 8192 and 65536
   against ``refflow.fit``'s step on one process (one thread, BLAS too): the median time per step,
   taken from a callback at every step after the first.

Usage: ``python -m benchmarks.dask_scaling [--rows 1000000] [--output FILE]`` (a Markdown
table on stdout and in FILE).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy
from threadpoolctl import threadpool_limits

from benchmarks.models import HIDDEN, LAYERS

DIM, DTYPE = 16, "float32"
BATCHES = (256, 8192, 65536)


def build(model: str, seed: int = 0) -> Any:
    """The benchmarked MAF or RealNVP of ``benchmarks/models.py`` as a ``refflow.Flow``."""
    from refflow import backend as B
    from refflow.affine import Reverse
    from refflow.autoregressive import MAF
    from refflow.core import Compose, Flow
    from refflow.coupling import AffineCoupling
    from refflow.distributions import StandardNormal
    from refflow.tree import map_arrays

    rng = B.rng(seed)
    if model == "maf":
        layers = [MAF.init(rng, DIM, HIDDEN, order=("natural", "reversed")[i % 2],
                           activation="relu") for i in range(LAYERS[model])]
    else:
        layers = []
        for i in range(LAYERS[model]):
            layers += [Reverse()] if i else []
            layers.append(AffineCoupling.init(rng, DIM, hidden=HIDDEN, activation="relu"))
    flow = Flow(StandardNormal(DIM, dtype=DTYPE), Compose(*layers))
    return map_arrays(lambda a: a.astype(DTYPE) if a.dtype.kind == "f" else a, flow)


def _clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(model: str, rows: int, chunk: int) -> dict:
    """Seconds for log_prob and sampling of ``rows`` rows: one process and 1, 2 workers."""
    import dask.array as da
    import distributed

    import refflow
    import refflow.dask as rd

    flow = build(model)
    sizes = [min(chunk, rows - s) for s in range(0, rows, chunk)]
    X = numpy.random.default_rng(1).standard_normal((rows, DIM)).astype(DTYPE)
    out: dict[str, float] = {}
    refflow.set_threads(2)
    try:
        out["log_prob, 1 process 2 threads"] = _clock(
            lambda: [flow.log_prob(X[s:s + chunk]) for s in range(0, rows, chunk)])
        out["sample, 1 process 2 threads"] = _clock(
            lambda: [flow.sample_and_log_prob(m, rd.chunk_rng(0, i))
                     for i, m in enumerate(sizes)])
    finally:
        refflow.set_threads(1)
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            data = da.random.default_rng(1).standard_normal((rows, DIM), chunks=(chunk, DIM))
            data = client.persist(data.astype(DTYPE))
            distributed.wait(data)
            lp = rd.log_prob(flow, data)  # building the graph is not timed
            out[f"log_prob, {workers} worker(s)"] = _clock(
                lambda lp=lp: distributed.wait(client.persist(lp)))
            out[f"sample, {workers} worker(s)"] = _clock(
                lambda: distributed.wait(client.persist(
                    list(rd.sample_and_log_prob(flow, rows, 0, chunk)))))
    return out


def step_times(model: str, batch: int, steps: int) -> dict:
    """Median seconds per training step: ``refflow.fit`` and ``refflow.dask.fit`` (1, 2)."""
    import dask.array as da
    import distributed

    import refflow
    import refflow.dask as rd
    from refflow import backend as B

    rows = max(4 * batch, 65536)
    # the flow's own samples without their least likely 5%: at the random initialisation,
    # standard normal rows reach log-densities of -1e9 and a few samples overflow float32
    # after a step, and fit stops at a non-finite NLL
    source = build(model, seed=1)
    X, lp = map(B.to_numpy, source.sample_and_log_prob(rows + rows // 10, B.rng(2)))
    X = X[lp > numpy.quantile(lp[numpy.isfinite(lp)], 0.05)][:rows]
    stamps: list[float] = []

    def stamp(step, flow, history):
        stamps.append(time.perf_counter())

    def median_step() -> float:
        return statistics.median(numpy.diff(stamps))

    out = {}
    # BLAS on one thread, as in Dask's workers (their nannies set OMP/OPENBLAS_NUM_THREADS=1)
    with threadpool_limits(1):
        refflow.fit(build(model), X, steps=steps, batch_size=batch, lr=1e-4, rng=B.rng(0),
                    eval_every=1, callback=stamp, progress=False)
    out["1 process"] = median_step()
    for workers in (1, 2):
        stamps.clear()
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            data = da.from_array(X, chunks=(rows // 4, DIM))
            rd.fit(build(model), data, steps=steps, batch_size=batch, lr=1e-4,
                   rng=B.rng(0), client=client, eval_every=1, callback=stamp)
        out[f"{workers} worker(s)"] = median_step()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--output", default=None)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def emit(line: str) -> None:
        # printed as measured: a long run interrupted keeps what it has
        lines.append(line)
        print(line, flush=True)

    if not args.skip_throughput:
        for line in (f"Throughput, {args.rows} rows, chunks of {args.chunk}, D {DIM}, {DTYPE}",
                     "", "| model | run | seconds | rows/s |", "|---|---|---|---|"):
            emit(line)
        for model in ("realnvp", "maf"):
            for run, seconds in throughput(model, args.rows, args.chunk).items():
                emit(f"| {model} | {run} | {seconds:.2f} | {args.rows / seconds:.3g} |")
    for line in ("", f"Training step, median seconds per step (D {DIM}, {DTYPE})", "",
                 "| model | batch | 1 process | 1 worker | 2 workers | overhead (1 worker - "
                 "1 process) |", "|---|---|---|---|---|---|"):
        emit(line)
    for model in ("realnvp", "maf"):
        for batch in BATCHES:
            t = step_times(model, batch, steps=12 if batch < 65536 else 5)
            emit(f"| {model} | {batch} | {t['1 process']:.4f} | {t['1 worker(s)']:.4f} | "
                 f"{t['2 worker(s)']:.4f} | {t['1 worker(s)'] - t['1 process']:.4f} |")
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
