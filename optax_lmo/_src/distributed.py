"""Whole-matrix ownership on a device mesh: the spectral LMO never sees a shard.

A polar factor needs the whole matrix. Under plain GSPMD a sharded matrix is
re-gathered inside every Newton–Schulz step and the work is replicated. Here,
as in Disco, Dion and modded-nanogpt, every matrix gets one owner device:

1. the matrix views of the spectral leaves are grouped by shape and layout
   (a *unit*) and stacked;
2. one ``all_to_all`` over the mesh axes that shard the matrix dimensions gives
   each device whole matrices (mesh axes over which the leaf is replicated just
   pick a slice: no communication);
3. each device runs one batched LMO on the matrices it owns, with no
   collective inside the Newton–Schulz loop;
4. one ``all_to_all`` back (and an ``all_gather`` over replicated axes) returns
   every leaf in its own layout.

Work is balanced by flops: a unit with ``n`` matrices on ``G`` owners takes
``n // G`` full rounds on every device; the ``n % G`` left over go to the least
loaded devices across all units, and devices holding only padding skip the
computation (``lax.cond``), so a GPT with 4 layers on 8 devices does not pay
for 8.

Layouts are read at trace time from the array types on a mesh with
``AxisType.Explicit`` axes (and from concrete arrays outside ``jit``), and the
per-device program runs in a ``shard_map``. On ``AxisType.Auto`` axes the
layout is not part of the type; there the exchange is a ``custom_partitioning``
op whose partition rule reads the layout XLA chose and plans from it. Either
way every result keeps the layout of its input.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

Axes = tuple[str, ...]
Layout = tuple[Axes, Axes, Axes]  # mesh axes of (batch, fan-in, fan-out) of a matrix view

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "reduce-scatter",
    "ragged-all-to-all",
    "collective-broadcast",
)


# -- finding the mesh -----------------------------------------------------------


def find_mesh(arrays: Sequence[jax.Array], distribute: bool | None = None) -> Any:
  """The mesh whose devices share the spectral LMO, or ``None`` to compute it locally.

  Args:
    arrays: the matrix views (or leaves) that will be orthogonalized.
    distribute: ``False`` never distributes; ``None`` or ``True`` distribute
      when the arrays live on a mesh with more than one usable device (axes in
      ``Manual`` mode, e.g. inside a ``shard_map``, are not used).

  Returns:
    A ``jax.sharding.Mesh`` (concrete arrays) or ``AbstractMesh`` (under
    ``jit``), or ``None``.
  """
  if distribute is False or not arrays:
    return None
  meshes = {_mesh_of(x) for x in arrays}
  if len(meshes) != 1:
    return None  # no mesh, or several: leave the placement to XLA
  mesh = meshes.pop()
  if mesh is None or math.prod(mesh.shape[a] for a in usable_axes(mesh)) < 2:
    return None
  return mesh


def _mesh_of(x):
  if not isinstance(x, jax.core.Tracer):
    s = getattr(x, "sharding", None)
    return s.mesh if isinstance(s, NamedSharding) and s.mesh.size > 1 else None
  s = jax.typeof(x).sharding
  if isinstance(s, NamedSharding) and not s.mesh.empty:
    return s.mesh
  ctx = jax.sharding.get_abstract_mesh()
  return None if ctx.empty else ctx


def usable_axes(mesh) -> Axes:
  """Mesh axes of size > 1 that are not in ``Manual`` mode, in mesh order."""
  return tuple(
      a
      for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
      if t != AxisType.Manual and mesh.shape[a] > 1
  )


def _layout(x, mesh, ndim: int) -> Layout | None:
  """Mesh axes of each dimension of ``x``, or ``None`` where the type does not say."""
  if not isinstance(x, jax.core.Tracer):
    spec = x.sharding.spec
  else:
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    if any(types[a] == AxisType.Auto for a in usable_axes(mesh)):
      return None
    spec = jax.typeof(x).sharding.spec
  return _spec_layout(spec, ndim)


def _spec_layout(spec, ndim: int) -> Layout:
  spec = tuple(spec) + (None,) * (ndim - len(spec))
  return tuple(_as_axes(s) for s in spec)  # type: ignore[return-value]


def _fit(layout: Layout, shape, mesh) -> Layout:
  """Drops the mesh axes of a dimension they do not divide (XLA would pad that shard)."""
  return tuple(  # type: ignore[return-value]
      axes if shape[d] % math.prod(mesh.shape[a] for a in axes) == 0 else ()
      for d, axes in enumerate(layout)
  )


def _as_axes(s) -> Axes:
  if s is None or s is P.UNCONSTRAINED:
    return ()
  return tuple(s) if isinstance(s, (tuple, list)) else (s,)


# -- the plan --------------------------------------------------------------------


def polar_cost(d_in: int, d_out: int) -> float:
  """Relative flops of one Newton–Schulz polar factor of a ``d_in x d_out`` matrix."""
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

  @property
  def slots(self) -> int:
    return self.rounds + (1 if self.extra else 0)


@dataclasses.dataclass(frozen=True)
class Plan:
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


def make_plan(
    groups: Sequence[Sequence[tuple[tuple[int, int, int], Layout]]], mesh
) -> Plan:
  """Assigns matrices to owner devices, balancing the left-over ones by flops.

  Args:
    groups: per group, per piece: the ``(batch, d_in, d_out)`` shape and layout.
    mesh: the mesh (its usable axes are the owners).

  Returns:
    A :class:`Plan`.

  Examples:
    Four layers' qkv and attention-out kernels, sharded ``P('fsdp')``, on 8
    devices: the qkv matrices go to devices 0-3, the cheaper ones to 4-7.

    >>> import jax
    >>> from optax_lmo._src import distributed
    >>> mesh = jax.sharding.AbstractMesh((8,), ("fsdp",))
    >>> rows = ((), ("fsdp",), ())  # (batch, fan-in, fan-out) mesh axes
    >>> qkv, out = [((1, 64, 192), rows)] * 4, [((1, 64, 64), rows)] * 4
    >>> plan = distributed.make_plan([qkv, out], mesh)
    >>> [unit.extra for unit in plan.units]
    [(0, 1, 2, 3), (4, 5, 6, 7)]
    >>> round(plan.imbalance, 2)
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
  return Plan(
      axes,
      tuple(sizes.values()),
      tuple(units),
      tuple(float(v) for v in load),
      total / len(coords_all),
  )


