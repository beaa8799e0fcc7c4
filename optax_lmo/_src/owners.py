"""Which device owns which matrix: the assignment the whole-matrix exchange carries out.

Pure Python.

A polar factor needs the whole matrix, so every spectral matrix gets one owner
device, as in Disco, Dion and modded-nanogpt. Same-shape, same-layout matrices
form a *unit* that each owner handles in one batched call. Work is balanced by
flops: a unit with ``n`` matrices on ``G`` owners takes ``n // G`` full rounds
on every device; the ``n % G`` left over go to the least loaded devices across
all units (:func:`assign`). ``exchange.py`` carries the assignment out.

A *layout* names the mesh axes of the (batch, fan-in, fan-out) dimensions of a
matrix stack. Nothing here runs a jax operation: the assignment reads only mesh
shapes and layouts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

Axes = tuple[str, ...]
Layout = tuple[Axes, Axes, Axes]  # mesh axes of (batch, fan-in, fan-out) of a matrix view


def usable_axes(mesh) -> Axes:
  """Mesh axes of size > 1 that are not in ``Manual`` mode, in mesh order.

  Args:
    mesh: a ``Mesh`` or ``AbstractMesh``.

  Returns:
    The names of the axes that can own matrices.
  """
  return tuple(
      a
      for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
      if t != AxisType.Manual and mesh.shape[a] > 1
  )


def spec_layout(spec, ndim: int) -> Layout:
  """The layout of a ``(batch, d_in, d_out)`` stack from its ``PartitionSpec``.

  Args:
    spec: a ``PartitionSpec`` (may be shorter than ``ndim``).
    ndim: 3.

  Returns:
    The mesh axes of each dimension (``()`` where unsharded or unconstrained).
  """
  spec = tuple(spec) + (None,) * (ndim - len(spec))
  return tuple(_as_axes(s) for s in spec)  # type: ignore[return-value]


def fit_layout(layout: Layout, shape: Sequence[int], mesh) -> Layout:
  """Drops the mesh axes of a dimension they do not divide (XLA would pad that shard).

  Args:
    layout: the mesh axes of each dimension.
    shape: the stack's shape.
    mesh: the mesh.

  Returns:
    The layout with every uneven dimension unsharded.
  """
  return tuple(  # type: ignore[return-value]
      axes if shape[d] % math.prod(mesh.shape[a] for a in axes) == 0 else ()
      for d, axes in enumerate(layout)
  )


def _as_axes(s) -> Axes:
  if s is None or s is P.UNCONSTRAINED:
    return ()
  return tuple(s) if isinstance(s, (tuple, list)) else (s,)


def polar_cost(d_in: int, d_out: int) -> float:
  """Relative flops of one Newton–Schulz polar factor of a ``d_in x d_out`` matrix.

  Args:
    d_in: rows.
    d_out: columns.

  Returns:
    ``m^2 (n + m)`` for the short side ``m`` and long side ``n``.
  """
  m, n = sorted((d_in, d_out))
  return float(m * m * (n + m))


@dataclasses.dataclass(frozen=True)
class Unit:
  """Same-shape, same-layout matrices that each owner handles in one batched call.

  Attributes:
    group: index of the caller's group these matrices come from.
    members: indices of the group's pieces in this unit.
    layout: mesh axes of (batch, fan-in, fan-out) of every piece.
    shape: ``(d_in, d_out)``.
    n: matrices per device before the exchange (the local batch).
    replicated: usable mesh axes the pieces are replicated over (a slice each).
    split: mesh axes that shard the matrix dimensions, fan-in ones first.
    rounds: matrices every owner takes (``n // owners``).
    extra: owners (chunk indices) that take one more matrix (``n % owners``).
  """

  group: int
  members: tuple[int, ...]
  layout: Layout
  shape: tuple[int, int]
  n: int
  replicated: Axes
  split: Axes
  rounds: int
  extra: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Assignment:
  """Which device owns which matrix, with the flops each device is left with.

  Attributes:
    axes: the usable mesh axes, in mesh order.
    sizes: their sizes.
    units: one :class:`Unit` per (group, layout).
    load: relative flops per device (mesh order, row-major), from
      :func:`polar_cost`.
    ideal: total relative flops divided by the number of devices.
  """

  axes: Axes
  sizes: tuple[int, ...]
  units: tuple[Unit, ...]
  load: tuple[float, ...]
  ideal: float

  @property
  def imbalance(self) -> float:
    """Busiest device over the ideal share (1.0 is perfect)."""
    return max(self.load) / self.ideal if self.ideal else 1.0


def _chunk(unit: Unit, coords: dict[str, int], sizes: dict[str, int]) -> int:
  """Owner chunk of ``unit`` held by the device at ``coords``."""
  c = 0
  for a in unit.replicated + unit.split:
    c = c * sizes[a] + coords[a]
  return c


def slot_positions(unit: Unit, owners: int) -> np.ndarray:
  """Which matrix of the unit's local stack each owner's slot holds.

  The owner of chunk ``c`` takes, in round ``r < rounds``, local matrix
  ``r * owners + c``; the ``extra`` owners take the ones left over, in order.

  Args:
    unit: the unit.
    owners: its number of owner chunks (the product of its replicated and
      split axes' sizes).

  Returns:
    An ``int`` array ``(owners, slots)``, ``-1`` where a slot is padding.

  Examples:
    >>> from optax_lmo._src import owners as owners_lib
    >>> unit = owners_lib.Unit(0, (0,), ((), ("x",), ()), (8, 8), 6, (), ("x",), 1, (1, 2))
    >>> owners_lib.slot_positions(unit, 4).tolist()
    [[0, -1], [1, 4], [2, 5], [3, -1]]
  """
  slots = unit.rounds + bool(unit.extra)
  pos = np.full((owners, slots), -1)
  pos[:, : unit.rounds] = np.arange(unit.rounds * owners).reshape(unit.rounds, owners).T
  if unit.extra:
    pos[list(unit.extra), unit.rounds] = unit.rounds * owners + np.arange(len(unit.extra))
  return pos


def assign(
    groups: Sequence[Sequence[tuple[tuple[int, int, int], Layout]]], mesh
) -> Assignment:
  """Assigns matrices to owner devices, balancing the left-over ones by flops.

  Args:
    groups: per group, per piece: the ``(batch, d_in, d_out)`` shape and layout.
    mesh: the mesh (its usable axes are the owners).

  Returns:
    An :class:`Assignment`.

  Examples:
    Four layers' qkv and attention-out kernels, sharded ``P('fsdp')``, on 8
    devices: the qkv matrices go to devices 0-3, the cheaper ones to 4-7.

    >>> import jax
    >>> from optax_lmo._src import owners as owners_lib
    >>> mesh = jax.sharding.AbstractMesh((8,), ("fsdp",))
    >>> rows = ((), ("fsdp",), ())  # (batch, fan-in, fan-out) mesh axes
    >>> qkv, out = [((1, 64, 192), rows)] * 4, [((1, 64, 64), rows)] * 4
    >>> owned = owners_lib.assign([qkv, out], mesh)
    >>> [unit.extra for unit in owned.units]
    [(0, 1, 2, 3), (4, 5, 6, 7)]
    >>> round(owned.imbalance, 2)
    1.33
  """
  axes = usable_axes(mesh)
  sizes = {a: mesh.shape[a] for a in axes}
  draft = []
  for gi, pieces in enumerate(groups):
    by_layout: dict[Layout, list[int]] = {}
    for pi, (_, layout) in enumerate(pieces):
      key = tuple(tuple(a for a in d if a in sizes) for d in layout)
      by_layout.setdefault(key, []).append(pi)
    for (batch, rows, cols), members in by_layout.items():
      n = sum(pieces[pi][0][0] for pi in members) // math.prod(sizes[a] for a in batch)
      shape = tuple(pieces[members[0]][0][1:])
      split = rows + cols
      # Replicated axes add owners (a slice in, an all-gather out) only while the
      # split axes alone own fewer devices than there are matrices; the rest
      # compute redundantly (so a lone matrix is never padded to every device).
      replicated = []
      for a in (a for a in axes if a not in batch + split):
        if math.prod(sizes[b] for b in replicated + list(split)) >= n:
          break
        replicated.append(a)
      replicated = tuple(replicated)
      owners = math.prod(sizes[a] for a in replicated + split)
      layout = pieces[members[0]][1]
      draft.append((gi, tuple(members), layout, shape, n, replicated, split, owners))
  grid = itertools.product(*(range(s) for s in sizes.values()))
  coords_all = [dict(zip(axes, c, strict=True)) for c in grid]
  load = np.zeros(len(coords_all))
  units = [None] * len(draft)
  total = 0.0
  order = sorted(range(len(draft)), key=lambda k: -polar_cost(*draft[k][3]))
  for k in order:
    gi, members, layout, shape, n, replicated, split, owners = draft[k]
    cost = polar_cost(*shape)
    rounds, left = divmod(n, owners)
    unit = Unit(gi, members, layout, shape, n, replicated, split, rounds, ())
    chunks = np.array([_chunk(unit, c, sizes) for c in coords_all])
    # Devices that differ only in batch-sharding axes hold different matrices.
    total += cost * n * math.prod(sizes[a] for a in draft[k][2][0] if a in sizes)
    load += cost * rounds
    if left:
      busy = np.array([load[chunks == c].max() for c in range(owners)])
      extra = tuple(sorted(np.argsort(busy, kind="stable")[:left].tolist()))
      load += cost * np.isin(chunks, extra)
      unit = dataclasses.replace(unit, extra=extra)
    units[k] = unit
  return Assignment(
      axes,
      tuple(sizes.values()),
      tuple(units),
      tuple(float(v) for v in load),
      total / len(coords_all),
  )


__all__ = [
    "Assignment", "Axes", "Layout", "Unit", "assign", "fit_layout", "polar_cost", "spec_layout",
    "slot_positions", "usable_axes",
]
