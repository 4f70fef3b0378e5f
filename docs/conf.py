"""Sphinx configuration for the refflow documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors), and run every
snippet with ``sphinx-build -W -b doctest docs docs/_build/doctest``; ``tests/test_docs.py``
runs both. The pages follow the lecture section by section and quote the real source with
``literalinclude`` (``:pyobject:``), so the code shown cannot drift from the code that runs.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.directives.other import Include
from sphinx.directives.patches import Figure
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import refflow  # noqa: E402  (the path above makes the checkout importable without install)

project = "refflow"
author = "the refflow authors"
copyright = "2025, the refflow authors"
release = refflow.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# Result tables written by the examples and benchmarks are shown through ``refflow-result``
# (below) on the pages that discuss them, not as pages of their own.
RESULT_FILES = (
    "results_digits.md",
    "results_vi.md",
    "autoregressive_costs.md",
    "residual_logdet.md",
    "verify.md",
)
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", *RESULT_FILES]

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# autodoc + numpydoc: each module's page lists the names in its __all__, in source order.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
autodoc_class_signature = "separated"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Only the explicit ``.. doctest::`` / ``.. testcode::`` blocks of the pages are run by the
# doctest builder; the docstrings' own examples are run by ``pytest --doctest-modules``.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import numpy
import refflow
from refflow import backend as B
"""

# Equations are turned into MathML while the pages are built (latex2mathml, pure Python), and
# the browser draws MathML itself: the pages load no script and read offline. MathJax from a
# CDN left every equation as raw LaTeX without a network.
html_math_renderer = "mathml"

html_theme = "alabaster"
html_static_path = ["_static"] if (DOCS / "_static").is_dir() else []
html_title = f"refflow {release}"
html_theme_options = {
    "description": "Normalizing flows, read beside the lecture",
    "fixed_sidebar": True,
}

def _mathml(latex: str, block: bool) -> str:
    from latex2mathml.converter import convert

    return convert(latex.strip(), display="block" if block else "inline")


def _visit_math(self, node: nodes.Node) -> None:
    self.body.append(_mathml(node.astext(), block=False))
    raise nodes.SkipNode