# -- the exchange -----------------------------------------------------------------


def _index(axes: Axes, sizes: dict[str, int]) -> jax.Array:
  """Row-major index of this device over ``axes`` (inside ``shard_map``)."""
  idx = jnp.zeros([], jnp.int32)
  for a in axes:
    idx = idx * sizes[a] + jax.lax.axis_index(a)
  return idx


def _own(x: jax.Array, unit: Unit, sizes: dict[str, int], fn: Callable) -> jax.Array:
  """Runs ``fn`` on whole matrices: local stack in, local stack out (inside ``shard_map``).

  ``x`` is this device's ``(n, d_in / rows, d_out / cols)`` block of the unit.
  """
  n, i_loc, o_loc = x.shape
  n_rep = math.prod(sizes[a] for a in unit.replicated)
  rows = [sizes[a] for a in unit.split if a in unit.layout[1]]
  n_rows, n_cols = math.prod(rows), math.prod(sizes[a] for a in unit.split) // math.prod(rows)
  n_split = n_rows * n_cols
  owners, q = n_rep * n_split, unit.rounds
  # Chunk-major (owners, slots, i, o): full rounds first, then the extras.
  parts = []
  if q:
    parts.append(jnp.swapaxes(x[: q * owners].reshape(q, owners, i_loc, o_loc), 0, 1))
  if unit.extra:
    rest = jnp.zeros((owners, 1, i_loc, o_loc), x.dtype)
    parts.append(rest.at[np.array(unit.extra), 0].set(x[q * owners :]))
  xs = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
  slots = xs.shape[1]
  if unit.replicated:  # replicated over these axes: take our slice, no communication
    xs = xs.reshape(n_rep, n_split, slots, i_loc, o_loc)[_index(unit.replicated, sizes)]
  if unit.split:  # one all-to-all: send chunk j to member j, receive our chunk's blocks
    xs = jax.lax.all_to_all(xs, unit.split, 0, 0, tiled=False)
  # Blocks (row member, col member) -> whole matrices (slots, d_in, d_out).
  w = xs.reshape(n_rows, n_cols, slots, i_loc, o_loc).transpose(2, 0, 3, 1, 4)
  w = w.reshape(slots, n_rows * i_loc, n_cols * o_loc)
  outs = []
  if q:
    outs.append(fn(w[:q]))
  if unit.extra:
    mask = np.zeros(owners, bool)
    mask[list(unit.extra)] = True
    mine = jnp.asarray(mask)[_index(unit.replicated + unit.split, sizes)]
    outs.append(jax.lax.cond(mine, fn, jnp.zeros_like, w[q:]))
  y = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
  # And back: the inverse of each step.
  ys = y.reshape(slots, n_rows, i_loc, n_cols, o_loc).transpose(1, 3, 0, 2, 4)
  ys = ys.reshape(n_split, slots, i_loc, o_loc)
  if unit.split:
    ys = jax.lax.all_to_all(ys, unit.split, 0, 0, tiled=False)
  if unit.replicated:
    ys = jax.lax.all_gather(ys, unit.replicated, axis=0, tiled=True)
  ys = ys.reshape(owners, slots, i_loc, o_loc)
  out = []
  if q:
    out.append(jnp.swapaxes(ys[:, :q], 0, 1).reshape(q * owners, i_loc, o_loc))
  if unit.extra:
    out.append(ys[np.array(unit.extra), q])
  return jnp.concatenate(out) if len(out) > 1 else out[0]


