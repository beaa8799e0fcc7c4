"""Old public spellings that keep working, with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable


def module_getattr(module: str, old: dict[str, tuple[str, str]]) -> Callable[[str], object]:
  """A module ``__getattr__`` for ``old``: ``{name: ("pkg.module:attr", what to use instead)}``.

  The object is imported only when an old name is read; the warning names
  ``module.name`` and what replaces it.
  """

  def __getattr__(name: str):
    if name not in old:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    where, instead = old[name]
    warnings.warn(f"{module}.{name} is deprecated: {instead} (CHANGELOG.md).",
                  DeprecationWarning, stacklevel=2)
    path, attr = where.split(":")
    return getattr(importlib.import_module(path), attr)

  return __getattr__


__all__ = ["module_getattr"]
