r"""Verify any bijection, ours or another library's: inverse, log-determinant, Jacobian.

``check_bijection(forward, inverse, inputs=...)`` evaluates the two callables and
compares what they return with independent numerical computations (Ridders' finite-difference
Jacobians, on host float64 NumPy, and the inputs' framework's autodiff Jacobian where it
agrees with them). It returns a ``Report`` with one row per check (ok, FAIL, skip or
inconclusive); the check names are a fixed vocabulary, ``CHECKS``:

============================ ==========================================================
``exceptions``               forward and inverse return on the batch (else: text, row)
``shapes``                   output shape == input shape, log_det (N,) or broadcasting
``finite``                   outputs and log-dets are finite
``round_trip``               inverse(forward(z)) == z and forward(inverse(x)) == x
``log_det``                  forward log_det == log|det| of the reference J_f
``inverse_log_det``          inverse log_det at x = f(z) == -forward log_det at z
``inverse_function_theorem`` J_{f^-1}(f(z)) J_f(z) == I
``orientation``              det J_f has one sign over the rows (the map does not fold)
``batch_independence``       a row gives the same output alone as inside the batch
``isolation``                tail and edge rows alone, together and in chunks agree
``stateless``                reordered inputs, after other calls, give the same outputs
``call_order``               calls on batches A, B, A (and the log-det) in any order agree
``structure``                J_f is zero outside a declared pattern (optional)
``normalization``            p(x) integrates to 1 by quadrature, D <= 2 (optional)
``gradients``                autograd gradients == finite differences (check_gradients)
============================ ==========================================================

Conventions, and how to wrap a library that differs
---------------------------------------------------
``forward(z) -> (x, log|det dx/dz|)`` and ``inverse(x) -> (z, log|det dz/dx|)``, one
log-det per row, shape (N,). Wrap other conventions in two lambdas:

- separate log-det function (zuko, pyro: ``t(z)``, ``t.inv(x)``,
  ``t.log_abs_det_jacobian(z, x)``): pass it as ``log_det=``, with callables returning the
  output alone, and ``call_order`` calls it in several orders::

      check_bijection(t, t.inv, log_det=t.log_abs_det_jacobian, inputs=z)

- a library whose forward is the density direction x -> z (nflows:
  ``transform(x) -> (z, log|det dz/dx|)``, ``transform.inverse(z)``)::

      fwd = lambda z: transform.inverse(z)
      inv = lambda x: transform(x)

- a library that returns only the inverse-direction log-det: negate it at the image point,
  ``fwd = lambda z: (f(z), -ld_inv(f(z)))``;
- a scalar or per-coordinate log-det ((N, D) or (D,)) is accepted as it is and reported
  in ``report.meta``; an (N, 1) one needs ``ld.reshape(-1)``;
- image maps (N, H, W, C) may be passed as they are (the Jacobian is taken over the
  flattened event); a log-det computed per pixel must be summed over H, W.

Torch modules: pass ``inputs`` as a float64 tensor and call ``module.double()`` first.

Notes
-----
Lecture: "Flow-based Models": the change of variables and the inverse function theorem.

.. math::

    \log|\det J_{f^{-1}}(f(z))| = -\log|\det J_f(z)|, \qquad J_{f^{-1}}(f(z)) J_f(z) = I

Cost: O(D) batched calls of each direction and O(N D^3) host work per check.

References
----------
1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
   JMLR 22(57), 2021.

Examples
--------
>>> import numpy
>>> from refflow.affine import Affine
>>> f = Affine(numpy.array([[2.0, 1.0], [0.0, 3.0]]), numpy.array([1.0, -1.0]))
>>> report = check_bijection(f, dim=2)
>>> report.ok, report.failed
(True, [])
"""

from __future__ import annotations

from refflow.testing.bijection import assert_bijection, check_bijection
from refflow.testing.gradients import check_gradients
from refflow.testing.report import CHECKS, CheckResult, Report
from refflow.testing.verify import verify_main

__all__ = ["check_bijection", "assert_bijection", "check_gradients", "Report", "CheckResult",
           "CHECKS", "verify_main"]
