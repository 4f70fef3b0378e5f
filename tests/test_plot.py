"""Figures: they draw what they say (grid values, points), save PNGs, and check their input."""

from __future__ import annotations

import numpy
import pytest

pytest.importorskip("matplotlib")

from refflow import backend as B  # noqa: E402
from refflow import plot  # noqa: E402
from refflow.affine import Diagonal  # noqa: E402
from refflow.core import Flow  # noqa: E402
from refflow.distributions import StandardNormal  # noqa: E402


def _flow():
    return Flow(StandardNormal(2), Diagonal(numpy.array([1.0, 0.5]), numpy.array([1.0, 0.0])))


def test_density_image_is_the_normalised_density_on_the_grid(tmp_path):
    path = tmp_path / "d.png"
    fig = plot.density(_flow(), bounds=(-2.0, 4.0, -2.0, 2.0), n=30, path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (30, 30) and float(img.max()) == 1.0
    # the peak sits at the mean (1, 0): column of x = 1, row of y = 0
    row, col = numpy.unravel_index(numpy.argmax(img), img.shape)
    centres_x = -2.0 + 6.0 / 30 * (numpy.arange(30) + 0.5)
    centres_y = -2.0 + 4.0 / 30 * (numpy.arange(30) + 0.5)
    assert abs(centres_x[col] - 1.0) <= 0.1 and abs(centres_y[row]) <= 0.07


def test_grid_is_row_major_in_y():
    g = B.to_numpy(plot.grid((0.0, 2.0, 0.0, 1.0), 2))
    assert g.tolist() == [[0.5, 0.25], [1.5, 0.25], [0.5, 0.75], [1.5, 0.75]]


def test_density_of_a_callable_with_minus_infinity():
    def log_p(z):
        inside = B.xp().all(B.xp().abs(z) < 1.0, axis=-1)
        return B.xp().where(inside, 0.0, -B.xp().inf)

    img = plot.density(log_p, bounds=(-2.0, 2.0, -2.0, 2.0), n=8).axes[0].images[0].get_array()
    assert set(numpy.unique(img).tolist()) == {0.0, 1.0}


def test_samples_latent_curves_and_panels(tmp_path):
    x = B.rng(0).standard_normal((50, 2))
    fig = plot.samples(x, title="pts", path=str(tmp_path / "s.png"))
    offsets = fig.axes[0].collections[0].get_offsets()
    assert numpy.allclose(offsets, B.to_numpy(x))
    fig = plot.latent(_flow(), x)
    z = fig.axes[0].collections[0].get_offsets()
    assert numpy.allclose(z, (B.to_numpy(x) - [1.0, 0.0]) / [1.0, 0.5])
    hist = {"loss": [3.0, 2.0, 1.5], "step": [2, 3], "val_nll": [2.1, 1.6]}
    fig = plot.curves(hist, path=str(tmp_path / "c.png"))
    assert len(fig.axes[0].lines) == 2
    fig, axes = plot.figure(2, 3)
    assert axes.shape == (2, 3)
    plot.density(_flow(), n=10, ax=axes[1, 2])
    assert len(axes[1, 2].images) == 1


def test_bad_input():
    with pytest.raises(ValueError, match="x"):
        plot.samples(numpy.zeros((3, 3)))
    with pytest.raises(ValueError, match="bounds"):
        plot.density(_flow(), bounds=(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="target"):
        plot.density(42)
    with pytest.raises(ValueError, match="history"):
        plot.curves({})
    with pytest.raises(ValueError, match="folder"):
        plot.samples(numpy.zeros((3, 2)), path="/no/such/folder/x.png")
