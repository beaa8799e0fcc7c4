"""Sphinx configuration: API reference from the docstrings, MyST pages, the quickstart."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "optax_lmo"
author = "optax_lmo authors"
copyright = "the optax_lmo authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# The notebook is saved with its outputs (`make notebook`), which the pages show; it is
# executed by the test suite (tests/harness/test_notebook.py), not here.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures show defaults; the Args sections say the types
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # dataclass "Attributes:" as fields, not duplicate attribute entries
napoleon_custom_sections = [("References", "notes_style")]

html_theme = "furo"
html_title = "optax_lmo"
