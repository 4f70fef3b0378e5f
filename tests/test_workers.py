"""Data-parallel gradients over worker processes (``refflow.workers``, ``fit(processes=)``).

Tolerances: two processes compute the same numbers as one except for the order of the sums
over a batch's rows (each part reduces its rows, then the parts are added), so gradients and
values agree to a few ulp of the largest entry: relative 1e-12 in float64 (measured: 1e-16
to 1e-15). A fit of 20 steps feeds those differences through Adam, which divides each entry
by its own running scale (small entries' rounding counts as much as large ones'); its
parameters are held to 1e-9 relative (measured: 1e-16). A part computed by a worker alone,
on the same rows, is the same sequence of operations as in this process: bit-identical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy
import pytest
from autograd import value_and_grad
from threadpoolctl import threadpool_info

import refflow.workers as workers_module
from refflow import backend as B
from refflow import fast
from refflow.affine import Reverse
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow
from refflow.coupling import AffineCoupling
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline
from refflow.train import _flat_parameters, fit, nll
from refflow.workers import GradientWorkers

RTOL = 1e-12  # gradients and values, float64: only the order of the sums over rows differs
FIT_RTOL = 1e-9  # parameters after a 20-step fit: those differences, through Adam
ROWS, DIM, CONTEXT = 120, 3, 2


def _flows() -> dict:
    rng = B.rng(0)
    return {
        "maf": Flow(StandardNormal(DIM), Compose(
            MAF.init(rng, DIM, hidden=(8,)), MAF.init(rng, DIM, hidden=(8,), order="reversed"))),
        "realnvp": Flow(StandardNormal(DIM), Compose(
            AffineCoupling.init(rng, DIM, hidden=(8,)), Reverse(),
            AffineCoupling.init(rng, DIM, hidden=(8,)))),
        "spline": Flow(StandardNormal(DIM), MAF.init(
            rng, DIM, hidden=(8,), transformer=RationalQuadraticSpline, bins=4, bound=4.0)),
        "conditional": Flow(StandardNormal(DIM), Compose(
            MAF.init(rng, DIM, hidden=(8,), context_dim=CONTEXT),
            MAF.init(rng, DIM, hidden=(8,), order="reversed", context_dim=CONTEXT))),
    }


FLOWS = _flows()
DATA = B.rng(1).normal(0.0, 1.0, (ROWS, DIM))
CONTEXTS = B.rng(2).normal(0.0, 1.0, (ROWS, CONTEXT))


def _context(name: str):
    return CONTEXTS if name == "conditional" else None


@pytest.fixture(scope="module")
def pools():
    """One pool of two processes per flow, shared by the tests that leave them working."""
    started = {name: GradientWorkers(flow, DATA, _context(name), processes=2)
               for name, flow in FLOWS.items()}
    yield started
    for pool in started.values():
        pool.close()


def _one_process(name: str, rows) -> tuple:
    params, rebuild = _flat_parameters(FLOWS[name])
    context = None if _context(name) is None else CONTEXTS[rows]
    value, (grad,) = value_and_grad(lambda p: nll(rebuild(p), DATA[rows], context))(params)
    return value, grad


def _close_to(got: tuple, want: tuple, rtol: float = RTOL) -> None:
    value, (grad,) = got
    assert abs(value - want[0]) <= rtol * abs(want[0])
    scale = numpy.max(numpy.abs(want[1]))
    assert scale > 0
    assert numpy.max(numpy.abs(grad - want[1])) <= rtol * scale


def _shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name.lstrip("/")))


def _worker_children() -> set:
    """The pids of this process's live gradient workers (the module's pools among them)."""
    return {p.pid for p in multiprocessing.active_children()
            if p.name.startswith("refflow-gradient-worker")}


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocked wait in the main thread."""
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", list(FLOWS))
def test_gradient_of_two_processes_is_the_one_process_gradient(pools, name):
    rows = B.rng(3).permutation(ROWS)[:37]  # shuffled rows, an odd batch: parts of 18 and 19
    params, _ = _flat_parameters(FLOWS[name])
    got = pools[name].value_and_grads(params, rows)
    _close_to(got, _one_process(name, rows))
    # the worker's rows count: the first part alone is far from the whole batch
    alone = _one_process(name, rows[:18])
    assert numpy.max(numpy.abs(got[1][0] - alone[1])) > 1e3 * RTOL * numpy.max(
        numpy.abs(alone[1]))
    assert got[1][0].dtype == params[0].dtype and got[1][0].shape == params[0].shape


