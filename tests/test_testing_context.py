"""check_bijection(..., context=...): conditional bijections checked at each row's context.

Correct conditional maps pass, with one context per row or one for all; each broken one
fails the check that names its bug: a log-det that ignores the context, a log-det that
depends on the other rows' contexts, an inverse whose dependence on the context is not the
forward's, a Jacobian outside its declared pattern.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B
from refflow.autoregressive import MAF
from refflow.testing import check_bijection

C = 2


def _context(n=10, seed=1):
    return numpy.random.default_rng(seed).standard_normal((n, C))


def _scale(context):
    return anp.tanh(context[..., :1]) + 0.5 * context[..., 1:]  # (N, 1): log-scale of x


def _forward(z, context):
    s = _scale(context)
    return z * anp.exp(s) + context[..., :1], anp.sum(s * anp.ones_like(z), axis=-1)


def _inverse(x, context):
    s = _scale(context)
    return (x - context[..., :1]) * anp.exp(-s), -anp.sum(s * anp.ones_like(x), axis=-1)


def test_a_conditional_element_wise_map_passes_with_its_pattern():
    c = _context()
    report = check_bijection(_forward, _inverse, dim=3, n=10, context=c, structure="diagonal")
    assert report.ok, report.table()
    assert report.meta["C"] == C and report.meta["D"] == 3
    # one context for every row
    assert check_bijection(_forward, _inverse, dim=3, n=10, context=c[0]).ok


def test_a_refflow_conditional_maf_passes():
    maf = MAF.init(B.rng(0), 3, hidden=(8,), context_dim=C)
    report = check_bijection(maf, dim=3, n=10, context=_context(), structure="lower")
    assert report.ok, report.table()


def test_a_log_det_that_ignores_the_context_fails_log_det():
    def forward(z, context):
        x, _ = _forward(z, context)
        return x, anp.sum(_scale(anp.zeros_like(context)) * anp.ones_like(z), axis=-1)

    report = check_bijection(forward, _inverse, dim=3, n=10, context=_context())
    assert "log_det" in report.failed and "inverse_log_det" in report.failed


def test_a_log_det_that_depends_on_the_batch_of_contexts_fails_batch_independence():
    def forward(z, context):
        x, ld = _forward(z, context)
        # a batch statistic of the contexts leaks into every row's log-det
        return x, ld + anp.mean(context[..., 0]) * 0.1

    report = check_bijection(forward, None, dim=2, n=10, context=_context())
    assert "batch_independence" in report.failed, report.table()


def test_an_inverse_with_another_dependence_on_the_context_fails():
    def inverse(x, context):
        z, ld = _inverse(x, context)
        return z + 0.01 * context[..., 1:], ld  # f^{-1}(f(z; c); c) != z, in c only

    report = check_bijection(_forward, inverse, dim=2, n=10, context=_context())
    assert "round_trip" in report.failed
    assert "inverse_function_theorem" in report.failed


def test_x_depending_on_the_context_is_allowed_by_any_pattern_but_z_is_not():
    def forward(z, context):  # x_0 depends on z_1: not diagonal in z
        x, ld = _forward(z, context)
        return anp.concatenate([x[:, :1] + 0.5 * z[:, 1:2], x[:, 1:]], axis=1), ld

    report = check_bijection(forward, None, dim=2, n=10, context=_context(),
                             structure="diagonal")
    assert "structure" in report.failed


def test_context_arguments_are_checked():
    with pytest.raises(ValueError, match="context"):
        check_bijection(_forward, _inverse, dim=2, n=10, context=_context(n=9))
    with pytest.raises(ValueError, match="context"):
        check_bijection(_forward, _inverse, dim=2, n=10,
                        context=numpy.full((10, C), numpy.nan))
    with pytest.raises(ValueError, match="density"):
        check_bijection(_forward, _inverse, dim=2, n=10, context=_context(), density="normal")
