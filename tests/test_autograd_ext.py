"""refflow.autograd_ext: absent on NumPy (autograd as installed), and when installed for a
non-NumPy array type, the same gradients as stock autograd gives on NumPy values."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import autograd_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> str:
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "REFFLOW_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return run.stdout


# ------------------------------------------------------------------ NumPy: autograd untouched

_SNAPSHOT = """
import json, sys
import autograd, autograd.core, autograd.extend, autograd.tracer, autograd.builtins
import autograd.numpy, autograd.numpy.numpy_vjps, autograd.numpy.numpy_wrapper
import autograd.numpy.numpy_boxes, autograd.numpy.numpy_vspaces, autograd.numpy.numpy_jvps
import autograd.numpy.linalg, autograd.differential_operators, autograd.misc.flatten

MODULES = ["autograd", "autograd.core", "autograd.extend", "autograd.tracer",
           "autograd.builtins", "autograd.numpy", "autograd.numpy.numpy_vjps",
           "autograd.numpy.numpy_wrapper", "autograd.numpy.numpy_boxes",
           "autograd.numpy.numpy_vspaces", "autograd.numpy.numpy_jvps",
           "autograd.numpy.linalg", "autograd.differential_operators", "autograd.misc.flatten"]


def snapshot():
    # references, not ids: the objects stay alive, so `is` below is a true identity test
    names = {m: dict(vars(sys.modules[m])) for m in MODULES}
    tables = {
        "primitive_vjps": dict(autograd.core.primitive_vjps),
        "primitive_jvps": dict(autograd.core.primitive_jvps),
        "vspaces": dict(autograd.extend.VSpace.mappings),
        "boxes": dict(autograd.extend.Box.type_mappings),
        "notrace": {k: set(v) for k, v in autograd.tracer.notrace_primitives.items()},
    }
    return names, tables


def changed(before, after):
    out = []
    for group in ("names", "tables"):
        for table, old in before[group].items():
            new = after[group][table]
            for key, value in old.items():
                if key not in new:
                    out.append(f"{table}: {key!r} removed")
                elif group == "tables" and table == "notrace":
                    if not value <= new[key]:
                        out.append(f"{table}: {key!r} lost entries")
                elif new[key] is not value:
                    out.append(f"{table}: {key!r} replaced")
    return out
"""


def test_import_and_use_of_refflow_leave_autograd_unchanged():
    """Every module-level name of autograd and every entry of its VJP, JVP, vector-space and
    Box tables is the same object before and after `import refflow` and a flow's use on
    NumPy (log_prob, a gradient, a training step, sampling); new entries are allowed."""
    out = _python(_SNAPSHOT + """
names, tables = snapshot()
before = {"names": names, "tables": tables}
import refflow
from refflow import autograd_ext, backend
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow
from refflow.coupling import AffineCoupling
from refflow.distributions import StandardNormal
from refflow.tree import partition
after_import = dict(zip(("names", "tables"), snapshot()))
rng = backend.rng(0)
flow = Flow(StandardNormal(3), Compose(MAF.init(rng, 3, (8,)),
                                        AffineCoupling.init(rng, 3, hidden=(8,))))
x = rng.standard_normal((16, 3))
flow.log_prob(x)
leaves, rebuild = partition(flow)
autograd.grad(lambda p: -autograd.numpy.mean(rebuild(p).log_prob(x)))(leaves)
refflow.fit(flow, x, steps=2, batch_size=8, lr=1e-3, rng=backend.rng(1))
flow.sample_and_log_prob(8, rng)
after_use = dict(zip(("names", "tables"), snapshot()))
print(json.dumps({"import": changed(before, after_import), "use": changed(before, after_use),
                  "installed": autograd_ext.installed(),
                  "types": len(autograd_ext.registered_types())}))
""")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["import"] == [], report["import"]
    assert report["use"] == [], report["use"]
    assert report["installed"] is False and report["types"] == 0


def test_the_snapshot_sees_a_rebinding():
    """The comparison above can fail: installing the extension is reported."""
    out = _python(_SNAPSHOT + """