@pytest.mark.parametrize("batch", [1, 2, 3, 5, ROWS])
def test_batches_not_divisible_by_the_processes(pools, batch):
    rows = B.rng(batch).permutation(ROWS)[:batch]
    params, _ = _flat_parameters(FLOWS["maf"])
    _close_to(pools["maf"].value_and_grads(params, rows), _one_process("maf", rows))


def test_three_processes_and_fewer_rows_than_processes():
    params, _ = _flat_parameters(FLOWS["conditional"])
    with GradientWorkers(FLOWS["conditional"], DATA, CONTEXTS, processes=3) as pool:
        assert len(pool.pids) == 2 and len(set(pool.pids)) == 2
        for batch in (1, 2, 7, 8):  # 1, 2: this process has no rows; 7, 8: uneven parts
            rows = B.rng(batch).permutation(ROWS)[:batch]
            _close_to(pool.value_and_grads(params, rows), _one_process("conditional", rows))


def test_the_step_follows_the_parameters(pools):
    params, rebuild = _flat_parameters(FLOWS["realnvp"])
    moved = [params[0] + 0.01 * B.rng(4).normal(0.0, 1.0, params[0].shape)]
    rows = numpy.arange(ROWS)
    value, _ = pools["realnvp"].value_and_grads(moved, rows)
    assert abs(value - float(nll(rebuild(moved), DATA))) <= RTOL * abs(value)


def test_a_worker_alone_computes_under_the_callers_fast_switch(pools):
    """One row: this process has no part, the worker computes all of it. Its value and
    gradient are bit-identical to this process's under the same switch, and the two switches
    give different bits, so the worker's result tells which one it ran under."""
    rows = numpy.array([5])
    params, _ = _flat_parameters(FLOWS["spline"])
    results = {}
    for flag in (True, False):
        with fast.enabled(flag):
            value, (grad,) = pools["spline"].value_and_grads(params, rows)
            want = _one_process("spline", rows)
        assert value == want[0] and numpy.array_equal(grad, want[1])
        results[flag] = grad
    assert not numpy.array_equal(results[True], results[False])


def test_workers_hold_blas_to_one_thread_and_this_process_gets_its_limit_back(pools):
    assert all(info["blas_threads"] and set(info["blas_threads"]) == {1}
               for pool in pools.values() for info in pool.info)
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    params, _ = _flat_parameters(FLOWS["maf"])
    pools["maf"].value_and_grads(params, numpy.arange(10))
    after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert after == before


def test_fit_with_two_processes_equals_fit_with_one():
    """20 steps with validation, a schedule, clipping and a callback: the same batches, the
    same losses and parameters (conditional flow: the context rows travel with the data)."""
    before = _worker_children()
    for name, extra in (("maf", {}), ("conditional", {"context": CONTEXTS})):
        seen: dict = {1: [], 2: []}
        runs = {}
        for processes in (1, 2):
            runs[processes] = fit(
                FLOWS[name], DATA, steps=20, batch_size=25, lr=1e-2, rng=B.rng(5),
                validation=0.2, eval_every=5, schedule="cosine", clip_norm=5.0,
                callback=lambda step, flow, history, steps=seen[processes]: steps.append(step),
                progress=False, processes=processes, **extra)
        (flow1, hist1), (flow2, hist2) = runs[1], runs[2]
        assert seen[1] == seen[2] == [5, 10, 15, 20]
        numpy.testing.assert_allclose(hist2["loss"], hist1["loss"], rtol=FIT_RTOL)
        numpy.testing.assert_allclose(hist2["val_nll"], hist1["val_nll"], rtol=FIT_RTOL)
        assert hist2["best_step"] == hist1["best_step"]
        v1, v2 = _flat_parameters(flow1)[0][0], _flat_parameters(flow2)[0][0]
        assert numpy.max(numpy.abs(v2 - v1)) <= FIT_RTOL * numpy.max(numpy.abs(v1))
        assert numpy.max(numpy.abs(v1 - _flat_parameters(FLOWS[name])[0][0])) > 1e-3
    assert _worker_children() == before


