"""Every docstring example in the package and every ``>>>`` snippet in README.md and docs runs."""

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


DOC_PAGES = sorted(p.name for p in (ROOT / "docs").glob("*.md") if ">>>" in p.read_text("utf-8"))


def test_readme_snippets():
  result = doctest.testfile(str(ROOT / "README.md"), module_relative=False, optionflags=FLAGS)
  assert result.attempted > 0 and result.failed == 0


def test_docs_pages_with_snippets_are_collected():
  # The optimizer examples and the extras moved from the README to these pages.
  assert {"optimizers.md", "beyond.md"} <= set(DOC_PAGES), DOC_PAGES


@pytest.mark.parametrize("page", DOC_PAGES)
def test_docs_snippets(page):
  result = doctest.testfile(str(ROOT / "docs" / page), module_relative=False, optionflags=FLAGS)
  assert result.attempted > 0 and result.failed == 0


def test_readme_lists_every_public_name():
  import optax_lmo
  import optax_lmo.norms

  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  names = [n for n in optax_lmo.__all__ if n not in ("norms", "contrib")]
  names += [f"norms.{n}" for n in optax_lmo.norms.__all__]
  names += [f"contrib.{n}" for n in optax_lmo.contrib.__all__]
  missing = [n for n in names if f"`{n}`" not in readme]
  assert not missing, f"README's API section lacks {missing}"