names, tables = snapshot()
before = {"names": names, "tables": tables}
from refflow import autograd_ext
autograd_ext.install()
print(json.dumps(changed(before, dict(zip(("names", "tables"), snapshot())))))
""")
    report = json.loads(out.strip().splitlines()[-1])
    assert "autograd.numpy.numpy_vjps: 'untake' replaced" in report
    assert any(line.startswith("primitive_vjps:") for line in report)


_WHERE = """
import json, sys
import autograd, autograd.numpy as anp, numpy
if sys.argv[1] == "refflow":
    import refflow
    from refflow.affine import Diagonal
    refflow.Flow(refflow.StandardNormal(1), Diagonal(numpy.ones(1), numpy.zeros(1))).log_prob(
        numpy.zeros((3, 1)))
rng = numpy.random.default_rng(0)
u, v = rng.standard_normal((5, 1)), rng.standard_normal((1, 3))
c, w = rng.random((5, 3)) > 0.5, rng.standard_normal((5, 3))
loss = lambda u, v: anp.sum(w * anp.where(c, u, v))
gu = autograd.grad(loss, 0)(u, v)
gv = autograd.grad(loss, 1)(u, v)
print(json.dumps({"u": [list(gu.shape), gu.tolist()], "v": [list(gv.shape), gv.tolist()]}))
"""


def test_autograds_own_where_gradient_is_stock_after_import():
    """autograd's grad of `where` with broadcast operands: the same shape and numbers with
    refflow imported and used as in a process that never imported refflow (stock 1.9.1 gives
    the result's shape; refflow.ops.where is refflow's own, unbroadcasting primitive)."""
    stock = json.loads(_python(_WHERE, "stock").strip())
    with_refflow = json.loads(_python(_WHERE, "refflow").strip())
    assert with_refflow == stock
    assert stock["u"][0] == [5, 3]  # autograd 1.9.1's own rule, kept as it is


@pytest.mark.parametrize(("shape", "offset"), [((3, 4), 0), ((3, 4), 1), ((4, 3), -1)])
def test_trace_gradient_of_a_non_square_matrix_is_right(shape, offset):
    # d/dA sum_i w A[i, i + offset] = w on diagonal `offset`, 0 elsewhere
    A = numpy.arange(12.0).reshape(shape) / 5.0
    g = autograd.grad(lambda a: 3.0 * anp.trace(a, offset=offset))(A)
    numpy.testing.assert_array_equal(g, 3.0 * numpy.eye(*shape, k=offset))
    assert not autograd_ext.installed()


# ------------------------------------------------------------------ the stand-in: extension on

_CASES = {
    # name: (loss source in a, shape of the input)
    "trace": ("3.0 * anp.trace(a)", (3, 4)),
    "trace_offset": ("anp.sum(anp.trace(a, offset=1) ** 2)", (4, 3)),
    "trace_offset_neg": ("anp.trace(a, offset=-2) * 2.0", (4, 4)),
    "trace_stacked": ("anp.sum(anp.trace(a) * anp.trace(a)[::-1])", (3, 4, 2)),
    "trace_stacked2": ("anp.sum(anp.trace(a, offset=1) ** 2)", (2, 3, 2, 2)),
    "where": ("anp.sum(anp.where(a > 0.3, a ** 2, anp.tanh(a)))", (3, 4)),
    "sum_mean_var": ("anp.sum(a, axis=0)[1] + anp.mean(a ** 2) + anp.var(a, axis=1)[0]",
                     (3, 4)),
    "max_prod": ("anp.max(a, axis=1)[2] + anp.prod(a[0])", (3, 4)),
    "slices": ("anp.sum(a[1:, :2] ** 2) + anp.sum(a[..., 3]) + a[0, 0]", (3, 4)),
    "advanced_index": ("anp.sum(a[[0, 0, 2]] ** 2)", (3, 4)),
    "concatenate": ("anp.sum(anp.concatenate([a, 2.0 * a[:1]]) ** 2)", (3, 4)),
    "array_stack": ("anp.sum(anp.array([a[0], a[1]]) ** 2) + anp.sum(anp.stack([a, a]))",
                    (3, 4)),
    "dot": ("anp.sum(anp.dot(a, a.T) ** 2) + anp.sum(anp.dot(a[0], a.T))", (3, 4)),
}

_STOCK = """
import json, sys
import autograd, autograd.numpy as anp, numpy
cases = json.loads(sys.argv[1])
out = {}
for name, (source, shape) in cases.items():
    a0 = numpy.sin(numpy.arange(float(numpy.prod(shape))) + 0.5).reshape(shape)
    out[name] = autograd.grad(eval("lambda a: " + source))(a0).tolist()