def test_a_worker_killed_mid_fit_fails_the_step_and_leaves_nothing():
    shm_names = []
    original = GradientWorkers.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        shm_names.append(self._memory.name)

    before = _worker_children()

    def kill_at_step_3(step, flow, history):
        if step == 3:
            for pid in _worker_children() - before:
                os.kill(pid, signal.SIGKILL)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GradientWorkers, "__init__", remember)
        with _deadline(60), pytest.raises(RuntimeError, match="killed by SIGKILL"):
            fit(FLOWS["maf"], DATA, steps=10, batch_size=20, rng=B.rng(6), eval_every=1,
                callback=kill_at_step_3, progress=False, processes=2)
    assert shm_names and not _shm_exists(shm_names[0])
    assert _worker_children() == before


def test_a_worker_that_raises_fails_the_step_with_its_traceback():
    """NumPy's error state travels: an overflow only in the worker's rows raises there."""
    flow = Flow(StandardNormal(2), Compose(MAF.init(B.rng(7), 2, hidden=(4,))))
    data = numpy.array([[0.1, 0.2], [0.3, -0.1], [1e200, 0.0], [0.5, 0.5]])
    params, _ = _flat_parameters(flow)
    before = _worker_children()
    pool = GradientWorkers(flow, data, processes=2)
    name = pool._memory.name
    with numpy.errstate(over="ignore", invalid="ignore"):  # as given: a non-finite value
        value, _ = pool.value_and_grads(params, numpy.arange(4))
    assert not numpy.isfinite(value)
    with _deadline(60), numpy.errstate(over="raise"), pytest.raises(
            RuntimeError, match=r"(?s)worker 1 .* raised during the step.*FloatingPointError"):
        pool.value_and_grads(params, numpy.arange(4))  # rows 2, 3 are the worker's
    with pytest.raises(RuntimeError, match="closed"):
        pool.value_and_grads(params, numpy.arange(2))
    assert not _shm_exists(name) and _worker_children() == before
    # in this process's rows, the error is raised as it is, as the one-process step raises it
    pool = GradientWorkers(flow, data, processes=2)
    name = pool._memory.name
    with _deadline(60), numpy.errstate(over="raise"), pytest.raises(FloatingPointError):
        pool.value_and_grads(params, numpy.array([2, 0, 1, 3]))  # row 2 is this process's
    assert pool._closed and not _shm_exists(name) and _worker_children() == before


def _refuse_to_load():
    raise RuntimeError("this flow cannot be rebuilt here")


