"""print(flow): the tree of bijections with configuration, shapes and counts, no arrays."""

from __future__ import annotations

import re

import numpy

import refflow
from refflow import backend as B
from refflow.tree import count_parameters, partition


def _flow():
    rng = B.rng(0)
    return refflow.Flow(refflow.StandardNormal(4), refflow.Compose(
        refflow.MAF.init(rng, 4, hidden=(8,)), refflow.Reverse(),
        refflow.MAF.init(rng, 4, hidden=(8,))))


def test_print_shows_the_tree_not_the_numbers():
    flow = _flow()
    text = repr(flow)
    # the case: a 2-layer MAF of width 8 printed 7 KB of numbers
    assert len(text) < 1500, text
    lines = text.splitlines()
    assert lines[0].startswith("Flow") and f"({count_parameters(flow):,} parameters)" in lines[0]
    assert [line.split(":")[0].strip() for line in lines if "MAF" in line] == [
        "bijections[0]", "bijections[2]"]
    # every parameter array appears by dtype and shape, and none of its values does
    leaves, _ = partition(flow)
    shapes = re.findall(r"float64\[([\d, ]*)\]", text)
    assert len(shapes) >= len(leaves)
    some_value = float(numpy.ravel(B.to_numpy(flow.bijection[0].made.net.weights[0]))[0])
    assert f"{some_value:.4f}" not in text and "array(" not in text


def test_each_subtree_counts_its_own_parameters():
    flow = _flow()
    for line in repr(flow).splitlines():
        if "MAF" in line:
            count = int(re.search(r"\(([\d,]+) parameters\)", line).group(1).replace(",", ""))
            assert count == count_parameters(flow.bijection[0])
    assert str(flow) == repr(flow)
