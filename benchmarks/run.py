r"""refflow against zuko, nflows and flowjax, in the same process and the same run.

For every model of ``benchmarks/models.py`` (MAF, RealNVP, a rational-quadratic spline
flow, and MAF and the spline flow conditioned on a context of 8 values: ``cmaf``, ``cnsf``,
against zuko and nflows only, the context drawn from N(0, 1) once per batch, one row per
data row), D in {2, 16, 64}, batch 256 and 8192, float32 and float64, it times ``log_prob``,
``log_prob`` + gradient (a training step without the optimiser) and ``sample``. The three
libraries are timed interleaved (one call each, in rotating order, ``--repeats`` times,
after one warm-up call each), so that load changes hit all of them alike; the table gives
medians and the ratio refflow / best peer, and geometric means of the ratios per operation
and batch. torch is pinned to as many threads as NumPy's BLAS uses (threadpoolctl), and
refflow splits large batches over as many (``refflow.backend.set_threads``).

Usage::

    python -m benchmarks                       # full grid, writes benchmarks/RESULTS.md
    python -m benchmarks --quick               # a small grid, to check the harness
    python -m benchmarks --fast 0              # the pure reference (refflow.fast off)
    python -m benchmarks --malloc both         # each glibc setting in a fresh process
    python -m benchmarks --backend cupy --batches 65536 --torch-device cuda   # on a GPU

Peers missing: ``pip install 'refflow[bench]'`` (torch, zuko, nflows, jax, flowjax; the
CPU wheels are enough). flowjax runs ``jax.jit``-compiled functions; the first call of each
(its compilation) is the warm-up call, excluded from the timings and reported apart. XLA's
thread pool is held to ``--threads`` through ``XLA_FLAGS``, set before jax is imported.
Not part of the unit tests. Timings on a shared machine
are noisy (docs/performance.md): compare ratios from one run, not times across runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks.models import BUILDERS, CONDITIONAL, CONTEXT, MODELS, TORCH_LIBRARIES

OPS = ("log_prob", "grad", "sample")
OP_NAMES = {"log_prob": "log_prob", "grad": "log_prob + grad", "sample": "sample"}
GOALS = {("log_prob", None): 1.0, ("sample", None): 1.0, ("grad", 256): 1.0, ("grad", 8192): 1.5}
MALLOC_TUNED = ("glibc.malloc.trim_threshold=17179869184:"
                "glibc.malloc.mmap_threshold=33554432")
HERE = Path(__file__).resolve().parent
PEER_HELP = ("peers missing: install them with `pip install 'refflow[bench]'` "
             "(or `pip install torch zuko nflows`; the CPU wheel of torch is enough)")


def blas_threads() -> int:
    """Threads of NumPy's BLAS (threadpoolctl), else the CPU count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else (os.cpu_count() or 1)


