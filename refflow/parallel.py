r"""Evaluating a batch by rows: in chunks (bounded memory) and, on request, over threads.

A flow's rows are independent (row i of ``log_prob(x)`` depends on row i of ``x`` only), so
a batch can be cut into row blocks and the results concatenated. This module does that, and
only that; the change-of-variables code knows nothing of it. ``Flow`` marks its two batch
methods with ``@rowwise``.

- **Chunks.** A batch larger than ``get_chunk_size()`` numbers (default ``CHUNK_SIZE``
  = 2**20, 8 MB of float64 input; ``set_chunk_size`` or ``REFFLOW_CHUNK_SIZE``) is evaluated
  one block of rows at a time, so the intermediates of a large ``log_prob`` stay bounded
  (about ten times one block) instead of growing with the batch.
- **Threads.** ``set_threads(n)`` (or ``REFFLOW_THREADS``; default 1: off) cuts each block of
  a large NumPy batch into ``n`` parts computed at once: the calling thread computes the
  first, a shared pool the others. NumPy releases the GIL inside its kernels, so the
  element-wise work that runs on one core otherwise uses all of them. The parts run in copies
  of the caller's context, so they see its ``numpy.errstate`` and its fast-layer switch
  (``refflow.fast.enabled``). Measured crossovers are in ``docs/performance.md``.

BLAS is held to one thread while any split runs (OpenBLAS serialises calls made from several
threads at once and its idle threads spin, so a split with a multi-threaded BLAS is as slow
as no split). The limit has one owner, ``_Splitter``: the first running split sets it, the
last one to finish restores the value found before the first, whatever the interleaving
and whichever threads they are. threadpoolctl (3.8) lets only one thread, the first to set a
limit, change OpenBLAS while it lives, and ignores the others silently; the owner takes
that control for its two calls and hands it back. A limit that another thread of the
program sets while a split runs is overwritten when the split ends.
The split uses threadpoolctl, a small pure-Python library (maintained by the scikit-learn
developers) and the portable way to limit BLAS threads.

Notes
-----
Nothing is split or chunked under autograd (a tape is not shared between threads, and
chunks would keep every block's intermediates on the tape anyway), for a single event (no
batch axis), or inside a part of a split. Threads are used only for NumPy arrays; chunks
serve every backend. The results equal the unsplit ones: bit-identical in float64 on
OpenBLAS, within a few ulp in float32 (as between one and two BLAS threads).
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy

from refflow import backend

__all__ = [
    "rowwise",
    "map_batch",
    "set_threads",
    "get_threads",
    "threads_from_env",
    "set_chunk_size",
    "get_chunk_size",
    "chunk_size_from_env",
    "SPLIT_MIN_ROWS",
    "CHUNK_SIZE",
]

#: Fewest rows per thread for which a block is split over threads (docs/performance.md).
SPLIT_MIN_ROWS = 1024

#: Default of the most numbers (rows x event size) of input evaluated at once.
CHUNK_SIZE = 2**20

# inside a part of a split or a chunk: nested rowwise calls run as they are
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("refflow_rowwise",
                                                               default=False)


def _check_positive_int(value: Any, name: str, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer ({meaning}), got {value!r}")
    return int(value)


def _from_env(variable: str, default: int, meaning: str, environ: Any) -> int:
    value = (os.environ if environ is None else environ).get(variable, "").strip()
    if value == "":
        return default
    try:
        return _check_positive_int(int(value), variable, meaning)
    except ValueError:
        raise ValueError(
            f"{variable}: expected a positive integer ({meaning}), got {value!r}"
        ) from None


def threads_from_env(environ: Any = None) -> int:
    """The thread count ``REFFLOW_THREADS`` asks for: 1 (no split) when unset or empty.

    Raises ``ValueError`` naming ``REFFLOW_THREADS`` unless it is a positive integer.
    """
    return _from_env("REFFLOW_THREADS", 1, "1: no split", environ)


def chunk_size_from_env(environ: Any = None) -> int:
    """The chunk size ``REFFLOW_CHUNK_SIZE`` asks for: ``CHUNK_SIZE`` when unset or empty.

    Raises ``ValueError`` naming ``REFFLOW_CHUNK_SIZE`` unless it is a positive integer.
    """
    return _from_env("REFFLOW_CHUNK_SIZE", CHUNK_SIZE, "numbers per chunk", environ)


def _blas_controllers(controller: Any) -> list:
    # threadpoolctl >= 3.8 lets only one Python thread (the first to set a limit, while it
    # lives) change a process-wide OpenBLAS pool; a limit set from another thread is ignored
    # without a word. That is how concurrent splits once left OpenBLAS at one thread: set by
    # one caller, "restored" by another. Libraries with that rule have this method.
    return [lib for lib in controller.lib_controllers
            if hasattr(type(lib), "clear_controlling_thread")]


def _take_blas_control(controller: Any) -> None:
    for lib in _blas_controllers(controller):
        type(lib).clear_controlling_thread(force=True)


def _limit_blas(controller: Any) -> Any:
    # refflow's own calls are serialised by the splitter's lock, so it may take control for
    # the moment from whichever thread holds it, and gives it back when the last split ends
    _take_blas_control(controller)
    return controller.limit(limits=1, user_api="blas")


def _restore_blas(controller: Any, limiter: Any) -> None:
    _take_blas_control(controller)  # the thread restoring need not be the one that limited
    limiter.restore_original_limits()
    for lib in _blas_controllers(controller):
        type(lib).clear_controlling_thread()  # any thread of the program may set limits again


class _Splitter:
    """The one owner of the thread pool and of the BLAS limit while splits run.

    ``acquire`` and ``release`` bracket every split, under one lock. The first acquire of a
    quiet period limits BLAS to one thread, the release that leaves no split running
    restores it, whichever callers come and go and whichever thread they run in. A pool
    replaced by ``set_threads`` while splits use it is shut down only when none does.
    """

    def __init__(self, threads: int):
        self.lock = threading.Lock()
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self.retired: list[ThreadPoolExecutor] = []
        self.running = 0
        self.controller: Any = None
        self.limiter: Any = None

    def set_threads(self, n: int) -> None:
        with self.lock:
            self.threads = n
            if self.pool is not None:
                self.retired.append(self.pool)
                self.pool = None
            if self.running == 0:
                self._shutdown_retired()

    def acquire(self) -> tuple[ThreadPoolExecutor | None, int]:
        """The pool and thread count for one split (``None, 1`` when splitting is off)."""
        with self.lock:
            if self.threads < 2:
                return None, 1
            if self.running == 0:
                if self.controller is None:
                    from threadpoolctl import ThreadpoolController

                    self.controller = ThreadpoolController()
                self.limiter = _limit_blas(self.controller)
            self.running += 1
            if self.pool is None:
                # the calling thread computes the first part itself, so the pool needs n - 1
                self.pool = ThreadPoolExecutor(self.threads - 1,
                                               thread_name_prefix="refflow-split")
            return self.pool, self.threads

    def release(self) -> None:
        with self.lock:
            self.running -= 1
            if self.running == 0:
                _restore_blas(self.controller, self.limiter)
                self.limiter = None
                self._shutdown_retired()

    def _shutdown_retired(self) -> None:
        for pool in self.retired:
            pool.shutdown(wait=False)
        self.retired.clear()


_splitter = _Splitter(threads_from_env())
_chunk_size = [chunk_size_from_env()]


def set_threads(n: int) -> None:
    """Split large NumPy batches of ``Flow`` evaluation and sampling over ``n`` threads.

    ``n = 1`` (the default, or ``REFFLOW_THREADS``) turns the split off. Safe to call while
    other threads are splitting: their splits finish on the pool they started with.
    """
    _splitter.set_threads(_check_positive_int(n, "n", "1: no split"))


def get_threads() -> int:
    """The number of threads a large batch is split over (1: no split)."""
    return _splitter.threads


def set_chunk_size(n: int) -> None:
    """Evaluate batches of more than ``n`` numbers (rows x event size) in row blocks.

    The default is ``CHUNK_SIZE`` or ``REFFLOW_CHUNK_SIZE``. A block holds at least one row,
    and at least ``threads * SPLIT_MIN_ROWS`` rows when the batch is split over threads.
    """
    _chunk_size[0] = _check_positive_int(n, "n", "numbers per chunk")


def get_chunk_size() -> int:
    """The most numbers (rows x event size) of input evaluated at once."""
    return _chunk_size[0]


_PLAIN_SCALARS = frozenset({int, float, complex, bool, str, type(None)})


def _arrays_in(obj: Any) -> str:
    """``"traced"`` if an array inside ``obj`` is traced by autograd, else ``"foreign"`` if one
    is not a ``numpy.ndarray``, else ``"numpy"``.

    Walks what ``tree.partition`` walks (dataclasses, tuples, lists, dicts), which is where
    autograd's Boxes sit when the parameters of a flow are being differentiated.
    """
    found = "numpy"
    stack = [obj]
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind is numpy.ndarray or kind in _PLAIN_SCALARS:
            continue
        if backend.is_traced(obj):
            return "traced"
        if backend.is_array(obj):
            found = "foreign"
        elif isinstance(obj, (tuple, list)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            # every field, class constants included (harmless): faster than dataclasses.fields
            stack.extend(getattr(obj, name) for name in obj.__dataclass_fields__)
    return found


def _bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    edges = [rows * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _join(parts: list) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(numpy.concatenate(p, axis=0) for p in zip(*parts))
    return numpy.concatenate(parts, axis=0)


def _run_inside(fn: Callable, arrays: tuple) -> Any:
    _inside.set(True)
    return fn(*arrays)


def _part(fn: Callable, arrays: tuple) -> Callable[[], Any]:
    # a copy of the caller's context per part, taken in the caller's thread: a context runs in
    # one thread at a time, and the pool's threads have contexts of their own
    return functools.partial(contextvars.copy_context().run, _run_inside, fn, arrays)


def _split(fn: Callable, arrays: tuple, threads: int, min_rows: int) -> Any:
    rows = arrays[0].shape[0]
    if threads < 2 or rows < threads * min_rows:
        return _part(fn, arrays)()
    pool, threads = _splitter.acquire()
    try:
        if pool is None:  # set_threads(1) came in between
            return _part(fn, arrays)()
        parts = [tuple(a[lo:hi] for a in arrays) for lo, hi in _bounds(rows, threads)]
        futures = [pool.submit(_part(fn, p)) for p in parts[1:]]
        try:
            first = _part(fn, parts[0])()
        finally:
            wait(futures)  # no part may outlive the BLAS limit, even when one fails
        return _join([first] + [f.result() for f in futures])
    finally:
        _splitter.release()


def map_batch(fn: Callable, *arrays: Any, min_rows: int | None = None,
              params: Any = None) -> Any:
    """``fn(*arrays)``, computed by row blocks: in chunks, and over threads when that pays.

    The batch (the leading axis of every array, and of every array ``fn`` returns) is cut
    into blocks of at most ``get_chunk_size()`` numbers, computed one after the other; each
    block of a NumPy batch is cut again into ``get_threads()`` parts computed at once when it
    has at least ``threads * min_rows`` rows. The results (an array or a tuple of arrays) are
    concatenated.

    It simply returns ``fn(*arrays)`` when an array, or an array inside ``params`` (what
    ``fn`` computes with, e.g. a flow), is traced by autograd; when the arrays are not all
    arrays with a leading axis of one common length; and inside a block of another call.
    Threads are used only when every array there is a plain ``numpy.ndarray`` and the
    backend is NumPy.

    Parameters
    ----------
    fn : callable taking row blocks of ``arrays``; whatever else it reads (a flow) it must
        only read, never modify.
    *arrays : arrays sharing the leading (batch) axis.
    min_rows : int, the fewest rows per thread worth a split (default ``SPLIT_MIN_ROWS``).
    params : what ``fn`` computes with besides ``arrays``, searched for traced arrays.

    Examples
    --------
    >>> import numpy
    >>> x = numpy.arange(6.0).reshape(3, 2)
    >>> map_batch(lambda a: (a.sum(axis=-1), 2 * a), x)[0].tolist()
    [1.0, 5.0, 9.0]
    """
    if (not arrays or _inside.get()
            or any(not backend.is_array(a) or len(a.shape) == 0 for a in arrays)):
        return fn(*arrays)
    rows = arrays[0].shape[0]
    if any(a.shape[0] != rows for a in arrays):
        return fn(*arrays)
    min_rows = SPLIT_MIN_ROWS if min_rows is None else min_rows
    row_size = max(1, sum(math.prod(a.shape[1:]) for a in arrays))
    threads = get_threads()
    if backend.get_backend() != "numpy" or any(type(a) is not numpy.ndarray for a in arrays):
        threads = 1
    if rows < threads * min_rows:
        threads = 1
    if threads == 1 and rows * row_size <= get_chunk_size():
        return fn(*arrays)  # one block, one thread: nothing to cut
    found = _arrays_in(params)
    if found == "traced":
        return fn(*arrays)
    if found == "foreign":
        threads = 1
    block = max(1, get_chunk_size() // row_size)
    if threads > 1:
        block = max(block, threads * min_rows)
    blocks = _bounds(rows, -(-rows // block))
    return _join([_split(fn, tuple(a[lo:hi] for a in arrays), threads, min_rows)
                  for lo, hi in blocks])


def rowwise(method: Callable | None = None, *, sequential: bool = False) -> Callable:
    """Mark a flow method ``method(self, x, context=None)`` whose rows are independent.

    See ``map_batch``. ``self`` must have ``event_shape``: an ``x`` with no batch axis is
    passed as it is. A ``context`` with one row per row of ``x`` (the same leading axis) is
    cut into the same row blocks as ``x``; any other context (one row for all, ``(C,)``, or
    a shape the method will reject) is passed whole to every block, and searched for traced
    arrays like the flow. ``sequential=True`` says that the method makes many small NumPy
    calls per block (sequential passes, as MAF sampling does), so a thread split pays only
    from twice the rows per thread.
    """

    def mark(method: Callable) -> Callable:
        @functools.wraps(method)
        def by_rows(self, x, context=None):
            if len(getattr(x, "shape", ())) <= len(self.event_shape):
                return method(self, x, context)
            min_rows = 2 * SPLIT_MIN_ROWS if sequential else SPLIT_MIN_ROWS
            if context is None:
                return map_batch(functools.partial(method, self), x, min_rows=min_rows,
                                 params=self)
            shape = getattr(context, "shape", ())
            if len(shape) >= 2 and shape[0] == x.shape[0]:
                return map_batch(functools.partial(method, self), x, context,
                                 min_rows=min_rows, params=self)
            return map_batch(lambda block: method(self, block, context), x,
                             min_rows=min_rows, params=(self, context))

        return by_rows

    return mark if method is None else mark(method)
