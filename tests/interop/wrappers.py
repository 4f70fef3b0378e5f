"""Adapters from peer-library conventions to check_bijection's (forward, inverse) pair.

zuko transforms map x -> y with ``t.call_and_ladj(x) -> (y, log|det dy/dx|)`` and
``t.inv(y)``; nflows transforms return ``(outputs, logabsdet)`` from both ``t(x)`` and
``t.inverse(y)``. Either way, the transform itself is the bijection f checked here.
"""

from __future__ import annotations


def zuko_pair(t):
    """(forward, inverse) of a zuko transform t."""
    def forward(z):
        return t.call_and_ladj(z)

    def inverse(x):
        z = t.inv(x)
        return z, -t.log_abs_det_jacobian(z, x)

    return forward, inverse


def nflows_pair(t):
    """(forward, inverse) of an nflows transform t (its forward is the density direction)."""
    return (lambda z: t(z)), (lambda x: t.inverse(x))


def flip_sign(pair):
    forward, inverse = pair
    return (lambda z: _neg(forward(z))), (lambda x: _neg(inverse(x)))


def _neg(result):
    out, ld = result
    return out, -ld


def scale_log_det(pair, factor):
    """Multiply both log-dets by ``factor``: a dropped (or doubled) factor."""
    forward, inverse = pair

    def f(z):
        x, ld = forward(z)
        return x, factor * ld

    def g(x):
        z, ld = inverse(x)
        return z, factor * ld

    return f, g


def perturb_inverse(pair, delta=1e-3):
    forward, inverse = pair

    def g(x):
        z, ld = inverse(x)
        return z + delta, ld

    return forward, g


def sweep_inputs(dim, n=16, seed=0):
    """The sweep's inputs (float64 torch): normal rows, every fourth uniform on [-4, 4]^D."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    z[::4] = 4.0 * (2 * torch.rand(n // 4, dim, generator=g, dtype=torch.float64) - 1)
    return z