def _limit_blas(threads: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise SystemExit("--threads needs threadpoolctl (pip install threadpoolctl)") from None
    threadpool_limits(limits=threads, user_api="blas")


def available_libraries(requested: list[str]) -> list[str]:
    found = ["refflow"]
    for lib in requested:
        if lib == "refflow":
            continue
        try:
            __import__(lib)
            __import__("torch" if lib in TORCH_LIBRARIES else "jax")
        except ImportError:
            print(f"{lib}: not installed; {PEER_HELP}", file=sys.stderr)
            continue
        found.append(lib)
    return found


def _timed(fn, arg, sync) -> float:
    start = time.perf_counter()
    fn(arg)
    sync()
    return time.perf_counter() - start


def measure(impls: dict, op: str, x_host, batch: int, repeats: int, budget_s: float) -> dict:
    """Median seconds per library for one operation; calls interleaved in rotating order.

    A configuration whose first round takes long gets fewer rounds (at least 3), so that
    the whole grid fits in ``budget_s`` seconds per cell.
    """
    calls = {}
    for lib, impl in impls.items():
        # a conditional model's input is the pair (x, c), for sampling too (c: one per sample)
        sample_n = op == "sample" and not isinstance(x_host, tuple)
        arg = batch if sample_n else impl.prepare(x_host)
        fn = {"log_prob": impl.log_prob, "grad": impl.loss_grad, "sample": impl.sample}[op]
        calls[lib] = (fn, arg, impl.sync)
    times = {lib: [] for lib in impls}
    libs = list(impls)
    for lib in libs:  # warm-up: allocations, lazy initialisation
        fn, arg, sync = calls[lib]
        _timed(fn, arg, sync)
    rounds = repeats
    for r in range(repeats):
        order = libs[r % len(libs):] + libs[: r % len(libs)]
        for lib in order:
            times[lib].append(_timed(*calls[lib]))
        if r == 0:
            per_round = sum(t[0] for t in times.values())
            rounds = max(3, min(repeats, int(budget_s / max(per_round, 1e-9))))
        if r + 1 >= rounds:
            break
    return {lib: statistics.median(t) for lib, t in times.items()}


def run_grid(args) -> dict:
    """All rows of the benchmark as a JSON-able dict (meta + rows)."""
    import numpy

    if args.threads:
        _limit_blas(args.threads)
    threads = args.threads or blas_threads()
    if "flowjax" in args.libraries and "XLA_FLAGS" not in os.environ:
        # read by XLA when jax is first imported, which available_libraries does
        from benchmarks.flowjax_models import xla_flags

        os.environ["XLA_FLAGS"] = xla_flags(threads)
    from refflow import backend as B

    if args.fast is not None:
        from refflow import fast

        fast.set_enabled(bool(args.fast))
    # refflow's share of the second core: its batch split (evaluation and sampling)
    B.set_threads(threads)
    libs = available_libraries(args.libraries)
    if any(lib in TORCH_LIBRARIES for lib in libs):
        import torch

        torch.set_num_threads(threads)
    if args.backend == "cupy":
        B.set_backend("cupy")
    print(_threads_text(dict(threads=threads, refflow_threads=B.get_threads())), flush=True)
    rows, compile_rows = [], []
    host = numpy.random.default_rng(0)
    for model in args.models:
        for dim in args.dims:
            for dtype in args.dtypes:
                impls = {lib: _build(lib, model, dim, dtype, args) for lib in libs
                         if not (lib == "flowjax" and model in CONDITIONAL)}
                counts = {lib: impl.n_params for lib, impl in impls.items()}
                compiled = {lib: impl.compile_seconds for lib, impl in impls.items()
                            if hasattr(impl, "compile_seconds")}
                smallest = {}  # op -> (batch, slowest library's seconds)
                for batch in sorted(args.batches):
                    # data from a standard normal: inside every flow's domain
                    x = host.standard_normal((batch, dim)).astype(dtype)
                    if model in CONDITIONAL:
                        x = (x, host.standard_normal((batch, CONTEXT)).astype(dtype))
                    for op in args.ops:
                        row = dict(model=model, dim=dim, dtype=dtype, batch=batch, op=op,
                                   params=counts)
                        # cost is at most linear in the batch: skip what would not fit
                        if op in smallest:
                            predicted = smallest[op][1] * batch / smallest[op][0]
                            if predicted > args.max_call:
                                rows.append(dict(row, skipped=predicted))
                                print(_row_text(rows[-1]), flush=True)
                                continue
                        row["seconds"] = measure(impls, op, x, batch, args.repeats, args.budget)
                        smallest.setdefault(op, (batch, max(row["seconds"].values())))
                        rows.append(row)
                        print(_row_text(rows[-1]), flush=True)
                for lib, seconds in compiled.items():
                    compile_rows.append(dict(library=lib, model=model, dim=dim, dtype=dtype,
                                             seconds=dict(seconds)))
    return dict(meta=_meta(threads, libs, args), rows=rows, compile=compile_rows)


def _build(lib: str, model: str, dim: int, dtype: str, args):
    if lib == "refflow":
        return BUILDERS[lib](model, dim, dtype, backend=args.backend)
    if lib == "flowjax":
        return BUILDERS[lib](model, dim, dtype)
    return BUILDERS[lib](model, dim, dtype, device=args.torch_device)


def ratio(row: dict) -> float:
    peers = [t for lib, t in row["seconds"].items() if lib != "refflow"]
    return row["seconds"]["refflow"] / min(peers) if peers else float("nan")


def _vs(row: dict, peer: str) -> float:
    return row["seconds"]["refflow"] / row["seconds"][peer]


def goal(row: dict) -> float:
    return GOALS.get((row["op"], row["batch"]), GOALS.get((row["op"], None), math.inf))


def _row_text(row: dict) -> str:
    if "skipped" in row:
        return (f"{row['model']:8s} D={row['dim']:<3d} {row['dtype']:8s} N={row['batch']:<6d} "
                f"{row['op']:8s} skipped: about {row['skipped']:.0f} s per call predicted")
    times = "  ".join(f"{lib} {1e3 * t:9.2f} ms" for lib, t in row["seconds"].items())
    return (f"{row['model']:8s} D={row['dim']:<3d} {row['dtype']:8s} N={row['batch']:<6d} "
            f"{row['op']:8s} {times}  ratio {ratio(row):.2f}")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meta(threads: int, libs: list, args) -> dict:
    from refflow import backend as B

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        load=" ".join(f"{v:.1f}" for v in load),
        threads=threads, refflow_threads=B.get_threads(), libraries=libs, backend=args.backend,
        torch_device=args.torch_device,
        glibc_tunables=os.environ.get("GLIBC_TUNABLES", "(unset)"),
        versions={n: _version(n) for n in
                  ("numpy", "autograd", "torch", "zuko", "nflows", "jax", "flowjax",
                   "cupy-cuda12x", "cupy-cuda13x", "cupy")},
        python=platform.python_version(),
        fast=_fast_enabled(),
    )


