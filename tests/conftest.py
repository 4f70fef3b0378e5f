"""Test configuration: the two suites (NumPy, ``--standin``), the backend switch, hypothesis.

The suite runs in two pytest processes, so that the NumPy tests run on autograd exactly as
installed:

- ``python3 -m pytest`` runs every test not marked ``standin``, and fails at the end if
  anything installed refflow's autograd extension (``refflow.autograd_ext``) meanwhile;
- ``python3 -m pytest --standin`` registers the strict stand-in array of ``tests/strict.py``
  with autograd (which installs the extension, as CuPy does) and runs only the tests marked
  ``standin``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from refflow import autograd_ext, backend

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("REFFLOW_EXAMPLES", "8")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=int(os.environ.get("REFFLOW_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        default=None,
        choices=("numpy", "cupy", "strict"),
        help="array backend for the whole suite (default: REFFLOW_BACKEND or numpy); "
        "'strict' is the stand-in suite, as --standin (scripts/gpu-check.sh --rehearse)",
    )
    parser.addoption("--slow", action="store_true", help="also run the long statistical tests")
    parser.addoption(
        "--standin",
        action="store_true",
        help="run only the tests marked standin, with the strict stand-in array registered",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long statistical tests (run with --slow)")
    config.addinivalue_line(
        "markers", "standin: uses the strict stand-in array (runs under --standin only)"
    )
    name = config.getoption("--backend")
    if name in ("numpy", "cupy"):
        backend.set_backend(name)
    if _standin(config):
        from tests.strict import StrictArray

        autograd_ext.register_array_type(StrictArray)


def _standin(config) -> bool:
    return config.getoption("--standin") or config.getoption("--backend") == "strict"


def pytest_collection_modifyitems(config, items):
    standin = _standin(config)
    keep, drop = [], []
    for item in items:
        (keep if ("standin" in item.keywords) == standin else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    # the NumPy suite must have run on an unchanged autograd: nothing there may register a
    # foreign array type (which installs the extension), except on purpose under --backend cupy
    config = session.config
    if _standin(config) or backend.get_backend() != "numpy":
        return
    if autograd_ext.installed() or autograd_ext.registered_types():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "FAILED: refflow's autograd extension was installed during the NumPy suite "
                f"(types: {sorted(t.__name__ for t in autograd_ext.registered_types())}); "
                "a test that uses tests/strict.py needs @pytest.mark.standin",
                red=True,
            )