def lmo_groups(
    norms: Sequence[Any],
    groups: Sequence[Sequence[jax.Array]],
    *,
    distribute: bool | None = None,
) -> list[list[jax.Array]]:
  """LMOs of groups of matrix stacks; spectral ones distributed over the mesh.

  Each group holds ``(b, d_in, d_out)`` stacks with one norm and one matrix
  shape; the result holds the LMO of every stack, in the same layout. Groups
  whose norm is not spectral (row-local LMOs: ColNorm, RowNorm, Sign, BiasRMS)
  run where the data lives. With no mesh, or ``distribute=False``, every group
  is concatenated and its norm's ``lmo_matrices`` called once.

  Args:
    norms: one :class:`~optax_lmo.norms.Norm` per group.
    groups: per group, the stacks (``(b, d_in, d_out)``, same ``d_in, d_out``).
    distribute: ``None`` (on when the stacks live on a multi-device mesh),
      ``True`` or ``False``.

  Returns:
    Per group, the list of LMO stacks.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> from optax_lmo._src import distributed
    >>> g = jnp.ones((1, 4, 8))
    >>> [[u]] = distributed.lmo_groups([ol.norms.Spectral()], [[g]])
    >>> u.shape
    (1, 4, 8)
  """
  out: list[list[jax.Array] | None] = [None] * len(groups)
  spectral = [k for k, nrm in enumerate(norms) if getattr(nrm, "spectral", False)]
  mesh = find_mesh([m for k in spectral for m in groups[k]], distribute)
  if mesh is not None:
    for k, us in zip(spectral, _owned(norms, groups, spectral, mesh), strict=True):
      out[k] = us
  for k, (nrm, ms) in enumerate(zip(norms, groups, strict=True)):
    if out[k] is None:
      out[k] = _split(nrm.lmo_matrices(jnp.concatenate(ms) if len(ms) > 1 else ms[0]), ms)
  return out  # type: ignore[return-value]


def _split(stack: jax.Array, like: Sequence[jax.Array]) -> list[jax.Array]:
  bounds = np.cumsum([m.shape[0] for m in like])[:-1].tolist()
  return list(jnp.split(stack, bounds)) if bounds else [stack]


def _local_fn(lmos: Sequence[Callable], metas, mesh) -> Callable:
  """The per-device program (inside ``shard_map`` or a custom partitioning) for all groups."""
  plan = make_plan(metas, mesh)
  sizes = dict(zip(plan.axes, plan.sizes, strict=True))
  starts = np.cumsum([0] + [len(m) for m in metas]).tolist()

  def local(*blocks):
    res = list(blocks)
    for unit in plan.units:
      base = starts[unit.group]
      mine = [blocks[base + p] for p in unit.members]
      x = jnp.concatenate(mine) if len(mine) > 1 else mine[0]
      y = _own(x, unit, sizes, lmos[unit.group])
      for p, piece in zip(unit.members, _split(y, mine), strict=True):
        res[base + p] = piece
    return tuple(res)

  return local


def _owned(norms, groups, which, mesh) -> list[list[jax.Array]]:
  """Distributed LMOs of the groups ``which``, all in one per-device program."""
  lmos = [norms[k].lmo_matrices for k in which]
  flat = [m for k in which for m in groups[k]]
  starts = np.cumsum([0] + [len(groups[k]) for k in which]).tolist()
  layouts = [_layout(m, mesh, 3) for m in flat]
  if any(layout is None for layout in layouts):
    res = _partitioned(lmos, [groups[k] for k in which], mesh)
  else:
    metas = [
        [(m.shape, layouts[starts[j] + p]) for p, m in enumerate(groups[k])]
        for j, k in enumerate(which)
    ]
    specs = tuple(P(*layout) for layout in layouts)
    free = frozenset(
        a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t != AxisType.Manual
    )
    res = jax.shard_map(
        _local_fn(lmos, metas, mesh),
        mesh=mesh,
        in_specs=specs,
        out_specs=specs,
        axis_names=free,
        check_vma=False,
    )(*flat)
  return [list(res[starts[j] : starts[j + 1]]) for j in range(len(which))]


