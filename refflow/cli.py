r"""The ``refflow`` command: ``tour``, ``train``, ``sample``, ``log-prob``, ``vi`` and ``verify``.

``refflow tour`` walks the lecture in order and is the first command to run. The others
train a flow by maximum likelihood (``train``: on a built-in 2-D set or on your own data, a
``.npy`` or ``.csv`` file with one row per sample) or by variational inference against an
energy U1..U5 (``vi``), draw samples from a saved model (``sample``), score data with one
(``log-prob``) and check any bijection implementation (``verify``, see ``refflow.testing``).
Every model the command writes is loaded back before it reports success.

Conditional flows p(x | c): ``train --context C`` (a .npy or .csv file, one context row per
data row) builds the flow with ``context_dim`` = C's width; ``sample --context`` (one row
per sample, or one row for all) and ``log-prob --context`` (one row per data row, or one
for all) then need a context of that width, and refuse one for a model trained without.

Exit status: 0 on success, 1 when the command fails while running (an unreadable model
file, an output that cannot be written, a training run that diverges), 2 for a usage
error (an unknown flow, dataset or target, a malformed or out-of-range number, a data file
that is not one real, finite, non-empty table of the right width, a context missing for a
conditional model, given to an unconditional one, or of the wrong width or number of
rows). Every failure is one
line on stderr, never a traceback.

Notes
-----
Lecture: the whole lecture (``tour``), the two applications of flows (``train``: density
estimation; ``vi``: variational inference with the ELBO) and sampling (``sample``).

Examples
--------
>>> parser = build_parser()
>>> parser.parse_args(["train", "--data", "moons", "--flow", "realnvp", "--out", "x"]).layers
6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from refflow import backend as B
from refflow.workers import WorkerError

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``refflow`` and its sub-commands."""
    from refflow.datasets import DATASETS
    from refflow.potentials import POTENTIALS
    from refflow.tour import FLOWS

    parser = argparse.ArgumentParser(
        prog="refflow", description="Normalizing flows, the readable reference. "
        "Start with `refflow tour`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("tour", help="walk the lecture: every construct checked live, "
                       "RealNVP on two moons, planar flows on U1, figures",
                       description="Walk the lecture in order (under two minutes on 2 cores).")
    p.add_argument("--out", default="tour", help="output folder for the figures (default: ./tour)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--moons-steps", type=_positive_int, default=800,
                   help="RealNVP training steps (default 800)")
    p.add_argument("--vi-steps", type=_positive_int, default=600,
                   help="planar-flow VI steps (default 600)")

    p = sub.add_parser("train", help="fit a flow to data by maximum likelihood",
                       description="Fit a flow by maximum likelihood; writes model.npz, "
                       "metrics.json and (for 2-D data) figures into --out.")
    p.add_argument("--data", required=True, metavar="DATA",
                   help=f"a built-in dataset ({', '.join(sorted(DATASETS))}) or a .npy or "
                   ".csv file, one row per sample (csv: numbers separated by commas, "
                   "'#' starts a comment)")
    p.add_argument("--flow", required=True, choices=sorted(FLOWS), help="flow family")
    p.add_argument("--layers", type=_positive_int, default=6, help="layers (default 6)")
    p.add_argument("--hidden", type=_positive_int, default=32, help="hidden units (default 32)")
    p.add_argument("--steps", type=_positive_int, default=2000, help="steps (default 2000)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="batch (default 256)")
    p.add_argument("--lr", type=_positive_float, default=3e-3, help="peak learning rate")
    p.add_argument("--n", type=_positive_int, default=None,
                   help=f"training samples drawn from a built-in dataset (default 5000, at "
                   f"least {_MIN_ROWS})")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--context", metavar="CONTEXT", default=None,
                   help="a .npy or .csv file of contexts, one row per row of --data: fits "
                   "the conditional flow p(x | c) (needs a --data file)")
    p.add_argument("--processes", type=_positive_int, default=1,
                   help="cores for each step's gradient, one process each (default 1; "
                   "pays at large --batch-size)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")

    p = sub.add_parser("sample", help="draw samples from a saved model",
                       description="Draw samples from a model saved by `refflow train` or "
                       "`refflow vi`; --out ending in .npy, .csv or .png.")
    p.add_argument("--model", required=True, help="path of a model .npz")
    p.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output file: .npy, .csv or .png")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--context", metavar="CONTEXT", default=None,
                   help="for a conditional model: a .npy or .csv file with one context row "
                   "per sample, or one row for all samples")

    p = sub.add_parser("log-prob", help="score data with a saved model: log p(x) per row",
                       description="Evaluate log p(x) of a saved model on every row of "
                       "--data (.npy or .csv); --out ending in .npy or .csv.")
    p.add_argument("--model", required=True, help="path of a model .npz")
    p.add_argument("--data", required=True, help="a .npy or .csv file, one row per sample")
    p.add_argument("--out", required=True, help="output file: .npy or .csv, one value per row")
    p.add_argument("--context", metavar="CONTEXT", default=None,
                   help="for a conditional model: a .npy or .csv file with one context row "
                   "per row of --data, or one row for all of them")

    p = sub.add_parser("vi", help="fit a flow to an energy U1..U5 by variational inference",
                       description="Maximise the ELBO of a flow q against exp(-U); reports "
                       "KL(q || p) = log Z - ELBO with log Z by quadrature.")
    p.add_argument("--target", required=True, choices=sorted(POTENTIALS), help="energy U")
    p.add_argument("--flow", default="planar", choices=sorted(FLOWS), help="flow family")
    p.add_argument("-K", "--layers", dest="layers", type=_positive_int, default=32,
                   help="number of layers K (default 32)")
    p.add_argument("--hidden", type=_positive_int, default=32, help="hidden units (default 32)")
    p.add_argument("--steps", type=_positive_int, default=3000, help="steps (default 3000)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="samples per step")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate")
    p.add_argument("--anneal", type=_nonnegative_int, default=None,
                   help="annealing steps (default: half of --steps)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")

    p = sub.add_parser("verify", help="check a bijection implementation (refflow.testing)",
                       description="Delegates to refflow.testing.verify_main: "
                       "refflow verify MODULE:FACTORY [--dim D] [--n N]; with --dask [ADDRESS] "
                       "[--dims D ...] [--seeds S ...] on a Dask cluster (refflow.dask).",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="MODULE:FACTORY [--dim D] [--n N]")
    return parser


