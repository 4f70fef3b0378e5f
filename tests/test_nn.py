"""refflow.nn's activation tables: every derivative against central differences of its
activation, the 1-Lipschitz activations' slopes, and the name checks."""

from __future__ import annotations

import numpy
import pytest

from refflow.nn import ACTIVATIONS, DERIVATIVES, activation, derivative


def test_every_activation_has_a_derivative():
    assert set(ACTIVATIONS) == set(DERIVATIVES)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_central_differences(name):
    # relu's kink at 0 is avoided: the grid holds no zero
    x = numpy.linspace(-6.0, 6.0, 1000)
    h = 1e-6
    fd = (ACTIVATIONS[name](x + h) - ACTIVATIONS[name](x - h)) / (2 * h)
    numpy.testing.assert_allclose(DERIVATIVES[name](x), fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", ["tanh", "elu", "lipswish"])
def test_lipschitz_activations_have_slopes_at_most_one(name):
    x = numpy.linspace(-20.0, 20.0, 20001)
    assert numpy.all(numpy.abs(DERIVATIVES[name](x)) <= 1.0)


def test_lipswish_decreases_below_its_minimum():
    # x sigmoid(x) has its minimum where 1 + x (1 - sigmoid(x)) = 0, x ~ -1.278
    assert DERIVATIVES["lipswish"](-1.2) > 0 > DERIVATIVES["lipswish"](-1.35)


def test_unknown_names_raise_naming_the_argument():
    with pytest.raises(ValueError, match="activation"):
        activation("swish")
    with pytest.raises(ValueError, match="activation"):
        derivative("swish")
