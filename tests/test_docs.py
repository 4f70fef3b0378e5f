"""The documentation builds with warnings as errors, its snippets run, and the API is complete.

Sphinx, numpydoc and myst-parser come with the ``docs`` extra (``pip install -e ".[docs]"``);
without them these tests are skipped, saying which package is missing. The HTML build and the
doctest build share one doctree directory, so the sources are read once.
"""

from __future__ import annotations

import os
import re
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


# ------------------------------------------------------------------ what the pages show

# The lecture pages quote the reference layer: an included object that names the fast layer
# (its switch or kernels) or the batch split over threads shows a reader code that is not the
# definition. The one hook a reference function may carry, ``@replaceable("name")``, is
# allowed: it is a line, not a branch.
_NOT_REFERENCE = re.compile(
    r"refflow\.fast|\bfused\b|is_enabled|\bkernel\(|map_batch|parallel|thread|SPLIT_MIN_ROWS"
)
_INCLUDE = re.compile(r"^\.\. literalinclude:: (\S+)\n((?:[ \t]+:[\w-]+:.*\n)*)", re.M)


def _includes():
    for page in sorted(DOCS.rglob("*.rst")):
        if "_build" in page.parts:
            continue
        for match in _INCLUDE.finditer(page.read_text()):
            options = dict(re.findall(r":([\w-]+):[ \t]*(.*)", match.group(2)))
            yield page, (page.parent / match.group(1)).resolve(), options


def test_pages_include_reference_code_only():
    from sphinx.config import Config
    from sphinx.directives.code import LiteralIncludeReader

    config = Config({}, {})
    config.source_encoding = "utf-8"
    seen = 0
    offenders = []
    for page, path, options in _includes():
        text, _ = LiteralIncludeReader(str(path), options, config).read()
        seen += 1
        for line in text.splitlines():
            if _NOT_REFERENCE.search(line) and not line.strip().startswith("@replaceable("):
                offenders.append(f"{page.relative_to(DOCS)} -> {path.name} "
                                 f"{options.get('pyobject', '')}: {line.strip()}")
    assert seen >= 30, f"only {seen} literalincludes found: is the pattern still right?"
    assert not offenders, "included code that is not the reference:\n" + "\n".join(offenders)


_EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']([^"']+)["']""")


def test_built_pages_load_nothing_from_outside_the_build(built):
    base, html = built
    if html.returncode != 0:
        pytest.skip("the HTML build failed (reported by test_html_builds_without_warnings)")
    root = (base / "html").resolve()
    pages = sorted(root.rglob("*.html"))
    assert len(pages) >= 20
    outside = []
    for page in pages:
        for ref in _EXTERNAL.findall(page.read_text()):
            if ref.startswith("#"):
                continue
            target = (page.parent / ref.split("?")[0].split("#")[0]).resolve()
            if "//" in ref or ref.startswith("data:") or root not in target.parents:
                outside.append(f"{page.relative_to(root)}: {ref}")
            elif not target.exists():
                outside.append(f"{page.relative_to(root)}: {ref} (missing)")
    assert not outside, "pages load from outside the build:\n" + "\n".join(outside)


def test_equations_are_rendered_at_build_time(built):
    base, html = built
    if html.returncode != 0:
        pytest.skip("the HTML build failed (reported by test_html_builds_without_warnings)")
    page = (base / "html" / "lecture" / "01_change_of_variables.html").read_text()
    # MathML that the browser draws itself; no LaTeX left for a script to typeset
    assert page.count("<math") >= 10
    assert "\\(" not in page and "\\[" not in page and "$$" not in page
