r"""A conditional bijection as an ordinary one: the context carried along as extra coordinates.

``check_bijection(..., context=c)`` checks x = f(z; c) at each row's fixed context by
checking the augmented map

    F(z, c) = (f(z; c), c),        F^{-1}(x, c) = (f^{-1}(x; c), c),

on rows (z_i, c_i). Its Jacobian is block upper triangular,

.. math::

    J_F = \begin{pmatrix} \partial f / \partial z & \partial f / \partial c \\
                          0 & I \end{pmatrix},
    \qquad \log|\det J_F| = \log|\det \partial f / \partial z|,

so F's log-det is f's at the fixed context and every check of ``check_bijection`` applies
unchanged: the log-det against the finite-difference Jacobian in z (the c columns do not
change the determinant); the inverse function theorem J_{F^{-1}} J_F = I, whose
off-diagonal block checks the derivatives in the context, d f^{-1}/dc = -(d f^{-1}/dx)
(d f/dc), by finite differences in c; ``batch_independence`` and ``isolation`` evaluate a
row with its own context alone and among other contexts, so a log-det that depends on how
the contexts are batched fails them.

Notes
-----
Lecture: "Flow-based Models", change of variables; a conditional flow is a bijection in z
for every fixed context c, and p(x | c) = p_z(f^{-1}(x; c)) |det J_{f^{-1}}(x; c)|.

References
----------
1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
   JMLR 22(57), 2021, section 5.3 (conditional flows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy

from refflow.testing.differences import ArrayAdapter, host_real

__all__ = ["with_context"]


def _concatenate(kind: str) -> Callable:
    """The user's framework's concatenation along the last axis (differentiable in it)."""
    if kind == "torch":
        import torch

        return lambda parts: torch.cat(parts, dim=-1)
    if kind == "jax":
        import jax.numpy as jnp

        return lambda parts: jnp.concatenate(parts, axis=-1)
    import autograd.numpy as anp

    return lambda parts: anp.concatenate(parts, axis=-1)


def with_context(forward: Callable, inverse: Callable | None, log_det: Callable | None,
                 inputs: Any, context: Any, mask: numpy.ndarray | None) -> tuple:
    """The augmented map F(z, c) = (f(z; c), c) for ``check_bijection``.

    Parameters
    ----------
    forward : (z, context) -> (x, log_det) (or x alone with ``log_det``).
    inverse : (x, context) -> (z, log_det) (or z alone), or None.
    log_det : (z, x, context) -> log|det df/dz|, or None.
    inputs : (N, *event) array of the user's kind.
    context : (N, C) or (C,) array of real, finite numbers (a (C,) context is used for
        every row), checked by ``host_real``; it reaches the callables as the inputs' kind.
    mask : the (D, D) Jacobian pattern in z, or None.

    Returns
    -------
    forward, inverse, log_det, inputs, mask : the augmented callables on flat rows (z, c)
    of D + C numbers, the augmented inputs (N, D + C) of the user's kind, and the mask
    extended with the context columns (free) and rows (the identity).
    """
    adapter = ArrayAdapter(inputs)
    z = adapter.to_host(inputs)
    if z.ndim < 2:
        raise ValueError(f"inputs: expected an (N, D) or (N, *event) array, got shape "
                         f"{z.shape}")
    c = host_real("context", context).astype(numpy.float64)
    if c.ndim == 1:
        c = numpy.broadcast_to(c, (z.shape[0], c.shape[0]))
    if c.ndim != 2 or c.shape[0] != z.shape[0] or c.shape[1] < 1:
        raise ValueError(f"context: expected shape (C,) or (N, C) with N = {z.shape[0]} rows "
                         f"of inputs, got {c.shape}")
    event = tuple(z.shape[1:])
    d, cdim = int(numpy.prod(event)), c.shape[1]
    cat = _concatenate(adapter.kind)
    rows = adapter.to_user(numpy.concatenate([z.reshape(len(z), d), c], axis=1))

    def split(v):
        m = v.shape[0]
        return v[:, :d].reshape((m,) + event), v[:, d:]

    def augmented(fn):
        def call(v):
            u, cc = split(v)
            result = fn(u, cc)
            if log_det is not None:  # the callables return the output alone
                return cat([result.reshape((result.shape[0], d)), cc])
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                return result  # check_bijection names the wrong return type
            out, ld = result
            return cat([out.reshape((out.shape[0], d)), cc]), ld
        return call

    aug_log_det = None
    if log_det is not None:
        def aug_log_det(v, w):
            u, cc = split(v)
            return log_det(u, split(w)[0], cc)

    if mask is not None:
        full = numpy.zeros((d + cdim, d + cdim), dtype=bool)
        full[:d, :d] = mask
        full[:d, d:] = True  # x may depend on the context in any way
        full[d:, d:] = numpy.eye(cdim, dtype=bool)
        mask = full
    return (augmented(forward), None if inverse is None else augmented(inverse), aug_log_det,
            rows, mask)
