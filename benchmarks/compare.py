r"""Two refflows against each other: new / old per operation and batch, from alternated runs.

Each argument pair is one alternation: the ``--json`` output of ``python -m benchmarks`` for
the new code and for the old one, run one after the other in fresh processes with the same
seeds (``--libraries refflow``). For every (operation, batch) the ratio new / old is taken
per cell (model, D, dtype) and alternation; the table gives their geometric mean and the
lowest and highest per-alternation geometric means (the spread). Also serves fast layer on /
off (``--fast 1`` as new, ``--fast 0`` as old).

Usage::

    python -m benchmarks.compare new1.json old1.json new2.json old2.json new3.json old3.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def _seconds(path: str) -> dict:
    """(model, dim, dtype, batch, op) -> refflow's median seconds, from one --json file."""
    rows = json.loads(Path(path).read_text())["rows"]
    return {(r["model"], r["dim"], r["dtype"], r["batch"], r["op"]): r["seconds"]["refflow"]
            for r in rows if "seconds" in r}


def _geomean(values: list) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def ratios(pairs: list) -> dict:
    """(op, batch) -> per-alternation lists of new / old ratios, one list per pair."""
    out: dict = defaultdict(list)
    for new_path, old_path in pairs:
        new, old = _seconds(new_path), _seconds(old_path)
        per_pair: dict = defaultdict(list)
        for key in sorted(set(new) & set(old)):
            per_pair[(key[4], key[3])].append(new[key] / old[key])
        for group, values in per_pair.items():
            out[group].append(values)
    return out


def table(pairs: list, label: str = "new / old") -> str:
    """Markdown: geometric mean of new / old per (op, batch), with the spread."""
    lines = [f"| operation | batch | {label} (geometric mean) | spread over alternations | "
             "cells |", "|---|---|---|---|---|"]
    for (op, batch), runs in sorted(ratios(pairs).items()):
        overall = _geomean([v for run in runs for v in run])
        means = [_geomean(run) for run in runs]
        lines.append(f"| {op} | {batch} | {overall:.3f} | {min(means):.3f} - {max(means):.3f} "
                     f"| {sum(map(len, runs))} |")
    return "\n".join(lines)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="new1.json old1.json new2.json old2.json ...")
    p.add_argument("--label", default="new / old")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        raise SystemExit("files: expected pairs (new, old)")
    print(table(list(zip(args.files[::2], args.files[1::2])), args.label))


if __name__ == "__main__":
    main()
