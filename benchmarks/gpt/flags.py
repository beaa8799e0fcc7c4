"""Command-line flags from a config dataclass: one ``--flag`` per field, with its help text.

A field made with :func:`flag` carries its help text and allowed values; the
parser reads them from the field metadata, and :func:`check` applies the same
allowed values (and numeric ranges) to a config built in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any


def flag(default, help: str, choices: tuple = ()) -> Any:
  """A dataclass field whose ``help`` and ``choices`` describe its command-line flag."""
  return dataclasses.field(default=default, metadata=dict(help=help, choices=choices))


def name(field: str) -> str:
  """``--eval-every`` for the field ``eval_every``."""
  return "--" + field.replace("_", "-")


def parser(cls, **kwargs) -> argparse.ArgumentParser:
  """An ``ArgumentParser`` with a flag per field of ``cls``; unset flags are left out.

  Booleans get ``--x`` / ``--no-x``; ``int``, ``float`` and ``str`` fields
  (optionally ``| None``) take a value. ``kwargs`` go to ``ArgumentParser``.
  """
  p = argparse.ArgumentParser(**kwargs)
  for f in dataclasses.fields(cls):
    help_ = f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})")
    kw: dict[str, Any] = dict(dest=f.name, help=help_.replace("%", "%%"),
                              default=argparse.SUPPRESS)
    base = str(f.type).replace(" | None", "")
    if base == "bool":
      kw["action"] = argparse.BooleanOptionalAction
    elif f.metadata["choices"]:
      kw.update(type={"int": int, "float": float, "str": str}[base], choices=f.metadata["choices"])
    else:
      kw.update(type={"int": int, "float": float, "str": str}[base], metavar=base.upper())
    p.add_argument(name(f.name), **kw)
  return p


def check(cfg, ranges: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
  """Raises ``ValueError`` naming the first field of ``cfg`` that is out of bounds.

  Out of bounds: a value not among the field's choices, a non-finite float, or a
  value that fails its ``ranges`` entry (``field -> (test, "what it must be")``).
  """
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if v is not None and f.metadata["choices"] and v not in f.metadata["choices"]:
      raise ValueError(f"{name(f.name)} {v!r}: choose from {', '.join(f.metadata['choices'])}.")
    if isinstance(v, float) and not math.isfinite(v):
      raise ValueError(f"{name(f.name)} must be a finite number, got {v}.")
    if v is not None and f.name in ranges and not ranges[f.name][0](v):
      raise ValueError(f"{name(f.name)} must be {ranges[f.name][1]}, got {v}.")