def _fast_text(flag) -> str:
    return {True: "on", False: "off (the pure reference)"}.get(flag, "not recorded")


def _fast_enabled():
    """Whether refflow's fast layer is on (None for a refflow without one)."""
    try:
        from refflow import fast
    except ImportError:
        return None
    return fast.is_enabled()


def _threads_text(meta: dict) -> str:
    split = meta.get("refflow_threads")  # absent from the JSON of runs before the split
    if split == meta["threads"]:
        return f"threads (BLAS, torch and refflow's batch split): {split}"
    text = f"threads (BLAS and torch): {meta['threads']}"
    return text if split is None else f"{text}; refflow's batch split: {split}"


def _geomean(values: list) -> float:
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def markdown(result: dict, title: str) -> str:
    """The table of medians and ratios, geometric means, and which goals are met."""
    meta, skipped = result["meta"], [r for r in result["rows"] if "skipped" in r]
    rows = [r for r in result["rows"] if "skipped" not in r]
    libs = meta["libraries"]
    out = [f"## {title}", ""]
    out += [f"- date: {meta['date']}; load average at the end: {meta['load']}",
            f"- machine: {meta['machine']}",
            f"- backend: {meta['backend']}; torch device: {meta['torch_device']}; "
            f"{_threads_text(meta)}; GLIBC_TUNABLES: {meta['glibc_tunables']}; "
            f"refflow fast layer: {_fast_text(meta.get('fast'))}",
            "- versions: python " + meta["python"] + ", " + ", ".join(
                f"{k} {v}" for k, v in meta["versions"].items() if v != "-"), ""]
    head = ["model", "D", "dtype", "batch", "operation", *[f"{lib} ms" for lib in libs],
            "refflow / best peer", "goal"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        if "skipped" in row:
            cells = [row["model"], str(row["dim"]), row["dtype"], str(row["batch"]),
                     OP_NAMES[row["op"]], *["-" for _ in libs],
                     f"skipped: ~{row['skipped']:.0f} s per call predicted", "-"]
            out.append("| " + " | ".join(cells) + " |")
            continue
        r, g = ratio(row), goal(row)
        cells = [row["model"], str(row["dim"]), row["dtype"], str(row["batch"]),
                 OP_NAMES[row["op"]],
                 # "-": a library not run on this model (flowjax on the conditional ones)
                 *[f"{1e3 * row['seconds'][lib]:.2f}" if lib in row["seconds"] else "-"
                   for lib in libs],
                 f"{r:.2f}", ("-" if r != r else "met" if r <= g else f"not met (<= {g})")]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Geometric mean of refflow / best peer:", "",
            "| operation | " + " | ".join(f"batch {b}" for b in _batches(rows)) + " | all |",
            "|---|" + "---|" * (len(_batches(rows)) + 1)]
    for op in OPS:
        sel = [row for row in rows if row["op"] == op]
        if sel:
            cells = [_geomean([ratio(r) for r in sel if r["batch"] == b]) for b in _batches(rows)]
            cells.append(_geomean([ratio(r) for r in sel]))
            out.append(f"| {OP_NAMES[op]} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    peers = [lib for lib in libs if lib != "refflow"]
    if len(peers) > 1:
        out += ["", "Geometric mean of refflow / each peer (per operation; batches as above):", "",
                "| operation | peer | " + " | ".join(f"batch {b}" for b in _batches(rows))
                + " | all | worst cell |", "|---|---|" + "---|" * (len(_batches(rows)) + 2)]
        for op in OPS:
            for peer in peers:
                sel = [r for r in rows if r["op"] == op and peer in r["seconds"]]
                if not sel:
                    continue
                cells = [_geomean([_vs(r, peer) for r in sel if r["batch"] == b])
                         for b in _batches(rows)]
                cells += [_geomean([_vs(r, peer) for r in sel]), max(_vs(r, peer) for r in sel)]
                out.append(f"| {OP_NAMES[op]} | {peer} | "
                           + " | ".join(f"{c:.2f}" for c in cells) + " |")
    uneven = sorted({(r["model"], r["dim"], lib, n) for r in rows
                     for lib, n in r["params"].items() if n != r["params"]["refflow"]})
    if uneven:
        out += ["", "Parameter counts that differ from refflow's (construction differences "
                "are described in benchmarks/models.py and flowjax_models.py): "
                + "; ".join(f"{m} D {d}: {lib} {n}" for m, d, lib, n in uneven) + "."]
    if result.get("compile"):
        total = [s for c in result["compile"] for s in c["seconds"].values()]
        out += ["", f"jax.jit compile times (first call per shape, excluded from the timings): "
                f"{len(total)} compilations, median {statistics.median(total):.2f} s, "
                f"max {max(total):.2f} s, total {sum(total):.1f} s."]
    met = sum(ratio(r) <= goal(r) for r in rows)
    out += ["", f"Goals met in {met} of {len(rows)} measured configurations "
            f"({len(skipped)} skipped for time).", ""]
    return "\n".join(out)


def _batches(rows: list) -> list:
    return sorted({row["batch"] for row in rows})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--dims", nargs="+", type=int, default=[2, 16, 64])
    p.add_argument("--batches", nargs="+", type=int, default=[256, 8192])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--libraries", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument("--repeats", type=int, default=9, help="rounds per cell (at least 3)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of rounds per cell")
    p.add_argument("--max-call", type=float, default=8.0,
                   help="skip cells predicted (from the smaller batch) to take longer per call")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS, torch and refflow batch-split threads "
                        "(0: torch and refflow as NumPy's BLAS)")
    p.add_argument("--fast", type=int, choices=[0, 1], default=None,
                   help="refflow's fast layer off (0: the pure reference) or on (1); "
                        "default: REFFLOW_FAST, else on")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "strict"],
                   help="refflow's arrays; 'strict': the tests' stand-in for CuPy, on the CPU")
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="D 2 and 16, batch 256, 3 rounds")
    p.add_argument("--malloc", default="current", choices=["current", "both"],
                   help="'both': default and tuned glibc thresholds, each in a fresh process")
    p.add_argument("--json", help="write the raw rows here instead of RESULTS.md")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="only write RESULTS.md from the --json files of earlier runs")
    p.add_argument("--output", default=str(HERE / "RESULTS.md"))
    return p


