"""The documentation builds with warnings as errors, its snippets run, and the API is complete.

Sphinx, numpydoc and myst-parser come with the ``docs`` extra (``pip install -e ".[docs]"``);
without them these tests are skipped, saying which package is missing. The HTML build and the
doctest build share one doctree directory, so the sources are read once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

for _package in ("sphinx", "numpydoc", "myst_parser"):
    pytest.importorskip(_package, reason=f"{_package} is needed to build the docs: "
                        "pip install -e '.[docs]'")

import refflow  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    # -W: a warning (a missing reference, a malformed docstring, a missing file) fails;
    # --keep-going: but only after reporting all of them.
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
           "-d", str(doctrees), str(DOCS), str(out)]
    env = {**os.environ, "REFFLOW_BACKEND": "numpy"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("docs")
    html = _sphinx("html", base / "html", base / "doctrees")
    return base, html


def test_html_builds_without_warnings(built):
    _, result = built
    assert result.returncode == 0, f"sphinx -W -b html failed:\n{result.stderr}{result.stdout}"


def test_every_snippet_runs(built):
    base, html = built
    if html.returncode != 0:
        pytest.skip("the HTML build failed (reported by test_html_builds_without_warnings)")
    result = _sphinx("doctest", base / "doctest", base / "doctrees")
    report = (base / "doctest" / "output.txt").read_text() if result.returncode == 0 else ""
    assert result.returncode == 0, f"a snippet failed:\n{result.stdout}{result.stderr}"
    assert "0 failures in tests" in report and " tests\n" in report, report


def test_every_public_name_is_documented(built):
    from sphinx.util.inventory import InventoryFile

    base, html = built
    if html.returncode != 0:
        pytest.skip("the HTML build failed (reported by test_html_builds_without_warnings)")
    with open(base / "html" / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", os.path.join)
    documented = {name.rsplit(".", 1)[-1] for kind in inventory.values() for name in kind}
    documented |= {name for kind in inventory.values() for name in kind}
    missing = [name for name in refflow.__all__
               if name != "__version__" and name not in documented
               and f"refflow.{name}" not in documented]
    assert not missing, f"public names without an API entry: {missing}"