class CommandError(Exception):
    """A failure while running a command: reported on stderr, exit status 1."""


class UsageError(Exception):
    """Input the command cannot use (an argument, a data file): exit status 2."""


# the built-in sets' draws and a file's rows: fit holds out 10% for validation, and both
# sides of that split need samples
_MIN_ROWS = 10


def _read_table(path: str, arg: str) -> Any:
    """A data file as an (N, D) float64 array: ``.npy`` or ``.csv``, one row per sample."""
    import autograd.numpy as np

    from refflow.checks import check_array

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise UsageError(f"{arg}: expected a .npy or .csv file, got {path!r}")
    if not os.path.isfile(path):
        raise UsageError(f"{arg}: no file at {path!r}")
    try:
        if ext == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            x = np.loadtxt(path, delimiter=",", ndmin=2, dtype=float)
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{arg}: cannot read {path!r} as {ext[1:]} ({reason})") from None
    try:
        check_array(arg, x, ndim=2)
    except ValueError as exc:
        reason = str(exc).removeprefix(f"{arg}: ")
        raise UsageError(f"{arg}: {path!r}: {reason} (one row per sample)") from None
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise UsageError(f"{arg}: {path!r} holds no samples (shape {x.shape})")
    return B.asarray(x, dtype=np.float64)


def _read_context(path: str | None, flow: Any, rows: int, per: str) -> Any:
    """``--context``: None, or the (rows, C) or (1, C) table ``flow`` needs.

    A context given to an unconditional model, a missing one for a conditional model, a
    width other than the model's C or a number of rows other than ``rows`` or 1 (one context
    for all rows) is a ``UsageError``.
    """
    from refflow.core import context_dim_of

    dim = context_dim_of(flow)
    if path is None:
        if dim:
            raise UsageError(f"--context: the model is conditional (contexts of {dim} values); "
                             f"give a .npy or .csv file with one context row per {per}")
        return None
    if not dim:
        raise UsageError("--context: the model takes no context (it was trained without "
                         "--context)")
    c = _read_table(path, "--context")
    if c.shape[1] != dim:
        raise UsageError(f"--context: the model takes contexts of {dim} values, {path!r} has "
                         f"rows of {c.shape[1]}")
    if c.shape[0] not in (rows, 1):
        raise UsageError(f"--context: expected {rows} rows (one per {per}) or 1 (for all), "
                         f"{path!r} has {c.shape[0]}")
    return c


