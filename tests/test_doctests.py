"""Every example in core/'s and demo/'s docstrings runs: a `>>>` line is a promise. An example that needs a loaded
model or a running app is written as plain code, without the prompt."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import core
import demo

MODULES = sorted(info.name for package in (core, demo)
                 for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."))


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_a_modules_docstrings_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (python -m doctest -v)"
