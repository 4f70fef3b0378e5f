"""The backend: array creation, rng, clear errors, the model-code lint; CuPy-like arrays
(the strict stand-in, ``--standin``) differentiated like NumPy ones."""

from __future__ import annotations

import ast
import pathlib

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B

ROOT = pathlib.Path(__file__).resolve().parents[1] / "refflow"


def test_autograd_is_pinned():
    from importlib.metadata import version

    assert version("autograd") == "1.9.1", "refflow.autograd_ext rebinds autograd 1.9.1 internals"


@pytest.mark.standin
def test_strict_array_refuses_conversion_and_mixing():
    from tests.strict import StrictArray

    a = StrictArray(numpy.ones(3))
    with pytest.raises(TypeError):
        numpy.asarray(a)
    with pytest.raises(TypeError):
        a + numpy.ones(3)
    assert isinstance(a + numpy.float64(1.0), StrictArray)


def _loss(x):
    parts = [
        anp.sum(anp.concatenate([x[1:], anp.where(x > 0, x, 0.0) * 2.0]) ** 2),
        anp.dot(x, x),
        anp.sum(anp.stack([x, 2.0 * x])),
        anp.sum(x[:2] * x[1:]),
        anp.mean(anp.tanh(x)),
        anp.sum(anp.exp(x) / 3.0, axis=0),
        anp.trace(x[:, None] * x[None, :]),
        anp.sum(x[..., None] @ x[None, :]),
        anp.prod(anp.array([x[0], x[1]])),
    ]
    return sum(parts)


def _fd(f, x, h=1e-6):
    return numpy.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in numpy.eye(len(x))])


@pytest.mark.standin
def test_gradients_on_device_like_arrays_match_finite_differences():
    from tests.strict import StrictArray

    x = numpy.array([0.3, -1.2, 2.0])
    g_dev = autograd.grad(_loss)(StrictArray(x))
    assert isinstance(g_dev, StrictArray)
    numpy.testing.assert_allclose(g_dev.get(), _fd(_loss, x), rtol=1e-6, atol=1e-6)


def test_gradients_match_finite_differences():
    x = numpy.array([0.3, -1.2, 2.0])
    g = autograd.grad(_loss)(x)
    numpy.testing.assert_allclose(g, _fd(_loss, x), rtol=1e-6, atol=1e-6)


def test_float32_gradient_stays_float32():
    x = numpy.array([0.3, -1.2, 2.0], dtype=numpy.float32)
    g = autograd.grad(lambda v: anp.sum(anp.tanh(v) ** 2) / v.shape[0])(x)
    assert g.dtype == numpy.float32


@pytest.mark.standin
def test_trace_with_offset_and_check_grads_on_device_like_arrays():
    from autograd.test_util import check_grads

    from tests.strict import StrictArray

    x = numpy.arange(9.0).reshape(3, 3) / 7.0
    g = autograd.grad(lambda a: anp.trace(a, offset=1) * 2.0)(StrictArray(x))
    numpy.testing.assert_array_equal(g.get(), 2.0 * numpy.eye(3, k=1))
    check_grads(lambda a: anp.sum(anp.tanh(a) ** 2), modes=["rev"], order=1)(StrictArray(x))


def test_gradient_through_a_list_of_parameters():
    """Gradients through a list (no memo of its vector space: one changed in place is right)."""

    def loss(params):
        a, b, c = params[0], params[1], params[2]
        return anp.sum(a * 2.0) + anp.sum(b**2) + anp.sum(anp.tanh(c))

    params = [numpy.ones(2), numpy.arange(3.0), numpy.zeros((2, 2))]
    g = autograd.grad(loss)(params)
    numpy.testing.assert_array_equal(g[0], [2.0, 2.0])
    numpy.testing.assert_array_equal(g[1], [0.0, 2.0, 4.0])
    numpy.testing.assert_array_equal(g[2], numpy.ones((2, 2)))
    params[1] = numpy.arange(5.0)  # same list object, new shape in slot 1
    g = autograd.grad(loss)(params)
    numpy.testing.assert_array_equal(g[1], 2.0 * numpy.arange(5.0))


@pytest.mark.standin
def test_eye_like_follows_the_array_type():
    from tests.strict import StrictArray

    e = B.eye_like(StrictArray(numpy.zeros((2, 2), dtype=numpy.float32)), 3)
    assert isinstance(e, StrictArray)
    assert e.dtype == numpy.float32
    numpy.testing.assert_array_equal(e.get(), numpy.eye(3))


def test_rng_is_seeded_and_backend_typed():
    a = B.rng(3).standard_normal((4, 2))
    b = B.rng(3).standard_normal((4, 2))
    assert type(a) is type(B.asarray(0.0))
    numpy.testing.assert_array_equal(B.to_numpy(a), B.to_numpy(b))
    assert B.rng(3).uniform(2.0, 3.0, (100,)).min() >= 2.0


def test_unknown_backend_and_missing_cupy_are_clear():
    with pytest.raises(ValueError, match="name"):
        B.set_backend("torch")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(B.BackendUnavailableError, match="CuPy is not installed"):
            B.set_backend("cupy")
        assert B.get_backend() == "numpy"


@pytest.mark.standin
def test_leak_is_caught():
    from tests.strict import StrictArray, StrictLeak

    with pytest.raises(StrictLeak):
        StrictArray(numpy.ones(2)) * numpy.ones(2)


# ------------------------------------------------------------------ the model-code lint

FORBIDDEN_CALLS = {"zeros", "ones", "eye", "array", "arange", "empty", "full", "identity",
                   "linspace", "einsum", "diag"}
# the modules allowed to import numpy: array creation, the autograd extension, row blocks,
# the Dask driver (seed sequences, host statistics, row numbers; no model code), the worker
# processes (shared-memory views, row numbers, NumPy's error state; NumPy backend only)
HOST_MODULES = {"backend.py", "autograd_ext.py", "parallel.py", "dask.py", "workers.py"}


def _violations(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
            node.module.startswith("autograd.scipy")
            or node.module.startswith("autograd.misc.optimizers")
        ):
            out.append((node.lineno, f"from {node.module} import"))
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(("autograd.scipy", "autograd.misc.optimizers", "cupy")):
                    out.append((node.lineno, f"import {alias.name}"))
                if alias.name == "numpy" and path.name not in HOST_MODULES:
                    out.append((node.lineno, "import numpy (use autograd.numpy / backend)"))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "random" and isinstance(node.value.value, ast.Name) \
                    and node.value.value.id == "np":
                out.append((node.lineno, f"np.random.{node.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if isinstance(f.value, ast.Name) and f.value.id == "np" and f.attr in FORBIDDEN_CALLS:
                line = path.read_text().splitlines()[node.lineno - 1]
                if "# host-ok" not in line:
                    out.append((node.lineno, f"np.{f.attr}(...) creates a host array"))
    return out


def test_model_code_lint():
    """No np.random, bare constructors, autograd.scipy or autograd's optimisers in refflow/."""
    problems = []
    for path in sorted(ROOT.glob("*.py")):
        if path.name in HOST_MODULES:
            continue
        problems += [f"{path.name}:{line}: {msg}" for line, msg in _violations(path)]
    assert not problems, "\n".join(problems)


def test_lint_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import autograd.numpy as np\nx = np.zeros(3)\ny = np.random.normal()\n")
    assert len(_violations(bad)) == 2
