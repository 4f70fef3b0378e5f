"""Benchmark scripts that write docs pages keep the sections they do not generate."""

from __future__ import annotations

from benchmarks.scaling import kept_sections


def test_scaling_rerun_keeps_the_hand_written_sections():
    old = ("# Scaling laws\n\nintro\n\n## Determinant\n\n| old table |\n\n"
           "## refflow.dask: one machine\n\nmeasured text\n\n## Later notes\n\nmore\n")
    tail = kept_sections(old, ["Determinant", "Inverse of an affine flow"])
    assert tail == "## refflow.dask: one machine\n\nmeasured text\n\n## Later notes\n\nmore\n"
    assert kept_sections(old, ["Determinant", "refflow.dask: one machine",
                               "Later notes"]) == ""
    assert kept_sections("", ["Determinant"]) == ""
