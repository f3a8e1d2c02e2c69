"""Every docstring example in the package runs and prints what it says (house rule 6)."""

import doctest
import importlib
import pkgutil

import pytest
import torch

import flowforge

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(flowforge.__path__, "flowforge.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)  # examples that draw from the global RNG see the same numbers in every order
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_package_examples_exist():
    with_examples = [n for n in MODULES if doctest.DocTestFinder().find(importlib.import_module(n))]
    assert len(with_examples) >= 10
