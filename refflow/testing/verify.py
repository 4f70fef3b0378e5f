"""``refflow verify MODULE:FACTORY``: check_bijection from the command line.

FACTORY names an object inside MODULE (dotted attribute paths allowed, e.g.
``refflow.affine:Diagonal.init``):

1. an object with ``forward`` and ``inverse`` methods is checked as it is;
2. a class with an ``init`` classmethod (every refflow family) is built with ``init``;
3. any other callable is called with the keyword arguments it accepts among ``rng``
   (a ``refflow.backend`` generator), ``seed`` and ``dim``, and must return a bijection
   object or a pair of callables ``(forward, inverse)``.

The current directory is importable, as with ``python -m``. Exit status: 0 when every
check passes, 1 when one fails or is inconclusive or the factory raises, 2 for a usage error
(bad target, a module that fails or exits on import, bad option); each error is one line on
stderr.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from typing import Any

from refflow.testing.bijection import STRUCTURES, check_bijection

__all__ = ["verify_main"]


class _UsageError(Exception):
    """A bad command line: reported with exit code 2."""


class _FactoryError(Exception):
    """The target's own code failed while building the bijection: exit code 1."""


def _resolve(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _UsageError(f"target: expected MODULE:FACTORY, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise _UsageError(f"target: cannot import module {module_name!r}: {exc}") from exc
    except SystemExit as exc:  # a script without a __main__ guard: not a silent exit 0
        raise _UsageError(f"target: importing {module_name!r} called sys.exit({exc.code!r})"
                          ) from exc
    except Exception as exc:  # the module's own code failed on import
        raise _UsageError(f"target: importing {module_name!r} raised {type(exc).__name__}: "
                          f"{exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _UsageError(f"target: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _is_bijection(obj: Any) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "forward", None)) \
        and callable(getattr(obj, "inverse", None))


def _build(obj: Any, dim: int, seed: int) -> tuple:
    from refflow import backend as B

    if _is_bijection(obj):
        return obj.forward, obj.inverse
    if isinstance(obj, type) and callable(getattr(obj, "init", None)):
        obj = obj.init
    if not callable(obj):
        raise _UsageError(f"target: expected a bijection or a factory, got {type(obj).__name__}")
    offered = {"rng": B.rng(seed), "seed": seed, "dim": dim}
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in offered.items() if k in params}
    missing = [p.name for p in params.values() if p.name not in kwargs
               and p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise _UsageError(f"target: the factory needs arguments {missing}; "
                          f"refflow verify can pass rng, seed and dim")
    try:
        made = obj(**kwargs)
    except Exception as exc:  # the user's factory failed: one line, not a traceback
        raise _FactoryError(f"the factory raised {type(exc).__name__}: {exc}") from exc
    if _is_bijection(made):
        return made.forward, made.inverse
    if isinstance(made, tuple) and len(made) == 2 and all(callable(f) for f in made):
        return made
    raise _UsageError(f"target: the factory returned {type(made).__name__}, expected a "
                      f"bijection or a pair (forward, inverse)")


def _catalog_arguments(parser: argparse.ArgumentParser) -> None:
    from refflow.testing.catalog import LIBRARIES

    group = parser.add_argument_group("catalog sweep (refflow.testing.catalog)")
    group.add_argument("--catalog", choices=sorted(LIBRARIES),
                       help="check every catalogued transform of a peer library instead of "
                            "a TARGET")
    group.add_argument("--dims", type=int, nargs="+", default=[2, 5],
                       help="event dimensions of the sweep (default 2 5)")
    group.add_argument("--scales", type=float, nargs="+", default=[0.2, 0.5],
                       help="spreads s of the N(0, s^2) parameter perturbation (default 0.2 0.5)")
    group.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    group.add_argument("--only", nargs="+", metavar="NAME",
                       help="only the catalogued transforms with these names")


def _catalog_main(args: argparse.Namespace) -> int:
    """The sweep: a progress bar on a TTY, the conformance table, a summary; exit 0/1/2."""
    import time

    from refflow.testing import catalog

    if min(args.dims) < 1 or args.seeds < 1 or min(args.scales) < 0:
        print("refflow verify: error: --dims and --seeds must be positive, --scales >= 0",
              file=sys.stderr)
        return 2
    try:
        catalog.load(args.catalog)
    except ImportError as exc:
        print(f"refflow verify: error: --catalog {args.catalog} needs {exc.name or 'it'} "
              f"installed (pip install \"refflow[peers]\")", file=sys.stderr)
        return 2
    progress = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            def progress(runs):
                return tqdm(runs, desc=f"refflow verify --catalog {args.catalog}",
                            unit="run", file=sys.stderr)
        except ImportError:  # the bar is a convenience: the sweep runs without it
            progress = None
    start = time.perf_counter()
    try:
        rows = catalog.sweep(args.catalog, dims=args.dims, scales=args.scales,
                             seeds=range(args.seeds), names=args.only, progress=progress)
    except ValueError as exc:  # --only names a transform the table does not have
        print(f"refflow verify: error: {exc}", file=sys.stderr)
        return 2
    print(catalog.conformance_table(rows))
    print(catalog.summary(args.catalog, rows, time.perf_counter() - start))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def verify_main(argv: list[str] | None = None) -> int:
    """Run ``refflow verify`` with the arguments ``argv``; returns the exit status.

    Examples
    --------
    >>> verify_main(["refflow.affine:Diagonal", "--dim", "3"])  # doctest: +ELLIPSIS
    check_bijection: ok ...
    0
    """
    parser = argparse.ArgumentParser(
        prog="refflow verify",
        description="Check a bijection's inverse and log-determinant numerically "
                    "(refflow.testing.check_bijection).")
    parser.add_argument("target", nargs="?",
                        help="MODULE:FACTORY, e.g. refflow.affine:Diagonal.init")
    parser.add_argument("--dim", type=int, default=2, help="event dimension D (default 2)")
    parser.add_argument("--n", type=int, default=16, help="number of input rows (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and factory")
    parser.add_argument("--torch", action="store_true",
                        help="pass float64 torch tensors instead of NumPy arrays")
    parser.add_argument("--structure", choices=STRUCTURES, help="expected Jacobian pattern")
    parser.add_argument("--density", action="store_true",
                        help="check that the flow with a N(0, I) base normalises (D <= 2)")
    _catalog_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error, 0 after --help
        return int(exc.code or 0)
    if args.catalog:
        return _catalog_main(args)
    if args.target is None:
        print("refflow verify: error: give MODULE:FACTORY or --catalog LIB", file=sys.stderr)
        return 2
    if args.dim < 1 or args.n < 1:
        print("refflow verify: error: --dim and --n must be positive", file=sys.stderr)
        return 2
    try:
        forward, inverse = _build(_resolve(args.target), args.dim, args.seed)
    except _UsageError as exc:
        print(f"refflow verify: error: {exc}", file=sys.stderr)
        return 2
    except _FactoryError as exc:
        print(f"refflow verify: error: {exc}", file=sys.stderr)
        return 1
    import numpy

    inputs = numpy.random.default_rng(args.seed).standard_normal((args.n, args.dim))
    if args.torch:
        try:
            import torch
        except ImportError:
            print("refflow verify: error: --torch needs PyTorch installed", file=sys.stderr)
            return 2
        inputs = torch.from_numpy(inputs)
    try:
        report = check_bijection(forward, inverse, inputs=inputs, structure=args.structure,
                                 density="normal" if args.density else None)
    except ValueError as exc:  # e.g. a callable that does not return (output, log_det)
        print(f"refflow verify: error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.ok else 1
