"""The Examples sections of the public docstrings run as doctests."""

import doctest
import importlib

import pytest

MODULES = [
    "pixelflowsom._estimator",
    "pixelflowsom._importing",
    "pixelflowsom._metacluster",
    "pixelflowsom._preprocessing",
    "pixelflowsom._revising",
    "pixelflowsom._tables",
    "pixelflowsom.pl",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
