r"""The cost asymmetry of autoregressive flows, measured: conditioner passes and wall time.

For D in {2, 8, 32, 128}, a MAF and an IAF with the same MADE conditioner (two hidden layers
of width max(64, 2D), the lecture's affine transformer) evaluate ``log_prob`` of a batch and
``sample`` a batch of the same size. The passes are counted by wrapping the conditioner in a
callable that counts its calls (the flows themselves hold no counters); times are the median
of ``--repeats`` runs after one warm-up run (the counted one). Prints a markdown table.

Expected from the lecture: MAF density 1 pass, MAF sampling D passes; IAF the other way.

Usage: ``python benchmarks/autoregressive_costs.py [--batch 1000] [--repeats 3]``.
Timings depend on the machine and on glibc's allocator (see notes/performance.md); the
pass counts do not.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from refflow import backend as B
from refflow.autoregressive import IAF, MADE, MAF
from refflow.core import Flow
from refflow.distributions import StandardNormal

DIMS = (2, 8, 32, 128)


class CountingConditioner:
    """Wraps a conditioner and counts its calls: the number of conditioner passes."""

    def __init__(self, made: Any):
        self.made = made
        self.dim = made.dim
        self.outputs_per_dim = made.outputs_per_dim
        self.calls = 0

    def __call__(self, v):
        self.calls += 1
        return self.made(v)


def measure(fn, counter: CountingConditioner, repeats: int) -> tuple[int, float]:
    """(passes of one call, median wall time in ms); the counted call is also the warm-up."""
    counter.calls = 0
    fn()
    passes = counter.calls
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return passes, 1000.0 * statistics.median(times)


def run(batch: int, repeats: int) -> list[dict]:
    rows = []
    for dim in DIMS:
        width = max(64, 2 * dim)
        made = MADE.init(B.rng(dim), dim, hidden=(width, width))
        for cls in (MAF, IAF):
            counter = CountingConditioner(made)
            flow = Flow(StandardNormal(dim), cls(counter))
            x = B.rng(1).standard_normal((batch, dim))
            rng = B.rng(2)
            density = measure(lambda f=flow, x=x: f.log_prob(x), counter, repeats)
            sampling = measure(lambda f=flow, r=rng: f.sample(batch, r), counter, repeats)
            rows.append({"D": dim, "flow": cls.__name__, "hidden": width,
                         "density": density, "sampling": sampling})
    return rows


def table(rows: list[dict], batch: int) -> str:
    lines = [
        f"| D | flow | hidden | density passes | density ms (batch {batch}) "
        f"| sampling passes | sampling ms (batch {batch}) | sampling / density time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        (dp, dt), (sp, st) = r["density"], r["sampling"]
        lines.append(f"| {r['D']} | {r['flow']} | {r['hidden']} | {dp} | {dt:.2f} | {sp} "
                     f"| {st:.2f} | {st / dt:.3g}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(table(run(args.batch, args.repeats), args.batch))


if __name__ == "__main__":
    main()
