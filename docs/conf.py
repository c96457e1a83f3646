"""Sphinx configuration of the pixelflowsom documentation.

Build (offline, warnings as errors): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from importlib.metadata import PackageNotFoundError, version

project = "pixelflowsom"
author = "pixelflowsom developers"
copyright = "pixelflowsom developers"
try:
    release = version("pixelflowsom")
except PackageNotFoundError:  # building from a source tree without installing
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- autodoc / autosummary: the API pages are generated into docs/generated/ (git-ignored) -----------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc docstrings carry the types

# -- numpydoc ----------------------------------------------------------------------------------------------------
numpydoc_show_class_members = False  # the class template lists the methods (docs/_templates/autosummary/class.rst)
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
# Types are marked up as cross-references: every name becomes an ``:obj:`` reference (which also keeps a name such
# as ``n_features_in_`` from being read as a reST link target), except the plain words listed here. Without
# ``nitpicky`` an unresolved reference renders as text and is no warning.
numpydoc_xref_param_type = True
numpydoc_xref_ignore = {
    "a", "an", "and", "array", "dask", "default", "estimator", "floats", "image", "images", "in", "instance",
    "n_channels", "n_features", "n_pixels", "n_samples", "objects", "of", "one", "optional", "or", "per", "s",
    "shape", "the", "them", "to", "two", "with", "xdim", "ydim",
}  # fmt: skip
# numpydoc's default aliases point into the Python and NumPy docs ("python:int", glossary terms, labels), which
# need intersphinx. The build is offline: they point to plain names instead, shown as such.
numpydoc_xref_aliases = {
    name: name for name in ("None", "True", "False", "bool", "int", "float", "str", "list", "tuple", "dict", "callable")
} | {
    "boolean": "bool",
    "string": "str",
    "array-like": "numpy.typing.ArrayLike",
    "array_like": "numpy.typing.ArrayLike",
    "iterable": "collections.abc.Iterable",
    "sequence": "collections.abc.Sequence",
    "generator": "collections.abc.Generator",
    "scalar": "numpy.generic",
    # numpydoc does not split "(n_features_in_,)" at the comma; the trailing "_" would make it a reST link target.
    "n_features_in_,": "n_features_in_",
    "n_samples_fit_,": "n_samples_fit_",
}
# Validate the docstrings of everything documented; a failed check is a warning, hence an error with -W. The
# exceptions are scikit-learn's conventions: named return values (RT02), no extended summary, See Also or Examples
# section required on every method (ES01, SA01, EX01); and the summary on the line of the opening quotes (GL01,
# which numpydoc < 1.10 rejects; ruff's pydocstyle rules check the layout).
numpydoc_validation_checks = {"all", "ES01", "SA01", "EX01", "RT02", "GL01"}
numpydoc_validation_exclude = {
    r"\.__init__$",  # documented in the class docstring
    # Methods inherited from scikit-learn's base classes carry scikit-learn's docstrings.
    r"\.(fit_transform|get_params|set_params|get_metadata_routing|set_output|set_\w+_request)$",
    # Module data documented by a ``#:`` comment, which has no quotes for GL02 to place.
    r"^pixelflowsom\.TRUSTED_TYPES$",
}

# -- MyST (Markdown pages) ---------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# -- HTML --------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pixelflowsom {release}"
html_static_path = []
html_show_sourcelink = False
