"""``python -m benchmarks``: refflow against zuko and nflows (see benchmarks/run.py)."""

from benchmarks.run import main

main()
