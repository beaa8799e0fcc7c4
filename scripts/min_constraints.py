"""Prints pip constraints pinning every dependency to its lower bound in pyproject.toml.

``python scripts/min_constraints.py dev examples`` writes ``name==X`` for each
``name>=X`` in ``[project.dependencies]`` and in the named extras (extras that
name this project, like ``optax-lmo[examples]``, are followed). ``make test-min``
installs with these constraints, so the declared lower bounds are the versions
the suite runs against. A requirement without a ``>=`` bound is an error: it
would leave the oldest supported version untested.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds(extras: list[str], pyproject: pathlib.Path = ROOT / "pyproject.toml") -> dict:
  """Lower bound of each requirement of the project and of ``extras``.

  Args:
    extras: names of ``[project.optional-dependencies]`` tables to include.
    pyproject: the ``pyproject.toml`` to read.

  Returns:
    ``{normalized name: version}`` for every requirement reached.

  Raises:
    ValueError: an extra does not exist, or a requirement has no ``>=`` bound.
  """
  project = tomllib.loads(pyproject.read_text())["project"]
  me = _norm(project["name"])
  optional = project.get("optional-dependencies", {})
  queue = list(project.get("dependencies", []))
  seen: set[str] = set()

  def include(extra: str) -> None:
    if extra in seen:
      return
    if extra not in optional:
      raise ValueError(f"pyproject.toml has no extra {extra!r}; it has {sorted(optional)}")
    seen.add(extra)
    queue.extend(optional[extra])

  for extra in extras:
    include(extra)
  pins = {}
  while queue:
    req = queue.pop(0)
    m = _REQ.match(req)
    if m is None:
      raise ValueError(f"cannot parse requirement {req!r} in pyproject.toml")
    name, sub, spec = _norm(m[1]), m[2], m[3]
    if name == me:  # e.g. optax-lmo[examples]: that extra's requirements too
      for extra in filter(None, (e.strip() for e in (sub or "[]")[1:-1].split(","))):
        include(extra)
      continue
    bound = [c.strip()[2:].strip() for c in spec.split(",") if c.strip().startswith(">=")]
    if len(bound) != 1:
      raise ValueError(
          f"{req!r} in pyproject.toml needs exactly one '>=' lower bound (the oldest tested "
          "version); add one so `make test-min` can install it"
      )
    pins[name] = bound[0]
  return pins


def main() -> None:
  for name, version in sorted(lower_bounds(sys.argv[1:]).items()):
    print(f"{name}=={version}")


if __name__ == "__main__":
  main()
