"""Sphinx configuration of the sklearn_lse documentation.

Build (from the repository root, after ``python -m pip install -e ".[docs]"``)::

    python -m sphinx -W -b html docs docs/_build/html

The example gallery is executed by default, each example in its small configuration
(``SKLEARN_LSE_QUICK=1``); ``SKLEARN_LSE_DOCS_EXECUTE=0`` builds it without running the
examples (their code and text only).

The build needs no network, and neither do the pages: MathJax comes from the
``sphinx-mathjax-offline`` package (in the ``docs`` extra) and is copied into the pages'
``_static/mathjax``.
"""

import importlib.util
import os
from pathlib import Path

import sklearn_lse

# Examples run in their quick configuration and headless; set before sphinx-gallery
# executes them (each example reads the variable when it runs).
os.environ.setdefault("SKLEARN_LSE_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
execute_examples = os.environ.get("SKLEARN_LSE_DOCS_EXECUTE", "1") != "0"

project = "sklearn_lse"
author = "sklearn_lse developers"
copyright = "sklearn_lse developers, BSD-3-Clause"
release = sklearn_lse.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",  # the benchmarks page includes the README's Markdown section
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# No intersphinx: its inventories are fetched from the network at build time, and a
# failed fetch is a warning (an error under -W). References to scikit-learn, NumPy or
# Dask objects render as code without a link.

templates_path = ["_templates"]
# sg_execution_times: see write_computation_times below (excluded too, in case an older
# build left the page in the source folder)
exclude_patterns = [
    "_build",
    "generated/backreferences",
    "sg_execution_times.rst",
    "auto_examples/sg_execution_times.rst",
]
root_doc = "index"
default_role = "literal"

# API reference: one page per object, generated from the docstrings into generated/.
autosummary_generate = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document the methods sklearn_lse defines (and those its classes inherit from one
    another), not the ones inherited from scikit-learn (``get_params``, ``score``, the
    metadata-routing ``set_*_request``), which scikit-learn documents."""
    if what == "class" and not (getattr(obj, "__module__", None) or "").startswith("sklearn_lse"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)


# Example gallery: examples/plot_*.py, executed unless SKLEARN_LSE_DOCS_EXECUTE=0.
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": execute_examples,
    "abort_on_example_error": True,
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "doc_module": ("sklearn_lse",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"sklearn_lse": None},
    "remove_config_comments": True,
    # the execution-times page loads jQuery and DataTables from CDNs: not offline
    "write_computation_times": False,
}


def _mathjax_folder():
    """The folder that holds MathJax 3 (``mathjax/``) in the sphinx-mathjax-offline
    package: listed in html_static_path, it is copied to ``_static/mathjax``."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the documentation serves its own copy of MathJax, from the "
            "sphinx-mathjax-offline package: python -m pip install -e '.[docs]'"
        )
    folder = Path(spec.origin).parent / "static"
    if not (folder / "mathjax" / "tex-chtml.js").is_file():
        raise RuntimeError(f"no MathJax in {folder}: reinstall sphinx-mathjax-offline")
    return str(folder)


# Formulas: MathJax served with the pages (no CDN), so that they render offline.
mathjax_path = "mathjax/tex-chtml.js"
html_static_path = ["_static", _mathjax_folder()]
html_css_files = ["code.css"]

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn_lse {release}"
html_theme_options = {
    "icon_links": [],
    "navbar_end": ["theme-switcher"],
    # the user guide's sections are in its left sidebar (html_sidebars)
    "secondary_sidebar_items": {"**": ["page-toc"], "user_guide": []},
    "show_toc_level": 2,
}
# The pages without sub-pages have nothing to show in the left sidebar's section
# navigation; the user guide shows its own sections there instead.
html_sidebars = {
    "index": [],
    "getting_started": [],
    "benchmarks": [],
    "user_guide": ["sidebar-page-sections.html"],
}
html_show_sourcelink = False
