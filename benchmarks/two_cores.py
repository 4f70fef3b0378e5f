"""Two cores for the training step: one thread, BLAS on two threads, two processes.

The training step is ``refflow.fit``'s (the value and gradient of the batch NLL with respect
to the flat parameter vector, then Adam: ``train._gradient_step``) for the MAF, RealNVP and
spline flow (``nsf``) of ``benchmarks/models.py``, D 16 and 64, batch 256 and 8192, float32,
in three settings timed interleaved in one run (one call each, in rotating order,
``--repeats`` times, after one warm-up call each; each timed step follows an untimed one,
as steps follow each other in training):

- (a) one thread: BLAS held to one thread;
- (b) one process with BLAS on two threads (what ``threadpoolctl`` or ``OPENBLAS_NUM_THREADS``
  gives; autograd itself stays on one thread);
- (c) two processes (``refflow.workers.GradientWorkers(..., processes=2)``, what
  ``fit(..., processes=2)`` runs): this process and one worker, BLAS on one thread each.

Every step starts from the same parameters and optimiser state, so all settings compute the
same step. After each (b) call the run pauses 0.2 s, until OpenBLAS's idle threads stop
spinning, so that they take no core from the setting timed next. The table gives medians,
the ratios (b)/(a) and (c)/(a) (below 1: faster), their geometric means per batch, and the
largest difference between the gradients of (c) and (a) (absolute, and relative to the
largest gradient entry; float32, the order of the sums over rows differs). A last line
measures the fixed cost of the process round trip: (c) - (a) on a 2-row batch of a 2-D
``Diagonal`` flow, where each part costs a few operations.

Usage::

    python -m benchmarks.two_cores                     # the grid, 20 repeats
    python -m benchmarks.two_cores --repeats 3 --json two_cores.json

Not part of the unit tests. Timings on a shared machine are noisy (docs/performance.md):
compare the ratios of one run, and say what the load was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy
from threadpoolctl import ThreadpoolController

from benchmarks.models import refflow_impl

MODELS = ("maf", "realnvp", "nsf")
DIMS = (16, 64)
BATCHES = (256, 8192)
DTYPE = "float32"
SETTINGS = ("a", "b", "c")
SPIN_PAUSE = 0.2


def _flow(model: str, dim: int) -> Any:
    # refflow_impl hands an unconditional model's log_prob as the flow's bound method
    return refflow_impl(model, dim, DTYPE).log_prob.__self__


def _steps(flow: Any, data: numpy.ndarray, batch: int, workers: Any) -> dict:
    """One training step per setting: ``() -> gradient``, from the same starting point."""
    from autograd import value_and_grad

    from refflow.train import Adam, _flat_parameters, _gradient_step, nll

    params, rebuild = _flat_parameters(flow)
    opt = Adam(lr=1e-3)
    state = opt.init(params)
    one = value_and_grad(lambda p, x: nll(rebuild(p), x))
    x, rows = data[:batch], numpy.arange(batch)

    def in_this_process() -> Any:
        return _gradient_step(one, params, state, opt, 1e-3, None, x)[3][0]

    def in_two_processes() -> Any:
        return _gradient_step(workers.value_and_grads, params, state, opt, 1e-3, None,
                              rows)[3][0]

    return {"a": in_this_process, "b": in_this_process, "c": in_two_processes}


def _time(step: Callable[[], Any], blas: Any, threads: int) -> tuple[float, Any]:
    limiter = blas.limit(limits=threads, user_api="blas")
    try:
        # training runs its steps back to back: the step timed follows one untimed, so no
        # process is timed waking from the pause below (a cold worker costs a step ~2x)
        step()
        start = time.perf_counter()
        grad = step()
        return time.perf_counter() - start, grad
    finally:
        limiter.restore_original_limits()


def _call(setting: str, steps: dict, blas: Any) -> tuple[float, Any]:
    seconds, grad = _time(steps[setting], blas, 2 if setting == "b" else 1)
    if setting == "b":
        # OpenBLAS's threads spin for about 0.1 s after a call (its THREAD_TIMEOUT) before
        # they sleep: the next setting would find one of the two cores taken
        time.sleep(SPIN_PAUSE)
    return seconds, grad


def measure(steps: dict, repeats: int, blas: Any,
            settings: tuple = SETTINGS) -> tuple[dict, dict]:
    """Median seconds per setting, calls interleaved in rotating order; and the gradients."""
    grads = {s: _call(s, steps, blas)[1] for s in settings}  # warm-up
    times: dict[str, list] = {s: [] for s in settings}
    for r in range(repeats):
        k = r % len(settings)
        for s in settings[k:] + settings[:k]:
            times[s].append(_call(s, steps, blas)[0])
    return {s: statistics.median(t) for s, t in times.items()}, grads


def round_trip(repeats: int, blas: Any) -> float:
    """(c) - (a) in seconds on a 2-row batch of a 2-D Diagonal flow: the fixed cost."""
    from refflow import Diagonal, Flow, StandardNormal, backend
    from refflow.workers import GradientWorkers

    flow = Flow(StandardNormal(2), Diagonal.init(backend.rng(0), 2))
    data = backend.rng(1).normal(0.0, 1.0, (2, 2))
    with GradientWorkers(flow, data, processes=2) as workers:
        seconds, _ = measure(_steps(flow, data, 2, workers), max(repeats, 200), blas,
                             ("a", "c"))
    return seconds["c"] - seconds["a"]


def run(models: tuple, dims: tuple, batches: tuple, repeats: int) -> dict:
    from refflow import backend
    from refflow.workers import GradientWorkers

    blas = ThreadpoolController()
    rows = []
    for model in models:
        for dim in dims:
            flow = _flow(model, dim)
            data = backend.rng(1).standard_normal((max(batches), dim)).astype(DTYPE)
            start = time.perf_counter()
            with GradientWorkers(flow, data, processes=2) as workers:
                startup = time.perf_counter() - start
                for batch in batches:
                    seconds, grads = measure(_steps(flow, data, batch, workers), repeats, blas)
                    diff = float(numpy.max(numpy.abs(grads["c"] - grads["a"])))
                    scale = float(numpy.max(numpy.abs(grads["a"])))
                    rows.append(dict(model=model, dim=dim, batch=batch, seconds=seconds,
                                     grad_diff=diff, grad_rel_diff=diff / scale,
                                     startup_seconds=startup))
                    print(_row_text(rows[-1]), flush=True)
    return dict(rows=rows, round_trip_seconds=round_trip(repeats, blas),
                meta=dict(repeats=repeats, dtype=DTYPE, load=os.getloadavg(),
                          cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M")))


def _row_text(row: dict) -> str:
    t = row["seconds"]
    return (f"| {row['model']} | {row['dim']} | {row['batch']} | {1e3 * t['a']:.2f} | "
            f"{1e3 * t['b']:.2f} | {1e3 * t['c']:.2f} | {t['b'] / t['a']:.2f} | "
            f"{t['c'] / t['a']:.2f} | {row['grad_diff']:.1e} ({row['grad_rel_diff']:.1e}) |")


def _geomean(values: list) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(result: dict) -> list[str]:
    """The geometric means per batch and the round trip, as lines of text."""
    lines = []
    for batch in sorted({row["batch"] for row in result["rows"]}):
        chosen = [row["seconds"] for row in result["rows"] if row["batch"] == batch]
        b = _geomean([t["b"] / t["a"] for t in chosen])
        c = _geomean([t["c"] / t["a"] for t in chosen])
        lines.append(f"batch {batch}: geometric mean (b)/(a) {b:.2f}, (c)/(a) {c:.2f}")
    lines.append(f"process round trip, fixed cost per step: "
                 f"{1e6 * result['round_trip_seconds']:.0f} us")
    return lines


HEADER = ("| model | D | batch | (a) 1 thread, ms | (b) BLAS 2 threads, ms | (c) 2 processes, "
          "ms | (b)/(a) | (c)/(a) | max abs grad diff (c) vs (a) (rel.) |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per setting")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--dims", nargs="+", type=int, default=list(DIMS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    args = parser.parse_args(argv)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"training step, {DTYPE}, median of {args.repeats} interleaved calls; "
          f"load average {load} on {os.cpu_count()} CPUs\n")
    print(HEADER, flush=True)
    result = run(tuple(args.models), tuple(args.dims), tuple(args.batches), args.repeats)
    print()
    print("\n".join(summary(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
