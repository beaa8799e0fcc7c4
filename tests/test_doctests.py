"""Every docstring example in the package and every ``>>>`` snippet in README.md runs."""

import doctest
import importlib
import pathlib
import pkgutil

import pytest

import optax_lmo

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(optax_lmo.__path__, prefix="optax_lmo.")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_docstrings(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, verbose=False)
  assert result.failed == 0


def test_readme_snippets():
  result = doctest.testfile(str(ROOT / "README.md"), module_relative=False, optionflags=FLAGS)
  assert result.attempted > 0 and result.failed == 0
