r"""Data-parallel gradients over local worker processes: ``fit(..., processes=n)``.

The negative log-likelihood of a batch B is a sum over its rows, so its gradient is a sum of
the gradients of the rows' parts. With B cut into n contiguous parts B_1, ..., B_n of the
batch's row order, process k computes the share of its part,
-(1/|B|) sum_{x in B_k} log p_theta(x), and its gradient by autograd; the calling process
computes the first part itself and adds the parts in order. Each part is weighted by its
rows (the share divides its sum by the whole batch's size), so the sum is the batch's mean
NLL and its gradient, whatever the part sizes.

Why processes and not threads: autograd's tracing is not thread-safe (one process-wide trace
counter), and a training step at batch 256 is interpreter-bound (one GIL); each process has
its own interpreter and its own tape. The training rows go to the workers once, in shared
memory; each step sends the parameter vector (through shared memory too) and each worker's
row numbers, and brings back a value and a gradient. The workers are started with "spawn"
(never fork: refflow keeps thread pools and OpenBLAS keeps threads, and forking a process
with threads can deadlock), hold BLAS to one thread, and compute under the caller's
fast-layer switch (``refflow.fast.is_enabled()``) and NumPy error state, sent with every
step; the dtype travels with the flow and the arrays. NumPy backend only.

Notes
-----
Lecture: "MLE problem" (the NLL is a mean over samples, so its gradient is a weighted sum of
its parts' gradients).

.. math::

    \nabla_\theta \mathcal{L}(B) = \sum_{k=1}^{n} \nabla_\theta \Big(-\frac{1}{|B|}
        \sum_{x \in B_k} \log p_\theta(x)\Big)

The result equals the one-process gradient up to the order of the sums over rows: the rows'
seeds of the backward pass (-1/|B| each) are the same numbers, and only the reductions over
the batch axis are split into parts and added (measured in float64: relative differences of
1e-16 to 1e-15; the tests hold 1e-12). Costs, measured on 2 cores (docs/performance.md): 0.2 s
to start a worker (a fresh interpreter importing NumPy, autograd and refflow; 0.3 s for two),
and a fixed cost per step of about 0.2-0.3 ms for the round trip (0.8 ms on a loaded machine).
Each process pays the per-operation overhead of autograd in full, so the gain grows with the
rows per process: it pays at large batches (thousands of rows), little at a batch of 256.
Between steps each process busy-polls its pipe for up to ``POLL_SECONDS`` (20 ms) before it
blocks, so that back-to-back steps keep one core each (where there are enough cores).

A script that trains with ``processes > 1`` must guard its top level with
``if __name__ == "__main__":``, as every program that starts processes with "spawn" must:
each worker imports the main module.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle  # host-ok: the flow goes to our own spawned workers, never to a file
import shutil
import signal
import time
import traceback
from multiprocessing import shared_memory
from multiprocessing.connection import wait
from typing import Any

import autograd.numpy as np
import numpy
from autograd import value_and_grad

from refflow import backend as B
from refflow import fast
from refflow.checks import check_int

__all__ = ["GradientWorkers", "WorkerError"]

# each array in the shared block starts on a cache line, so no two share one
_ALIGN = 64

# How long a process busy-polls its pipe before it blocks on it. A blocked process that is
# woken is often placed by the scheduler on the core of the process that woke it, and the
# two then take turns on one core, step after step (measured at batch 256 after a pause of
# 0.2 s: every following step 2x slower); polling between back-to-back steps keeps each one
# on its own core. Only where every process has a core of its own.
POLL_SECONDS = 0.02


class WorkerError(RuntimeError):
    """A gradient worker died, failed to start or raised: the step has no result."""


def _poll(conn: Any, seconds: float) -> None:
    """Busy-wait up to ``seconds`` for a message on ``conn``; the caller then receives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if conn.poll(0):
            return


