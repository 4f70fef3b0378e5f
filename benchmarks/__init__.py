"""Benchmarks: refflow against zuko and nflows (run.py), the lecture's scaling laws."""