def _load_model(path: str) -> Any:
    from refflow import io

    try:
        flow = io.load(path)
    except ValueError as exc:
        raise CommandError(f"--model: {exc}") from None
    if not (hasattr(flow, "sample") and hasattr(flow, "log_prob")):
        raise CommandError(f"--model: {path!r} holds a {type(flow).__name__}, not a Flow")
    return flow


def _output(path: str, extensions: tuple) -> str:
    """Check ``--out`` before the work: a file name with a known extension in a folder."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise UsageError(f"--out: expected a file ending in {', '.join(extensions)}, got "
                         f"{path!r}")
    if os.path.isdir(path):
        raise UsageError(f"--out: {path!r} is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"--out: the folder {folder!r} does not exist")
    return ext


def _save_checked(path: str, flow: Any) -> None:
    """Save the model and load it back: a file the command wrote must be one load accepts."""
    from refflow import io

    io.save(path, flow)
    try:
        io.load(path)
    except ValueError as exc:
        raise CommandError(f"the model written to {path!r} does not load back ({exc})") from None


def _folder(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"--out: cannot create the folder {path!r} ({exc.strerror})") from None
    return path


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def _write_rows(path: str, ext: str, x: Any) -> None:
    import autograd.numpy as np

    try:
        if ext == ".npy":
            np.save(path, x)
        else:
            np.savetxt(path, x.reshape(x.shape[0], -1), delimiter=",")
    except OSError as exc:
        raise CommandError(f"--out: cannot write {path!r} ({exc.strerror or exc})") from None


def _cmd_tour(args) -> None:
    from refflow.tour import run_tour

    run_tour(_folder(args.out), seed=args.seed, moons_steps=args.moons_steps,
             vi_steps=args.vi_steps)


def _cmd_train(args) -> None:
    import autograd.numpy as np

    from refflow import plot
    from refflow.datasets import DATASETS, LOG_PROBS
    from refflow.tour import build_flow
    from refflow.train import fit
    from refflow.tree import count_parameters

    rng = B.rng(args.seed)
    context = context_test = None
    if args.data in DATASETS:
        if args.context is not None:
            raise UsageError("--context: only with a --data file (one context row per data "
                             "row); the built-in datasets have no context")
        n = 5000 if args.n is None else args.n
        if n < _MIN_ROWS:
            raise UsageError(f"--n: expected at least {_MIN_ROWS} samples (a tenth is held "
                             f"out for validation), got {n}")
        sampler = DATASETS[args.data]
        data, test = sampler(n, rng), sampler(2000, rng)
    elif os.path.splitext(args.data)[1].lower() in (".npy", ".csv"):
        if args.n is not None:
            raise UsageError("--n: only for a built-in dataset; a file is used whole")
        table = _read_table(args.data, "--data")
        if table.shape[0] < 2 * _MIN_ROWS:
            raise UsageError(f"--data: expected at least {2 * _MIN_ROWS} rows (a tenth is "
                             f"held out for the test NLL, a tenth of the rest for "
                             f"validation), got {table.shape[0]}")
        if args.context is not None:
            # sized like the data and not checked against a model: none is built yet
            context = _read_table(args.context, "--context")
            if context.shape[0] != table.shape[0]:
                raise UsageError(f"--context: expected {table.shape[0]} rows (one per row of "
                                 f"--data), {args.context!r} has {context.shape[0]}")
        order = rng.permutation(table.shape[0])
        shuffled = table[order]
        n_test = max(1, table.shape[0] // 10)
        data, test = shuffled[n_test:], shuffled[:n_test]
        if context is not None:
            # the same permutation and split: row i of the context stays with row i of x
            context, context_test = context[order][n_test:], context[order][:n_test]
    else:
        raise UsageError(f"--data: expected one of {sorted(DATASETS)} or a .npy or .csv "
                         f"file, got {args.data!r}")
    out = _folder(args.out)
    dim = data.shape[1]
    context_dim = 0 if context is None else context.shape[1]
    try:
        flow = build_flow(args.flow, dim, args.layers, rng, hidden=args.hidden,
                          context_dim=context_dim)
    except ValueError as exc:
        raise UsageError(f"--flow: {args.flow} cannot model {dim}-d data ({exc})") from None
    start = time.perf_counter()
    flow, hist = fit(flow, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     rng=rng, validation=0.1, schedule="cosine", clip_norm=10.0,
                     eval_every=max(1, min(100, args.steps // 10)), context=context,
                     processes=args.processes)
    seconds = time.perf_counter() - start
    log_q = B.to_numpy(flow.log_prob(test, context_test))
    metrics: dict[str, Any] = {
        "data": args.data, "dim": dim, "flow": args.flow, "layers": args.layers,
        "hidden": args.hidden, "steps": args.steps, "parameters": count_parameters(flow),
        "best_val_nll": hist["best_val_nll"], "best_step": hist["best_step"],
        "test_nll": float(-np.mean(log_q)), "train_seconds": seconds, "seed": args.seed,
        "context": args.context, "context_dim": context_dim,
    }
    if args.data in LOG_PROBS:
        # KL(p || q) = E_p[log p - log q] on the test draws, where p is known exactly
        metrics["kl_true_to_model"] = float(np.mean(B.to_numpy(LOG_PROBS[args.data](test))
                                                     - log_q))
    _save_checked(os.path.join(out, "model.npz"), flow)
    _write_json(os.path.join(out, "metrics.json"), metrics)
    written = ["model.npz", "metrics.json"]
    if dim == 2 and context is not None:
        # p(x | c) differs per row: samples at the data's own contexts, latents at their
        # pairs; no density figure, which would hold for one context only
        host = B.to_numpy(data)
        lo, hi = host.min(axis=0) - 0.5, host.max(axis=0) + 0.5
        box = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
        plot.samples(data[:2000], title=f"data: {os.path.basename(args.data)}", bounds=box,
                     path=os.path.join(out, "data.png"))
        z, _ = flow.bijection.inverse(data[:2000], context=context[:2000])
        plot.samples(z, title="latent z = f^-1(x; c)", path=os.path.join(out, "latent.png"))
        x = flow.sample(min(2000, data.shape[0]), rng, context=context[:2000])
        plot.samples(x, title=f"samples: {args.flow}, at the data's contexts", bounds=box,
                     color="tab:green", path=os.path.join(out, "samples.png"))
        written += ["data.png", "latent.png", "samples.png"]
    elif dim == 2:
        host = B.to_numpy(data)
        lo, hi = host.min(axis=0) - 0.5, host.max(axis=0) + 0.5
        box = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
        plot.samples(data[:2000], title=f"data: {os.path.basename(args.data)}", bounds=box,
                     path=os.path.join(out, "data.png"))
        plot.latent(flow, data[:2000], path=os.path.join(out, "latent.png"))
        plot.samples(flow.sample(2000, rng), title=f"samples: {args.flow}", bounds=box,
                     color="tab:green", path=os.path.join(out, "samples.png"))
        plot.density(flow, bounds=box, n=150, title="density",
                     path=os.path.join(out, "density.png"))
        written += ["data.png", "latent.png", "samples.png", "density.png"]
    plot.curves(hist, title=f"{args.flow} on {os.path.basename(args.data)}",
                path=os.path.join(out, "curves.png"))
    written.append("curves.png")
    print(f"test NLL {metrics['test_nll']:.4f} nats (best validation {hist['best_val_nll']:.4f}"
          f" at step {hist['best_step']}); wrote {', '.join(written)} to {out}")


def _cmd_sample(args) -> None:
    from refflow import plot

    ext = _output(args.out, (".npy", ".csv", ".png"))
    flow = _load_model(args.model)
    context = _read_context(args.context, flow, args.n, "sample")
    x = B.to_numpy(flow.sample(args.n, B.rng(args.seed), context=context))
    if ext == ".png":
        if x.ndim != 2 or x.shape[1] != 2:
            raise UsageError(f"--out: a .png needs 2-D samples, got shape {x.shape}")
        plot.samples(x, title=f"{args.n} samples", path=args.out)
    else:
        _write_rows(args.out, ext, x)
    print(f"wrote {args.n} samples of shape {tuple(x.shape[1:])} to {args.out}")


def _cmd_log_prob(args) -> None:
    import autograd.numpy as np

    ext = _output(args.out, (".npy", ".csv"))
    flow = _load_model(args.model)
    x = _read_table(args.data, "--data")
    event = tuple(flow.event_shape)
    if len(event) != 1 or x.shape[1] != event[0]:
        raise UsageError(f"--data: the model takes samples of shape {event}, the file has "
                         f"rows of {x.shape[1]} values")
    context = _read_context(args.context, flow, x.shape[0], "row of --data")
    log_p = B.to_numpy(flow.log_prob(x, context))
    _write_rows(args.out, ext, log_p)
    print(f"mean log p(x) {float(np.mean(log_p)):.4f} nats over {x.shape[0]} rows; wrote "
          f"{args.out}")


def _cmd_vi(args) -> None:
    from refflow import plot
    from refflow.potentials import BOXES, NORMALISABLE, POTENTIALS, reference_log_z
    from refflow.tour import build_flow
    from refflow.train import elbo, fit_vi

    out = _folder(args.out)
    rng = B.rng(args.seed)
    U = POTENTIALS[args.target]

    def log_target(z):
        return -U(z)

    q = build_flow(args.flow, 2, args.layers, rng, hidden=args.hidden)
    anneal = args.steps // 2 if args.anneal is None else args.anneal
    start = time.perf_counter()
    q, hist = fit_vi(q, log_target, steps=args.steps, rng=rng, batch_size=args.batch_size,
                     lr=args.lr, anneal_steps=anneal, clip_norm=100.0,
                     eval_every=max(1, min(100, args.steps // 10)))
    seconds = time.perf_counter() - start
    est, se = elbo(q, log_target, 20000, rng)
    log_z = reference_log_z(args.target)
    metrics = {"target": args.target, "flow": args.flow, "K": args.layers, "steps": args.steps,
               "elbo": est, "elbo_se": se, "log_z": log_z, "kl": log_z - est,
               "log_z_box": list(BOXES[args.target]),
               "normalisable_on_R2": args.target in NORMALISABLE,
               "train_seconds": seconds, "seed": args.seed}
    _save_checked(os.path.join(out, "model.npz"), q)
    _write_json(os.path.join(out, "metrics.json"), metrics)
    box = (-4.0, 4.0, -4.0, 4.0)
    fig, axes = plot.figure(1, 3)
    plot.density(log_target, bounds=box, n=150, ax=axes[0, 0], title=f"exp(-{args.target})")
    plot.density(q, bounds=box, n=150, ax=axes[0, 1], title=f"q: {args.flow}, K = {args.layers}")
    plot.samples(q.sample(2000, rng), ax=axes[0, 2], title="samples of q", bounds=box,
                 color="tab:green")
    fig.savefig(os.path.join(out, "density.png"), dpi=110)
    plot.curves(hist, title=f"ELBO, {args.flow} on {args.target}",
                path=os.path.join(out, "curves.png"))
    where = "R^2" if args.target in NORMALISABLE else "the box " + str(BOXES[args.target])
    print(f"ELBO {est:.4f} +- {se:.4f}; log Z on {where} = {log_z:.4f}; KL(q || p) = "
          f"{log_z - est:.4f} +- {se:.4f} nats; wrote model.npz, metrics.json, density.png, "
          f"curves.png to {out}")


def _cmd_verify(args) -> int:
    if "--dask" in args.rest:
        # the same runs spread over a Dask cluster, per --dims/--seeds (refflow[dask])
        from refflow.dask import verify_main as verify_on_dask

        return int(verify_on_dask(list(args.rest)))
    from refflow.testing import verify_main

    return int(verify_main(list(args.rest)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``refflow`` with ``argv`` (default: the command line); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        # everything after `verify` belongs to verify_main, --help included
        return _cmd_verify(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    commands = {"tour": _cmd_tour, "train": _cmd_train, "sample": _cmd_sample,
                "log-prob": _cmd_log_prob, "vi": _cmd_vi}
    try:
        commands[args.command](args)
    except (UsageError, ValueError) as exc:
        # a ValueError from the library names the argument it refused
        return _fail(args.command, exc, 2)
    except (CommandError, FloatingPointError) as exc:
        return _fail(args.command, exc, 1)
    except WorkerError as exc:
        # a worker's traceback: its first line says which worker, its last what it raised
        lines = str(exc).strip().splitlines()
        return _fail(args.command, " ... ".join(lines[:1] + lines[-1:] if len(lines) > 1
                                                else lines), 1)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(args.command, f"{exc.strerror or exc}{where}", 1)
    except MemoryError:
        return _fail(args.command, "out of memory: ask for fewer samples or a smaller "
                     "model", 1)
    return 0


def _fail(command: str, message: Any, status: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"refflow {command}: error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
