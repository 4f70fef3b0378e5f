r"""Verify any bijection, ours or another library's: inverse, log-determinant, Jacobian.

``check_bijection(forward, inverse, inputs=...)`` evaluates the two callables and
compares what they return with independent numerical computations (finite-difference
Jacobians with Richardson extrapolation, on host float64 NumPy). It returns a ``Report``
with one row per check; the check names are a fixed vocabulary, ``CHECKS``:

============================ ==========================================================
``shapes``                   output shape == input shape, log_det shape == (N,)
``finite``                   outputs and log-dets are finite
``round_trip``               inverse(forward(z)) == z and forward(inverse(x)) == x
``log_det``                  forward log_det == log|det| of the finite-difference J_f
``inverse_log_det``          inverse log_det at x = f(z) == -forward log_det at z
``inverse_function_theorem`` J_{f^-1}(f(z)) J_f(z) == I
``batch_independence``       a row gives the same output alone as inside the batch
``stateless``                reordered inputs, after other calls, give the same outputs
``structure``                J_f is zero outside a declared pattern (optional)
``normalization``            p(x) integrates to 1 by quadrature, D <= 2 (optional)
``gradients``                autograd gradients == finite differences (check_gradients)
============================ ==========================================================

Conventions, and how to wrap a library that differs
---------------------------------------------------
``forward(z) -> (x, log|det dx/dz|)`` and ``inverse(x) -> (z, log|det dz/dx|)``, one
log-det per row, shape (N,). Wrap other conventions in two lambdas:

- separate log-det function (zuko: ``t(z)``, ``t.inv(x)``, ``t.log_abs_det_jacobian(z, x)``)::

      fwd = lambda z: (t(z), t.log_abs_det_jacobian(z, t(z)))
      inv = lambda x: (t.inv(x), -t.log_abs_det_jacobian(t.inv(x), x))

- a library whose forward is the density direction x -> z (nflows:
  ``transform(x) -> (z, log|det dz/dx|)``, ``transform.inverse(z)``)::

      fwd = lambda z: transform.inverse(z)
      inv = lambda x: transform(x)

- a library that returns only the inverse-direction log-det: negate it at the image point,
  ``fwd = lambda z: (f(z), -ld_inv(f(z)))``;
- (N, 1) or summed-per-coordinate log-dets: ``ld.reshape(-1)`` or ``ld.sum(-1)``;
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
