"""Test configuration: the backend switch (``--backend cupy``) and hypothesis profiles."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from refflow import backend

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
        choices=("numpy", "cupy"),
        help="array backend for the whole suite (default: REFFLOW_BACKEND or numpy)",
    )
    parser.addoption("--slow", action="store_true", help="also run the long statistical tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long statistical tests (run with --slow)")
    name = config.getoption("--backend")
    if name:
        backend.set_backend(name)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    import pytest

    skip = pytest.mark.skip(reason="long test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
