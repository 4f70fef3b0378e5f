"""refflow's own primitives (refflow.ops) against closed forms and finite differences."""

from __future__ import annotations

import numpy
import pytest
from autograd import grad

from refflow.ops import maximum, minimum, where


def _fd_grad(f, x, h=1e-6):
    out = numpy.zeros_like(x)
    for idx in numpy.ndindex(*x.shape):
        e = numpy.zeros_like(x)
        e[idx] = h
        out[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("shape", [(4, 1), (1, 3), (3,), (1, 1)])
def test_where_gradient_has_each_operands_shape(shape):
    # an operand broadcast on the leading or a non-leading axis against a (4, 3) result
    rng = numpy.random.default_rng(0)
    c = rng.random((4, 3)) > 0.4
    u = rng.normal(size=shape)
    v = rng.normal(size=(4, 3))
    weights = rng.normal(size=(4, 3))

    def loss(u, v):
        return numpy.sum(weights * where(c, u * u, v))

    gu = grad(loss, 0)(u, v)
    gv = grad(loss, 1)(u, v)
    assert gu.shape == u.shape and gv.shape == v.shape
    # closed form: d/du_k sum_ij w_ij [c_ij] u_b(ij)^2 = 2 u_k sum of w [c] over the cells
    # that u_k is broadcast to
    cells = weights * c
    per_cell = numpy.sum(cells, axis=tuple(i for i, n in enumerate(
        (1,) * (2 - len(shape)) + shape) if n == 1), keepdims=True)
    numpy.testing.assert_allclose(gu, 2 * u * per_cell.reshape(shape), rtol=1e-12)
    numpy.testing.assert_allclose(gv, weights * ~c, rtol=1e-12)
    numpy.testing.assert_allclose(gu, _fd_grad(lambda a: loss(a, v), u), rtol=1e-6)


@pytest.mark.parametrize("op", [maximum, minimum])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_extrema_gradient_keeps_dtype_and_matches_finite_differences(op, dtype):
    x = numpy.array([-1.5, -0.2, 0.3, 2.0], dtype=dtype)
    y = numpy.array([[0.1], [-3.0]], dtype=dtype)     # broadcast against x: (2, 4)

    def loss(x, y):
        return numpy.sum(numpy.arange(1.0, 9.0).reshape(2, 4).astype(dtype) * op(x, y) ** 2)

    gx, gy = grad(loss, 0)(x, y), grad(loss, 1)(x, y)
    assert gx.dtype == dtype and gy.dtype == dtype
    assert gx.shape == x.shape and gy.shape == y.shape
    x64, y64 = x.astype(numpy.float64), y.astype(numpy.float64)
    rtol = 1e-6 if dtype == numpy.float64 else 1e-4
    numpy.testing.assert_allclose(gx, _fd_grad(lambda a: loss(a, y64), x64), rtol=rtol)
    numpy.testing.assert_allclose(gy, _fd_grad(lambda b: loss(x64, b), y64), rtol=rtol)


def test_extrema_split_a_tie_evenly():
    # at x == y the one-sided derivatives are 1 and 0: the gradient is their mean, as autograd's
    x = numpy.array([1.0, 2.0])
    assert grad(lambda x: numpy.sum(maximum(x, 1.0)))(x).tolist() == [0.5, 1.0]
    assert grad(lambda x: numpy.sum(minimum(x, 2.0)))(x).tolist() == [1.0, 0.5]


@pytest.mark.standin
def test_ops_on_the_strict_stand_in():
    from tests.strict import StrictArray, strict

    rng = numpy.random.default_rng(1)
    u, v = rng.normal(size=(4, 1)), rng.normal(size=(4, 3))

    def loss(u, v):
        return (where(v > 0, u, v) * maximum(v, u) * minimum(u, 0.5)).sum()

    gu = grad(loss)(strict(u), strict(v))
    assert isinstance(gu, StrictArray)
    numpy.testing.assert_allclose(gu.data,
                                  grad(loss)(u, v), rtol=1e-12)
