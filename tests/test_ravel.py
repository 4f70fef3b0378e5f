"""refflow.ops.take (a slice whose gradient is added in place) and refflow.tree.ravel_leaves
(the one vector training differentiates), against autograd's own indexing and lists."""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow.ops import take
from refflow.tree import ravel_leaves

INDICES = [
    (Ellipsis, slice(None, 3)),
    (Ellipsis, slice(3, None)),
    (slice(1, 4), slice(None, None, 2)),
    (2, slice(None, None, -1)),
    (None, slice(0, 2), 1),
    slice(-2, None),
    3,
]


def _loss(get, x, index):
    # two overlapping takes and a nonlinearity, so several gradients meet in one array
    a = get(x, index)
    b = get(x, (slice(1, 3),))
    return anp.sum(anp.tanh(a) * 1.5) + anp.sum(b ** 2)


@pytest.mark.parametrize("index", INDICES, ids=str)
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_take_gradient_equals_autograds_indexing_gradient(index, dtype):
    x = numpy.sin(numpy.arange(30.0) + 0.3).reshape(5, 6).astype(dtype)
    ours = autograd.grad(lambda x: _loss(take, x, index))(x)
    stock = autograd.grad(lambda x: _loss(lambda a, i: a[i], x, index))(x)
    assert ours.dtype == dtype and ours.shape == x.shape
    numpy.testing.assert_array_equal(ours, stock)
    numpy.testing.assert_array_equal(take(x, index), x[index])


def test_take_gradient_matches_finite_differences_and_second_order():
    x = numpy.sin(numpy.arange(12.0)).reshape(3, 4)

    def f(x):
        return anp.sum(take(x, (Ellipsis, slice(1, 3))) ** 3) + anp.sum(take(x, 0) * x[0])

    g = autograd.grad(f)(x)
    h = 1e-6
    fd = numpy.zeros_like(x)
    for idx in numpy.ndindex(*x.shape):
        e = numpy.zeros_like(x)
        e[idx] = h
        fd[idx] = (f(x + e) - f(x - e)) / (2 * h)
    numpy.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)
    # the gradient of the gradient, against the same built on autograd's indexing
    hess_ours = autograd.grad(lambda x: anp.sum(autograd.grad(f)(x) ** 2))(x)
    stock = lambda x: anp.sum(x[..., 1:3] ** 3) + anp.sum(x[0] * x[0])  # noqa: E731
    hess_stock = autograd.grad(lambda x: anp.sum(autograd.grad(stock)(x) ** 2))(x)
    numpy.testing.assert_allclose(hess_ours, hess_stock, rtol=1e-13)


@pytest.mark.parametrize("index", [[0, 2], numpy.array([1]), (Ellipsis, [0, 1]), 1.5])
def test_take_rejects_advanced_indices(index):
    with pytest.raises(ValueError, match="index"):
        take(numpy.ones((3, 4)), index)


def test_ravel_leaves_round_trip_and_layout():
    leaves = [numpy.arange(6.0).reshape(2, 3), numpy.array([7.0]), numpy.ones((1, 1, 2))]
    v, unravel = ravel_leaves(leaves)
    numpy.testing.assert_array_equal(v, [0, 1, 2, 3, 4, 5, 7, 1, 1])
    back = unravel(v)
    assert [b.shape for b in back] == [(2, 3), (1,), (1, 1, 2)]
    for b, leaf in zip(back, leaves):
        numpy.testing.assert_array_equal(b, leaf)


def test_gradient_through_the_vector_equals_the_gradient_through_the_list():
    rng = numpy.random.default_rng(0)
    leaves = [rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((2, 2))]

    def loss(ps):
        w, b, c = ps
        return anp.sum(anp.tanh(w @ b) ** 2) + anp.sum(c * b[:2, None]) + anp.sum(w) ** 2

    by_list = autograd.grad(loss)(leaves)
    v, unravel = ravel_leaves(leaves)
    by_vector = autograd.grad(lambda v: loss(unravel(v)))(v)
    numpy.testing.assert_allclose(by_vector, numpy.concatenate([g.ravel() for g in by_list]),
                                  rtol=1e-14)


def test_ravel_leaves_keeps_each_leaf_dtype_and_accepts_no_leaves():
    leaves = [numpy.ones(2, dtype=numpy.float32), numpy.arange(3.0)]
    v, unravel = ravel_leaves(leaves)
    assert v.dtype == numpy.float64
    assert [a.dtype for a in unravel(v)] == [numpy.float32, numpy.float64]
    g = autograd.grad(lambda v: anp.sum(unravel(v)[0] ** 2) + anp.sum(unravel(v)[1]))(v)
    numpy.testing.assert_array_equal(g, [2.0, 2.0, 1.0, 1.0, 1.0])
    v, unravel = ravel_leaves([])
    assert v.shape == (0,) and unravel(v) == []


@pytest.mark.standin
def test_take_and_ravel_leaves_on_the_strict_stand_in():
    from tests.strict import StrictArray

    x = numpy.sin(numpy.arange(12.0)).reshape(3, 4)
    g = autograd.grad(lambda a: anp.sum(take(a, (Ellipsis, slice(1, 3))) ** 2))(StrictArray(x))
    assert isinstance(g, StrictArray)
    expected = numpy.zeros_like(x)
    expected[:, 1:3] = 2 * x[:, 1:3]
    numpy.testing.assert_array_equal(g.get(), expected)
    v, unravel = ravel_leaves([StrictArray(x), StrictArray(x[0])])
    assert isinstance(v, StrictArray)
    gv = autograd.grad(lambda v: anp.sum(unravel(v)[0] * 2.0) + anp.sum(unravel(v)[1]))(v)
    numpy.testing.assert_array_equal(gv.get(), [2.0] * 12 + [1.0] * 4)


def test_second_order_through_the_vector_equals_through_the_list():
    """The gradient of a function of the gradient (segment's VJP is differentiable too)."""
    rng = numpy.random.default_rng(1)
    leaves = [rng.standard_normal((2, 3)), rng.standard_normal(3)]

    def loss(ps):
        return anp.sum(anp.sin(ps[0] @ ps[1]) ** 2) + anp.sum(ps[1] ** 3)

    def grad_norm_list(ps):
        return sum(anp.sum(g ** 2) for g in autograd.grad(loss)(ps))

    v, unravel = ravel_leaves(leaves)
    by_vector = autograd.grad(lambda v: anp.sum(autograd.grad(lambda u: loss(unravel(u)))(v)
                                               ** 2))(v)
    by_list = autograd.grad(grad_norm_list)(leaves)
    numpy.testing.assert_allclose(by_vector, numpy.concatenate([g.ravel() for g in by_list]),
                                  rtol=1e-12)