@dataclass(frozen=True, eq=False)
class _OnlyHere(Flow):
    """A flow that pickles but cannot be unpickled: its worker fails while starting."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def test_a_worker_that_fails_to_start_raises_and_leaves_no_shared_memory(monkeypatch):
    flow = _OnlyHere(FLOWS["maf"].base, FLOWS["maf"].bijection)
    created = []
    original = workers_module.shared_memory.SharedMemory

    def recording(*args, **kwargs):
        memory = original(*args, **kwargs)
        created.append(memory.name)
        return memory

    monkeypatch.setattr(workers_module.shared_memory, "SharedMemory", recording)
    before = _worker_children()
    with _deadline(60), pytest.raises(RuntimeError, match="(?s)start-up.*cannot be rebuilt"):
        GradientWorkers(flow, DATA, processes=2)
    assert created and not _shm_exists(created[0])
    assert _worker_children() == before


@pytest.mark.parametrize("processes", [0, -1, 1.5, True, "2", None])
def test_bad_processes_values(processes):
    with pytest.raises(ValueError, match="processes"):
        fit(FLOWS["maf"], DATA, steps=1, rng=B.rng(0), progress=False, processes=processes)
    with pytest.raises(ValueError, match="processes"):
        GradientWorkers(FLOWS["maf"], DATA, processes=processes)


def test_processes_with_a_client_non_numpy_backend_or_arrays(monkeypatch):
    with pytest.raises(ValueError, match="processes: .*client or processes"):
        fit(FLOWS["maf"], DATA, steps=1, rng=B.rng(0), client="tcp://nowhere:1", processes=2)
    with pytest.raises(ValueError, match="processes: .*numpy.ndarray"):
        GradientWorkers(FLOWS["maf"], numpy.ma.masked_array(DATA), processes=2)
    with pytest.raises(ValueError, match="processes: .*cannot be sent"):
        GradientWorkers(Flow(StandardNormal(DIM), _Local()), DATA, processes=2)
    monkeypatch.setattr(workers_module.B, "get_backend", lambda: "cupy")
    with pytest.raises(ValueError, match="processes: .*NumPy backend only"):
        GradientWorkers(FLOWS["maf"], DATA, processes=2)


@dataclass(frozen=True, eq=False)
class _Local:
    """An identity bijection holding a lambda, which pickle refuses."""

    f: object = lambda z: z

    def forward(self, z, context=None):
        return z, numpy.zeros(z.shape[0])

    inverse = forward


def test_bad_rows(pools):
    params, _ = _flat_parameters(FLOWS["maf"])
    for rows in (numpy.array([], dtype=int), numpy.array([0, ROWS]), numpy.array([-1]),
                 numpy.array([[0, 1]]), numpy.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="rows"):
            pools["maf"].value_and_grads(params, rows)


def test_workers_exit_when_their_parent_dies():
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        if __name__ == "__main__":
            from refflow import backend as B, Flow, StandardNormal, Diagonal
            from refflow.workers import GradientWorkers
            flow = Flow(StandardNormal(2), Diagonal.init(B.rng(0), 2))
            pool = GradientWorkers(flow, B.rng(1).normal(0.0, 1.0, (10, 2)), processes=2)
            print(pool.pids[0], pool._memory.name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    # the worker inherits the pipe: read one line, never to the end (a live worker holds it)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    pid, name = parent.stdout.readline().split()
    pid = int(pid)
    try:
        parent.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_alive(pid) or _shm_exists(name)):
            time.sleep(0.1)
        assert not _alive(pid), "the worker outlived its parent"
        assert not _shm_exists(name), "the shared memory outlived the processes"
    finally:
        parent.stdout.close()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_cli_train_processes(tmp_path, capsys):
    """``refflow train --processes 2`` trains the model that ``--processes 1`` trains."""
    from refflow.cli import main

    numpy.save(tmp_path / "x.npy", DATA)
    metrics = []
    for processes in ("1", "2"):
        out = tmp_path / processes
        assert main(["train", "--data", str(tmp_path / "x.npy"), "--flow", "maf", "--layers",
                     "2", "--hidden", "8", "--steps", "10", "--batch-size", "30",
                     "--processes", processes, "--out", str(out)]) == 0
        metrics.append(json.loads((out / "metrics.json").read_text()))
    assert metrics[0]["test_nll"] == pytest.approx(metrics[1]["test_nll"], rel=FIT_RTOL)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(tmp_path / "x.npy"), "--flow", "maf", "--processes", "0",
              "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and "--processes" in capsys.readouterr().err


def test_cli_reports_a_failed_worker_in_one_line(tmp_path, capsys, monkeypatch):
    """A worker's failure ends ``refflow train`` with exit status 1 and one line naming the
    worker and what it raised, not a traceback."""
    from refflow import train
    from refflow.cli import main
    from refflow.workers import WorkerError

    def failing_fit(*args, **kwargs):
        raise WorkerError("processes: worker 1 (pid 7) raised during the step:\nTraceback "
                          "(most recent call last):\n  File x\nFloatingPointError: overflow")

    monkeypatch.setattr(train, "fit", failing_fit)
    numpy.save(tmp_path / "x.npy", DATA)
    status = main(["train", "--data", str(tmp_path / "x.npy"), "--flow", "maf", "--steps",
                   "2", "--processes", "2", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "worker 1" in err and "FloatingPointError: overflow" in err
    assert "Traceback" not in err
