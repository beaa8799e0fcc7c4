"""Counts the collectives of a compiled JAX program, which of them run inside loops, and its dots.

A developer tool shared by the sharding tests (no collective inside the
Newton–Schulz loop), ``benchmarks/sharding.py`` (collective bytes per step) and
``scripts/multiprocess.sh``; it reads the text of a compiled, SPMD-partitioned
HLO module, so it is no part of the library.

Usage as a script: ``python scripts/hlo_collectives.py FILE.hlo`` prints the
counts of an HLO text dump as JSON.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "reduce-scatter",
    "ragged-all-to-all",
    "collective-broadcast",
)



_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = ")
_CALLS = ("calls", "to_apply", "body", "condition", "branch_computations")


def _called(*attrs: str) -> re.Pattern:
  """``attr=callee`` or ``attr={callee, ...}`` for the attributes ``attrs`` of an instruction."""
  return re.compile(rf"\b({'|'.join(attrs)})=(\{{[^}}]*\}}|%?[\w.\-]+)")


_CALLED = _called(*_CALLS, "called_computations")
_BRANCHING = _called(*_CALLS, "true_computation", "false_computation")  # a conditional's branches


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
  """The instruction lines of each computation of an HLO module, and the entry's name."""
  comps: dict[str, list[str]] = {}
  entry = current = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and not _INSTR.match(line):
      current = comps.setdefault(m.group(1), [])
      entry = m.group(1) if line.startswith("ENTRY") else entry
    elif current is not None and _INSTR.match(line):
      current.append(line)
  return comps, entry


def _shape_and_opcode(rest: str) -> tuple[str, str]:
  if rest.startswith("("):
    depth, end = 0, len(rest)
    for k, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        end = k + 1
        break
    shape, rest = rest[:end], rest[end:].lstrip()
  else:
    shape, _, rest = rest.partition(" ")
  return shape, rest.split("(", 1)[0]


def _bytes(shape: str) -> int:
  total = 0
  for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
    total += _DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _dtypes(shape: str) -> set[str]:
  return set(re.findall(r"\b([a-z]+\d*)\[", shape))


def dots_outside_conditionals(hlo_text: str) -> tuple[int, int]:
  """``(dots not inside any branch of a conditional, all dots)`` reachable from the entry."""
  comps, entry = _computations(hlo_text)
  outside = total = 0
  stack = [(entry, False)]
  while stack:
    name, guarded = stack.pop()
    for line in comps.get(name, ()):
      if re.search(r"[\s}] ?dot\(", line.split(" = ", 1)[1]):
        total += 1
        outside += not guarded
      for attr, group in _BRANCHING.findall(line):
        branch = attr in ("branch_computations", "true_computation", "false_computation")
        stack += [(c.lstrip("%"), guarded or branch) for c in re.findall(r"%?[\w.\-]+", group)]
  return outside, total


def hlo_collectives(hlo_text: str) -> dict[str, Any]:
  """Counts the collectives of a compiled (SPMD-partitioned) HLO module.

  Args:
    hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

  Returns:
    A dict: ``count`` (collective ops in the program text), ``in_loops`` (those
    inside the body or condition of a ``while``, at any depth), ``ops`` (count
    per opcode), ``loops`` (``while`` ops), ``bytes`` (per-device output bytes
    of all collectives as executed: an op in a loop counts once per trip, by
    XLA's known trip count, and once per branch of a ``conditional``),
    ``static_bytes`` (each op once), and per opcode ``op_bytes`` (as
    ``bytes``) and ``op_dtypes`` (the element types it carries, sorted).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> f = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y @ y, x))
    >>> stats = hlo_collectives(f.lower(jnp.eye(4)).compile().as_text())
    >>> stats["count"], stats["loops"]
    (0, 1)
  """
  lines, entry = _computations(hlo_text)
  comps: dict[str, list[tuple[str, str, str]]] = {}  # (opcode, shape, line) per instruction
  for name, body in lines.items():
    comps[name] = []
    for line in body:
      shape, opcode = _shape_and_opcode(line.split(" = ", 1)[1])
      comps[name].append((opcode, shape, line))
  # Walk the call graph from the entry with execution multiplicities.
  runs: dict[str, int] = {}
  looped: set[str] = set()
  stack = [(entry, 1, False)] if entry else [(name, 1, False) for name in comps]
  while stack:
    name, mult, in_loop = stack.pop()
    if name not in comps:
      continue
    runs[name] = runs.get(name, 0) + mult
    if in_loop:
      looped.add(name)
    for opcode, _, line in comps[name]:
      trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
      for attr, group in re.findall(_CALLED, line):
        callees = [c.lstrip("%") for c in re.findall(r"%?[\w.\-]+", group)]
        loop = opcode == "while" and attr in ("body", "condition")
        times = int(trip.group(1)) if loop and trip else 1
        stack += [(c, mult * times, in_loop or loop) for c in callees]
  ops: dict[str, int] = {}
  op_bytes: dict[str, int] = {}
  op_dtypes: dict[str, set[str]] = {}
  total = in_loops = loops = nbytes = static_bytes = 0
  for name, instrs in comps.items():
    if name not in runs:
      continue
    for opcode, shape, _ in instrs:
      loops += opcode == "while"
      base = opcode.removesuffix("-start").removesuffix("-done")
      if base not in COLLECTIVES:
        continue
      if not opcode.endswith("-start"):  # sync op, or the done of an async pair
        static_bytes += _bytes(shape)
        nbytes += _bytes(shape) * runs[name]
        op_bytes[base] = op_bytes.get(base, 0) + _bytes(shape) * runs[name]
        op_dtypes.setdefault(base, set()).update(_dtypes(shape))
      if not opcode.endswith("-done"):
        ops[base] = ops.get(base, 0) + 1
        total += 1
        in_loops += name in looped
  return {
      "count": total,
      "in_loops": in_loops,
      "ops": ops,
      "loops": loops,
      "bytes": nbytes,
      "static_bytes": static_bytes,
      "op_bytes": op_bytes,
      "op_dtypes": {k: sorted(v) for k, v in op_dtypes.items()},
  }


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    print(json.dumps(hlo_collectives(f.read()), indent=1))