print(json.dumps(out))
"""


@pytest.mark.standin
def test_extension_is_installed_for_the_stand_in():
    from tests.strict import StrictArray

    assert StrictArray in autograd_ext.registered_types()
    assert autograd_ext.installed()
    status = autograd_ext.status()
    assert set(status) == set(autograd_ext.REPLACED) and all(status.values()), status


@pytest.mark.standin
def test_gradients_with_the_extension_equal_stock_autograd_on_numpy():
    """Each case's gradient on the stand-in, and on NumPy with the extension installed,
    equals stock autograd's on NumPy (computed in a process where nothing is installed):
    trace of non-square and stacked matrices with offsets, where, reductions, indexing,
    concatenate, array, dot."""
    from tests.strict import StrictArray

    stock = json.loads(_python(_STOCK, json.dumps(_CASES)).strip())
    for name, (source, shape) in _CASES.items():
        loss = eval("lambda a: " + source, {"anp": anp})
        a0 = numpy.sin(numpy.arange(float(numpy.prod(shape))) + 0.5).reshape(shape)
        on_device = autograd.grad(loss)(StrictArray(a0))
        assert isinstance(on_device, StrictArray), name
        numpy.testing.assert_allclose(on_device.get(), stock[name], rtol=1e-13, atol=1e-15,
                                      err_msg=name)
        numpy.testing.assert_allclose(autograd.grad(loss)(a0), stock[name], rtol=1e-13,
                                      atol=1e-15, err_msg=name)


@pytest.mark.standin
def test_float32_trace_gradient_keeps_its_dtype_on_the_stand_in():
    from tests.strict import StrictArray

    a = StrictArray(numpy.ones((2, 3), dtype=numpy.float32))
    g = autograd.grad(lambda a: anp.trace(a, offset=1) * numpy.float32(2.0))(a)
    assert g.dtype == numpy.float32
    numpy.testing.assert_array_equal(g.get(), 2.0 * numpy.eye(2, 3, k=1))


def test_register_array_type_rejects_non_types():
    with pytest.raises(ValueError, match="cls"):
        autograd_ext.register_array_type("cupy.ndarray")


# ------------------------------------------------------------------ the suite's own guard

_PROBE_CONFTEST = """
from tests.conftest import (pytest_addoption, pytest_collection_modifyitems,  # noqa: F401
                            pytest_configure, pytest_sessionfinish)
"""

_PROBE_TESTS = """
import pytest
from refflow import autograd_ext


class Foreign:
    pass


@pytest.mark.standin
def test_marked():
    assert autograd_ext.installed()


def test_plain():
    if {register}:
        autograd_ext.register_array_type(Foreign)
"""


@pytest.mark.parametrize(("register", "standin", "code", "message"), [
    (False, False, 0, "1 passed, 1 deselected"),
    (True, False, 1, "autograd extension was installed during the NumPy suite"),
    (False, True, 0, "1 passed, 1 deselected"),
])
def test_numpy_run_fails_when_the_extension_gets_installed(tmp_path, register, standin, code,
                                                           message):
    (tmp_path / "conftest.py").write_text(_PROBE_CONFTEST)
    (tmp_path / "test_probe.py").write_text(_PROBE_TESTS.format(register=register))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    run = subprocess.run(args + (["--standin"] if standin else []), capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == code, run.stdout + run.stderr
    assert message in run.stdout, run.stdout


def test_the_first_cupy_array_seen_installs_the_extension():
    """backend.is_array (reached by every input check) registers a CuPy array type the first
    time it meets one; a NumPy array never does. In a subprocess: it changes autograd."""
    out = _python("""
        import numpy
        from refflow import autograd_ext, backend
        from refflow.checks import check_array

        ndarray = type("ndarray", (), {"__module__": "cupy._core.core", "shape": (2,),
                                       "dtype": numpy.dtype("float64"), "ndim": 1})
        check_array("x", numpy.ones(2))
        before = autograd_ext.installed()
        seen = backend.is_array(ndarray())
        print(before, seen, autograd_ext.installed(), ndarray in autograd_ext.registered_types())
    """)
    assert out.split() == ["False", "True", "True", "True"]