def _visit_displaymath(self, node: nodes.Node) -> None:
    # like Sphinx's MathJax renderer: equations separated by blank lines are shown one by one,
    # and a multi-line one (``\\`` breaks, ``&`` alignment) is an aligned block
    parts = [p for p in node.astext().split("\n\n") if p.strip()]
    if node.get("number"):
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    self.body.append('<div class="math notranslate nohighlight">')
    for part in parts:
        if not node.get("nowrap") and ("\\\\" in part or "&" in part):
            part = f"\\begin{{aligned}}{part}\\end{{aligned}}"
        self.body.append(_mathml(part, block=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


class OptionalFigure(Figure):
    """``.. refflow-figure:: ../_static/tour/moons_realnvp.png``: a figure shown when present.

    The tour's figures are written by ``refflow tour --out docs/_static/tour``; a checkout in
    which they have not been generated still builds, without the figure.
    """

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        _, path = env.relfn2path(self.arguments[0], env.docname)
        if not Path(path).is_file():
            return []
        return super().run()


class ResultDirective(SphinxDirective):
    """``.. refflow-result:: results_digits.md``: include a Markdown result file if present.

    The file is produced by an example or benchmark (named in the directive's content). When
    it has not been produced yet the page says so, and how to produce it, instead of failing:
    the documentation must build on a fresh checkout.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        path = DOCS / name
        self.env.note_dependency(str(path))
        if not path.is_file():
            how = " ".join(self.content) or "the example or benchmark that writes it"
            para = nodes.paragraph()
            para += nodes.Text(f"This table ({name}) is not generated yet: run {how}.")
            return [nodes.note("", para)]
        include = Include(
            "include",
            [f"/{name}"],
            {"parser": directives.parser_name("myst_parser.sphinx_")},
            self.content,
            self.lineno,
            self.content_offset,
            self.block_text,
            self.state,
            self.state_machine,
        )
        return include.run()


class ApiDirective(SphinxDirective):
    """``.. refflow-api::``: one section per public module, in the lecture order of
    ``refflow._MODULES``, each documenting the names in that module's ``__all__``.

    Generated from the package itself so that a new public name cannot be left out;
    ``tests/test_docs.py`` checks that every name in ``refflow.__all__`` is in the index.
    """

    def run(self) -> list[nodes.Node]:
        lines = []
        for name in ("backend", *refflow._MODULES):
            try:
                importlib.import_module(f"refflow.{name}")
            except ModuleNotFoundError as exc:  # a module not written yet
                if exc.name != f"refflow.{name}":
                    raise
                continue
            module = sys.modules[f"refflow.{name}"]
            # constants (tables, dicts, ints) get an entry of their own, without their value
            data = [n for n in getattr(module, "__all__", ())
                    if not (callable(getattr(module, n)) or inspect.ismodule(getattr(module, n)))]
            title = f"``refflow.{name}``"
            lines += [title, "-" * len(title), "", f".. automodule:: refflow.{name}"]
            if data:
                lines += [f"   :exclude-members: {', '.join(data)}"]
            lines += [""]
            for n in data:
                lines += [f".. autodata:: refflow.{name}.{n}", "   :no-value:", ""]
        section = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="refflow-api"), section)
        return section.children


# The docstrings write formulas in plain text on purpose (the contract: read in a terminal,
# ``help(Planar)``), e.g. ``log|det A|`` or ``x * exp(s)``. In reST ``|...|`` is a
# substitution and ``*...*`` emphasis, so before numpydoc reads a docstring the two
# characters are escaped in prose lines. Left as they are: inline literals and roles,
# directive bodies (``.. math::`` is real LaTeX there), literal blocks after ``::`` and
# doctest blocks.
_INLINE_KEEP = re.compile(r"(``.+?``|:[\w:+-]+:`[^`]*`|`[^`]*`_{0,2})")


def _escape_prose(line: str) -> str:
    bullet = re.match(r"\s*[*+-] ", line)  # a list item's marker is markup, not a formula
    if bullet:
        return line[: bullet.end()] + _escape_prose(line[bullet.end() :])
    parts = _INLINE_KEEP.split(line)
    for i in range(0, len(parts), 2):  # even positions are outside the kept spans
        parts[i] = re.sub(r"(?<!\\)([|*])", r"\\\1", parts[i])
    return "".join(parts)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def escape_plain_formulas(app, what, name, obj, options, lines: list[str]) -> None:
    block_indent = None  # indentation of the line that opened a directive or literal block
    in_doctest = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if block_indent is not None:
            if not stripped or _indent(line) > block_indent:
                continue
            block_indent = None
        if in_doctest:
            if stripped:
                continue
            in_doctest = False
        if stripped.startswith(">>>"):
            in_doctest = True
            continue
        if stripped.startswith(".. ") or stripped.endswith("::"):
            block_indent = _indent(line)
            if stripped.startswith(".. "):
                continue
        lines[i] = _escape_prose(line)


def describe_constants(app, what, name, obj, options, lines: list[str]) -> None:
    """A constant without a doc comment would show its type's docstring (``frozenset() ->
    empty frozenset object``) or nothing; say what it is and where it is explained."""
    if what != "data":
        return
    own = "\n".join(lines).strip()
    if not own or own == (inspect.getdoc(type(obj)) or "").strip():
        module = name.rsplit(".", 1)[0]
        lines[:] = [f"A constant ({type(obj).__name__}); see :mod:`{module}`."]


def setup(app):
    app.add_html_math_renderer("mathml", (_visit_math, None), (_visit_displaymath, None))
    app.connect("autodoc-process-docstring", describe_constants, priority=90)
    app.connect("autodoc-process-docstring", escape_plain_formulas, priority=100)
    app.add_directive("refflow-result", ResultDirective)
    app.add_directive("refflow-figure", OptionalFigure)
    app.add_directive("refflow-api", ApiDirective)
    return {"parallel_read_safe": True}