def main(argv: list | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.combine:
        results = [json.loads(Path(f).read_text()) for f in args.combine]
        _write(args.output, [markdown(r, f"{r['meta']['threads']} thread(s), GLIBC_TUNABLES "
                                         f"{r['meta']['glibc_tunables']}") for r in results])
        return
    if args.quick:
        args.dims, args.batches, args.repeats = [2, 16], [256], 3
    if args.malloc == "both":
        sections = []
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])
                     if a not in ("--malloc", "both")]
        for label, tunables in (("glibc defaults", None), ("glibc tuned", MALLOC_TUNED)):
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            path = Path(args.output).with_suffix(f".{label.split()[1]}.json")
            subprocess.run([sys.executable, "-m", "benchmarks", *forwarded, "--json", str(path)],
                           env=env, check=True)
            sections.append(markdown(json.loads(path.read_text()), label))
            path.unlink()
        _write(args.output, sections)
        return
    result = run_grid(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    else:
        _write(args.output, [markdown(result, "results")])


def _write(path: str, sections: list) -> None:
    intro = ("# refflow vs zuko, nflows and flowjax\n\nWritten by `python -m benchmarks` "
             "(benchmarks/run.py); medians of interleaved calls, ratio > 1 = refflow slower. "
             "Architectures are the same (benchmarks/models.py); parameter counts are identical "
             "unless a line under a table says otherwise.\n\n")
    Path(path).write_text(intro + "\n".join(sections))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