def _partitioned(lmos, groups, mesh) -> tuple[jax.Array, ...]:
  """Auto axes: the layouts are only known to XLA's partitioner, so ask it.

  A ``custom_partitioning`` op whose partition rule reads the layout XLA gave
  each matrix, plans the owners from it and lowers to the same per-device
  program as the explicit path; results keep the layout of their inputs. Its
  reference implementation (the LMO, used for shapes) takes the constants of
  each norm's LMO as operands, as ``custom_partitioning`` requires.
  """
  flat = [m for ms in groups for m in ms]
  n = len(flat)
  bounds = np.cumsum([0] + [len(ms) for ms in groups]).tolist()
  jaxprs = []
  for lmo, ms in zip(lmos, groups, strict=True):
    stack = jax.ShapeDtypeStruct((sum(m.shape[0] for m in ms), *ms[0].shape[1:]), ms[0].dtype)
    jaxprs.append(jax.make_jaxpr(lmo)(stack))
  consts = [jnp.asarray(c) for cj in jaxprs for c in cj.consts]

  def reference(*args):
    pieces, flat_consts = args[:n], args[n:]
    out, c0 = [], 0
    for j, cj in enumerate(jaxprs):
      mine = pieces[bounds[j] : bounds[j + 1]]
      cs = [c.reshape(k.shape) for c, k in zip(flat_consts[c0:], cj.consts, strict=False)]
      c0 += len(cj.consts)
      x = jnp.concatenate(mine) if len(mine) > 1 else mine[0]
      out += _split(jax.core.eval_jaxpr(cj.jaxpr, cs, x)[0], mine)
    return tuple(out)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    pieces = arg_shapes[:n]
    layouts = [_fit(_spec_layout(a.sharding.spec, 3), a.shape, mesh) for a in pieces]
    metas = [
        [(pieces[k].shape, layouts[k]) for k in range(bounds[j], bounds[j + 1])]
        for j in range(len(groups))
    ]
    local = _local_fn(lmos, metas, mesh)
    shardings = tuple(NamedSharding(mesh, P(*layout)) for layout in layouts)
    replicated = tuple(NamedSharding(mesh, P()) for _ in consts)
    return mesh, lambda *args: local(*args[:n]), shardings, shardings + replicated

  def infer(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    return tuple(a.sharding for a in arg_shapes[:n])

  matrices = ", ".join(f"b{k} i{k} o{k}" for k in range(n))
  const_factors = [f"c{k}" for k in range(len(consts))]
  rule = ", ".join([matrices, *const_factors]) + " -> " + matrices
  op = custom_partitioning(reference)
  op.def_partition(
      partition,
      infer_sharding_from_operands=infer,
      sharding_rule=rule,
      need_replication_factors=tuple(const_factors),
  )
  return op(*flat, *(jnp.asarray(c.reshape(-1)) for c in consts))


# -- checking it in the compiled program ---------------------------------------------

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = ")
_CALLED = re.compile(
    r"\b(calls|to_apply|body|condition|branch_computations|called_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)


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


def hlo_collectives(hlo_text: str) -> dict[str, Any]:
  """Counts the collectives of a compiled (SPMD-partitioned) HLO module.

  Args:
    hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

  Returns:
    A dict: ``count`` (collective ops in the program text), ``in_loops`` (those
    inside the body or condition of a ``while``, at any depth), ``ops`` (count
    per opcode), ``loops`` (``while`` ops), ``bytes`` (per-device output bytes
    of all collectives as executed: an op in a loop counts once per trip, by
    XLA's known trip count, and once per branch of a ``conditional``) and
    ``static_bytes`` (each op once).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optax_lmo._src import distributed
    >>> f = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y @ y, x))
    >>> stats = distributed.hlo_collectives(f.lower(jnp.eye(4)).compile().as_text())
    >>> stats["count"], stats["loops"]
    (0, 1)
  """
  comps: dict[str, list[tuple[str, str, str]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and not _INSTR.match(line):
      current = comps.setdefault(m.group(1), [])
      entry = m.group(1) if line.startswith("ENTRY") else entry
      continue
    if current is not None and _INSTR.match(line):
      shape, opcode = _shape_and_opcode(line.split(" = ", 1)[1])
      current.append((opcode, shape, line))
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
  }


__all__ = [
    "Plan",
    "Unit",
    "find_mesh",
    "hlo_collectives",
    "lmo_groups",
    "make_plan",
    "polar_cost",
    "usable_axes",
]