def _layout(arrays: dict) -> tuple[list, int]:
    """``[(name, offset, shape, dtype)]`` of ``arrays`` packed into one block, and its size."""
    layout, offset = [], 0
    for name, (shape, dtype) in arrays.items():
        layout.append((name, offset, tuple(shape), numpy.dtype(dtype).str))
        size = math.prod(shape) * numpy.dtype(dtype).itemsize
        offset += -(-size // _ALIGN) * _ALIGN
    return layout, max(offset, 1)


def _views(buffer: Any, layout: list) -> dict:
    return {name: numpy.ndarray(shape, dtype=numpy.dtype(dtype), buffer=buffer, offset=offset)
            for name, offset, shape, dtype in layout}


def _bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    # floor edges: with fewer rows than parts the calling process, which also sends and adds,
    # is the one left without rows
    edges = [rows * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _part_gradient(flow: Any) -> Any:
    """``(params, x, context, total) -> (share, [gradient])`` for one part of a batch.

    The share is -(1/total) sum log p(x) over the part: ``train.nll`` of the part times
    |part| / total, written as the part's sum divided by the whole batch's size.
    """
    from refflow.train import _flat_parameters

    _, rebuild = _flat_parameters(flow)

    def share(params, x, context, total):
        return -np.sum(rebuild(params).log_prob(x, context)) / total

    return value_and_grad(share)


def _reply(conn: Any, message: tuple) -> bool:
    try:
        conn.send(message)
        return True
    except OSError:  # the driver is gone
        return False


def _serve(conn: Any, spec: dict) -> None:
    """A worker: attach to the shared arrays, then compute parts until told to stop.

    Stops on ``None``, and when the driver goes away (its end of the pipe closes).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which closes us
    memory = views = None
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(limits=1, user_api="blas")  # for the worker's whole life
        if B.get_backend() != "numpy":  # REFFLOW_BACKEND inherited from the environment
            B.set_backend("numpy")
        memory = shared_memory.SharedMemory(name=spec["name"])
        views = _views(memory.buf, spec["layout"])
        part = _part_gradient(pickle.loads(spec["flow"]))
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        ready = ("ready", {"pid": os.getpid(), "blas_threads": blas})
    except BaseException:
        ready = ("error", traceback.format_exc())
    if _reply(conn, ready) and ready[0] == "ready":
        grad_out = views["grads"][spec["index"]]
        while True:
            try:
                _poll(conn, spec["poll"])
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            flag, errors, rows, total = message
            try:
                context = views["context"][rows] if "context" in views else None
                with fast.enabled(flag), numpy.errstate(**errors):
                    value, (grad,) = part([views["params"].copy()], views["data"][rows],
                                          context, total)
                grad_out[...] = grad
                reply = ("ok", value)
            except Exception:
                reply = ("error", traceback.format_exc())
            if not _reply(conn, reply):
                break
        del grad_out
    views = None  # the views must go before the mapping they point into
    if memory is not None:
        memory.close()


class GradientWorkers:
    r"""Local worker processes that compute a batch's NLL gradient with the calling process.

    ``processes`` is the number of cores to use: the calling process computes one part of
    each batch, ``processes - 1`` workers the others. The training rows (``data``, and
    ``context`` for a conditional flow) are copied once into shared memory, which is
    released by ``close`` (a context manager calls it), also after an error.

    Parameters
    ----------
    flow : ``refflow.Flow``; its structure is sent to each worker once, its parameters with
        every step.
    data : (N, *event_shape) ``numpy.ndarray``, the training rows.
    context : (N, C) ``numpy.ndarray`` for a conditional flow, row i the context of
        ``data[i]``; ``None`` otherwise.
    processes : int >= 1, the cores to use (1: no worker, the calling process alone).

    Raises
    ------
    ValueError : a ``processes`` that is not a positive integer, a non-NumPy backend or
        array, a flow that cannot be pickled, context rows that do not match the data,
        training rows larger than the free shared memory.
    WorkerError (a RuntimeError) : a worker that died or failed while starting, named with
        its exit code or its traceback.

    Attributes
    ----------
    processes : the cores in use; ``pids``: the workers' process ids; ``info``: per
        worker, what it reported when it started (its pid, its BLAS threads).

    Notes
    -----
    Start-up costs about 0.2 s per worker (started at once, they share the cores); a step
    has a fixed cost of about 0.3 ms for the round trip (docs/performance.md). While the
    calling process computes its part, it holds BLAS to one thread too. One step at a time:
    an object is not shared between threads.

    Examples
    --------
    >>> import numpy
    >>> from refflow import backend, Flow, StandardNormal, Diagonal
    >>> from refflow.tree import partition, ravel_leaves
    >>> flow = Flow(StandardNormal(2), Diagonal.init(backend.rng(0), 2))
    >>> data = backend.rng(1).normal(0.0, 1.0, (100, 2))
    >>> v, _ = ravel_leaves(partition(flow)[0])          # the parameters as fit trains them
    >>> with GradientWorkers(flow, data, processes=2) as workers:
    ...     value, grads = workers.value_and_grads([v], numpy.arange(64))
    >>> bool(numpy.isclose(value, float(-flow.log_prob(data[:64]).mean())))
    True
    """

    def __init__(self, flow: Any, data: Any, context: Any = None, *, processes: int):
        self.processes = check_int("processes", processes)
        self._memory: shared_memory.SharedMemory | None = None
        self._views: dict = {}
        self._workers: list = []
        self._in_flight: set[int] = set()
        self._controller: Any = None
        self._closed = False
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        self._poll_seconds = POLL_SECONDS if self.processes <= cores else 0.0
        self.info: list[dict] = []
        if B.get_backend() != "numpy":
            raise ValueError(f"processes: worker processes run on the NumPy backend only, the "
                             f"backend is {B.get_backend()!r}; use processes=1")
        for name, a in (("data", data), ("context", context)):
            if a is not None and (type(a) is not numpy.ndarray or a.ndim < 2):
                raise ValueError(f"processes: {name} must be a numpy.ndarray of rows for "
                                 f"worker processes, got {type(a).__name__}")
        if context is not None and context.shape[0] != data.shape[0]:
            raise ValueError(f"context: expected one row per data row ({data.shape[0]}), got "
                             f"{context.shape[0]}")
        try:
            flow_bytes = pickle.dumps(flow)
        except Exception as exc:
            raise ValueError(f"processes: the flow cannot be sent to a worker process "
                             f"({exc!r}); use processes=1") from None
        from refflow.train import _flat_parameters

        vector = _flat_parameters(flow)[0][0]
        self.rows = data.shape[0]
        self._part = _part_gradient(flow)
        arrays = {"data": (data.shape, data.dtype)}
        if context is not None:
            arrays["context"] = (context.shape, context.dtype)
        arrays["params"] = (vector.shape, vector.dtype)
        arrays["grads"] = ((max(self.processes - 1, 1),) + vector.shape, vector.dtype)
        layout, size = _layout(arrays)
        self._check_room(size)
        try:
            self._memory = shared_memory.SharedMemory(create=True, size=size)
            self._views = _views(self._memory.buf, layout)
            self._views["data"][...] = data
            if context is not None:
                self._views["context"][...] = context
            self._start(layout, flow_bytes)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check_room(size: int) -> None:
        # a tmpfs that runs out of pages kills the writer with SIGBUS instead of raising
        if os.path.isdir("/dev/shm"):
            free = shutil.disk_usage("/dev/shm").free
            if size > free:
                raise ValueError(f"processes: the training rows need {size} bytes of shared "
                                 f"memory, /dev/shm has {free} free; use processes=1")

    def _start(self, layout: list, flow_bytes: bytes) -> None:
        spawn = multiprocessing.get_context("spawn")
        for index in range(self.processes - 1):
            mine, theirs = spawn.Pipe()
            spec = {"name": self._memory.name, "layout": layout, "flow": flow_bytes,
                    "index": index, "poll": self._poll_seconds}
            process = spawn.Process(target=_serve, args=(theirs, spec), daemon=True,
                                    name=f"refflow-gradient-worker-{index + 1}")
            self._workers.append((process, mine))
            process.start()
            theirs.close()  # only the worker holds its end: its death closes the pipe
        for index in range(len(self._workers)):
            self.info.append(self._receive(index, "start-up", "ready"))

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers."""
        return [process.pid for process, _ in self._workers]

    def _failure(self, index: int, during: str, what: str) -> WorkerError:
        process = self._workers[index][0]
        process.join(timeout=1.0)
        code = process.exitcode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = "closed its pipe"
        hint = ("; a script that starts processes must guard its top level with "
                "if __name__ == '__main__':" if during == "start-up" and code == 1 else "")
        return WorkerError(f"processes: worker {index + 1} (pid {process.pid}) {how} during "
                            f"{during}{what}{hint}")

    def _receive(self, index: int, during: str, expected: str) -> Any:
        """The payload of worker ``index``'s next reply, or ``WorkerError``.

        Waits on the pipe and on the process's sentinel together, so a worker that dies
        is noticed at once instead of being waited for.
        """
        process, conn = self._workers[index]
        _poll(conn, self._poll_seconds)  # a dead worker's pipe reads as ready (EOF)
        wait([conn, process.sentinel])
        try:
            kind, payload = conn.recv() if conn.poll() else (None, None)
        except (EOFError, OSError):
            kind, payload = None, None
        if kind == expected:
            return payload
        if kind == "error":
            raise WorkerError(f"processes: worker {index + 1} (pid {process.pid}) raised "
                               f"during {during}:\n{payload}")
        raise self._failure(index, during, "")

    def value_and_grads(self, params: list, rows: Any) -> tuple[Any, list]:
        """The mean NLL of ``data[rows]`` (and ``context[rows]``) and its gradient.

        Parameters
        ----------
        params : ``[v]``, v the flat parameter vector of the flow given at construction
            (``refflow.tree.ravel_leaves`` of its ``partition`` leaves, the form that
            ``fit`` trains), with any values.
        rows : 1-D integer array of row numbers, the batch in its order.

        Returns
        -------
        (value, [gradient]) : the value as a NumPy scalar, the gradient with respect to v.

        Raises
        ------
        WorkerError (a RuntimeError) : a worker died or raised during the step (the workers
            are then closed: no later step runs on part of a batch).
        """
        if self._closed:
            raise WorkerError("processes: the gradient workers are closed")
        rows = numpy.asarray(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or rows.size < 1 or (
                rows.min() < 0 or rows.max() >= self.rows):
            raise ValueError(f"rows: expected a non-empty 1-D array of row numbers in "
                             f"[0, {self.rows}), got {rows!r}")
        total = rows.shape[0]
        parts = _bounds(total, self.processes)
        try:
            self._views["params"][...] = params[0]
            flag, errors = fast.is_enabled(), numpy.geterr()
            busy = []
            for index, (lo, hi) in enumerate(parts[1:]):
                if hi > lo:
                    conn = self._workers[index][1]
                    try:
                        conn.send((flag, errors, rows[lo:hi], total))
                    except OSError:
                        raise self._failure(index, "the step", " (its pipe is closed)") from None
                    self._in_flight.add(index)
                    busy.append(index)
            value = grad = None
            lo, hi = parts[0]
            if hi > lo:
                value, (grad,) = self._own_part(params, rows[lo:hi], total)
            for index in busy:
                part_value = self._receive(index, "the step", "ok")
                self._in_flight.discard(index)
                part_grad = self._views["grads"][index]
                value = part_value if value is None else value + part_value
                grad = part_grad.copy() if grad is None else grad + part_grad
        except BaseException:
            self.close()  # replies still on their way would answer the next step
            raise
        return value, [grad]

    def _own_part(self, params: list, rows: Any, total: int) -> tuple:
        from threadpoolctl import ThreadpoolController

        from refflow.parallel import _limit_blas, _restore_blas

        # refflow.parallel owns this process's BLAS limit; its two helpers take and hand
        # back threadpoolctl's control, so a limit that a split sets meanwhile is not lost
        if self._controller is None:
            self._controller = ThreadpoolController()
        limiter = _limit_blas(self._controller)
        try:
            context = self._views["context"][rows] if "context" in self._views else None
            return self._part(params, self._views["data"][rows], context, total)
        finally:
            _restore_blas(self._controller, limiter)

    def close(self) -> None:
        """Stop the workers and release the shared memory; safe to call again."""
        self._closed = True
        for index, (process, conn) in enumerate(self._workers):
            if index in self._in_flight:  # busy with a part that nobody will read
                process.kill()
            elif process.is_alive():
                _reply(conn, None)
        for process, conn in self._workers:
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers, self._in_flight = [], set()
        self._views = {}
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()
            self._memory = None

    def __enter__(self) -> GradientWorkers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_memory", None) is not None:
            self.close()
