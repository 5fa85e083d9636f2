"""Sphinx configuration for the pyro-deq documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
The tutorials are rendered from their committed notebooks without executing
them again, because the test suite already executes them.
"""

import pyro_deq

project = "pyro-deq"
author = "pyro-deq developers"
release = pyro_deq.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# `tutorials` is a link to the repository's tutorials/ folder.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/.ipynb_checkpoints"]
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# Inherited docstrings (torch.autograd.Function, Pyro's AutoGuide) refer to
# labels of other projects' documentation, which do not resolve here.
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}
# Docstrings mix reST fields (Pyro's style) and numpydoc sections
# (scikit-learn's style); napoleon reads both.
napoleon_google_docstring = False
napoleon_numpy_docstring = True

html_theme = "furo"
html_title = f"pyro-deq {release}"
