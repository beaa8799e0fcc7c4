"""The whole-matrix exchange: all-to-all in, one batched LMO per device, all-to-all out.

It serves every norm whose LMO needs whole matrices (``Norm.whole_matrices``: the
polar factor of Spectral and SpectralConv); the function it runs is the norm's own
``whole_lmo_matrices``.

Under plain GSPMD a sharded matrix is re-gathered inside every Newton–Schulz
step and the work is replicated. Here, on a mesh, the stacks handed in are
carried to the owners :func:`~optax_lmo._src.owners.assign` picks:

1. one ``all_to_all`` over the mesh axes that shard the matrix dimensions gives
   each device whole matrices (mesh axes over which a stack is replicated just
   pick a slice: no communication);
2. each device runs one batched call of the group's function on the matrices it
   owns, with no collective inside the Newton–Schulz loop; devices holding only
   padding skip it (``lax.cond``). Stacks given a keep bit (randomized layer
   updates) run one ``lax.cond`` per matrix instead, so a dropped matrix costs
   nothing on its owner: the assignment says which matrix each slot holds, and the
   keep bits are replicated;
3. one ``all_to_all`` back (and an ``all_gather`` over replicated axes) returns
   every stack in its own layout.

With an *exchange dtype* (e.g. bfloat16) the matrices travel in it: each is
cast before the all-to-all in, back to float32 on its owner (the polar factor
runs at its own dtype), and the result is cast again for the trip back and
returned in float32. Only what crosses devices is rounded. The rounded values
travel as unsigned integers of the same width: collectives only move bits, so
this is exact, and it keeps XLA's CPU backend from widening a bfloat16
all-to-all back to float32 (which would round without saving a byte).

Layouts are read at trace time from the array types on a mesh with
``AxisType.Explicit`` axes (and from concrete arrays outside ``jit``), and the
per-device program runs in a ``shard_map``. On ``AxisType.Auto`` axes the
layout is not part of the type; there the exchange is a ``custom_partitioning``
op whose partition rule reads the layout XLA chose and plans from it. Either
way every result keeps the layout of its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_lmo._src import owners as owners_lib
from optax_lmo._src.owners import Axes, Layout, Unit

StackFn = Callable[[jax.Array], jax.Array]  # float32 (B, d_in, d_out) -> (B, d_in, d_out)


def find_mesh(arrays: Sequence[jax.Array], distribute: bool | None = None) -> Any:
  """The mesh whose devices share the whole-matrix LMOs, or ``None`` to compute them locally.

  Args:
    arrays: the matrix stacks that will be orthogonalized.
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
  if mesh is None or math.prod(mesh.shape[a] for a in owners_lib.usable_axes(mesh)) < 2:
    return None
  return mesh


def check_dtype(exchange_dtype: Any, where: str = "") -> np.dtype | None:
  """The dtype the exchange sends matrices in, checked: ``None`` or a floating dtype.

  Args:
    exchange_dtype: ``None`` (the stacks' own float32), or a floating dtype or
      its name (``jnp.bfloat16``, ``"bfloat16"``, ``jnp.float16``).
    where: the function it was given to, for the error (e.g. ``"scion"``).

  Returns:
    ``None`` or the ``numpy`` dtype.

  Raises:
    ValueError: not a floating dtype (an array here means the dtype went
      through ``optax.inject_hyperparams`` as a hyperparameter).
  """
  if exchange_dtype is None:
    return None
  dtype = None
  if not isinstance(exchange_dtype, (jax.Array, np.ndarray, np.generic)):
    try:
      dtype = jnp.dtype(exchange_dtype)
    except TypeError:
      pass
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{where + ': ' if where else ''}exchange_dtype must be None or a floating dtype such"
        f" as jnp.bfloat16, got {exchange_dtype!r}. Under optax.inject_hyperparams pass it as"
        " static: static_args=('exchange_dtype',)."
    )
  return dtype


def _mesh_of(x):
  if not isinstance(x, jax.core.Tracer):
    s = getattr(x, "sharding", None)
    return s.mesh if isinstance(s, NamedSharding) and s.mesh.size > 1 else None
  s = jax.typeof(x).sharding
  if isinstance(s, NamedSharding) and not s.mesh.empty:
    return s.mesh
  ctx = jax.sharding.get_abstract_mesh()
  return None if ctx.empty else ctx


def _layout(x, mesh, ndim: int) -> Layout | None:
  """Mesh axes of each dimension of ``x``, or ``None`` where the type does not say."""
  if not isinstance(x, jax.core.Tracer):
    spec = x.sharding.spec
  else:
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    if any(types[a] == AxisType.Auto for a in owners_lib.usable_axes(mesh)):
      return None
    spec = jax.typeof(x).sharding.spec
  return owners_lib.spec_layout(spec, ndim)


def _index(axes: Axes, sizes: dict[str, int]) -> jax.Array:
  """Row-major index of this device over ``axes`` (inside ``shard_map``)."""
  idx = jnp.zeros([], jnp.int32)
  for a in axes:
    idx = idx * sizes[a] + jax.lax.axis_index(a)
  return idx


_BITS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _pack(x: jax.Array, wire) -> jax.Array:
  """``x`` rounded to ``wire``, as unsigned integers of that width (unchanged if same dtype)."""
  if wire == x.dtype:
    return x
  return jax.lax.bitcast_convert_type(x.astype(wire), _BITS[wire.itemsize])


def _unpack(x: jax.Array, wire, dtype) -> jax.Array:
  """The inverse of :func:`_pack`: the ``wire`` values, cast to ``dtype``."""
  if wire == dtype:
    return x
  return jax.lax.bitcast_convert_type(x, wire).astype(dtype)


def _each(fn: Callable, w: jax.Array, keep: jax.Array) -> jax.Array:
  """``fn`` on each matrix of ``w`` whose ``keep`` bit is set, zeros for the others.

  One ``lax.cond`` per matrix, one after another (``lax.map``): a cond over the
  batch would have to run ``fn`` whenever any matrix is kept, and a ``vmap``-ed
  one becomes a select that runs it on all of them.
  """
  one = lambda m, k: jax.lax.cond(k, fn, jnp.zeros_like, m)
  if w.shape[0] == 1:
    return one(w, keep[0])
  return jax.lax.map(lambda mk: one(mk[0][None], mk[1])[0], (w, keep))


def _own(
    x: jax.Array, unit: Unit, sizes: dict[str, int], fn: Callable, wire: Any = None, keep=None
) -> jax.Array:
  """Runs ``fn`` on whole matrices: local stack in, local stack out (inside ``shard_map``).

  ``x`` is this device's ``(n, d_in / rows, d_out / cols)`` block of the unit;
  ``wire`` (a dtype or ``None``) is what the blocks travel in, both ways;
  ``keep`` (``None``, or ``n`` booleans, the same on every device) marks the
  matrices ``fn`` runs on: the others come back zero, and their owners skip it.
  """
  wire = x.dtype if wire is None else jnp.dtype(wire)
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
    xs = jax.lax.all_to_all(_pack(xs, wire), unit.split, 0, 0, tiled=False)
    xs = _unpack(xs, wire, x.dtype)
  # Blocks (row member, col member) -> whole matrices (slots, d_in, d_out).
  w = xs.reshape(n_rows, n_cols, slots, i_loc, o_loc).transpose(2, 0, 3, 1, 4)
  w = w.reshape(slots, n_rows * i_loc, n_cols * o_loc)
  chunk = _index(unit.replicated + unit.split, sizes)
  outs = []
  if keep is not None:  # the keep bit of each slot's matrix, false on padding
    pos = owners_lib.slot_positions(unit, owners)
    outs.append(_each(fn, w, jnp.where(pos >= 0, keep[np.maximum(pos, 0)], False)[chunk]))
  elif q:
    outs.append(fn(w[:q]))
  if unit.extra and keep is None:
    mask = np.zeros(owners, bool)
    mask[list(unit.extra)] = True
    outs.append(jax.lax.cond(jnp.asarray(mask)[chunk], fn, jnp.zeros_like, w[q:]))
  y = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
  # And back: the inverse of each step.
  ys = y.reshape(slots, n_rows, i_loc, n_cols, o_loc).transpose(1, 3, 0, 2, 4)
  ys = ys.reshape(n_split, slots, i_loc, o_loc)
  if unit.split or unit.replicated:
    ys = _pack(ys, wire)
  if unit.split:
    ys = jax.lax.all_to_all(ys, unit.split, 0, 0, tiled=False)
  if unit.replicated:
    ys = jax.lax.all_gather(ys, unit.replicated, axis=0, tiled=True)
  if unit.split or unit.replicated:
    ys = _unpack(ys, wire, x.dtype)
  ys = ys.reshape(owners, slots, i_loc, o_loc)
  out = []
  if q:
    out.append(jnp.swapaxes(ys[:, :q], 0, 1).reshape(q * owners, i_loc, o_loc))
  if unit.extra:
    out.append(ys[np.array(unit.extra), q])
  return jnp.concatenate(out) if len(out) > 1 else out[0]


def lmo_stacks(
    fns: Sequence[StackFn],
    groups: Sequence[Sequence[jax.Array]],
    mesh: Any = None,
    exchange_dtype: Any = None,
    keeps: Sequence[Sequence[Any]] | None = None,
) -> list[list[jax.Array]]:
  """Applies each group's function to its stacks in one batched call, on owner devices on a mesh.

  Args:
    fns: per group, a pure function on float32 ``(B, d_in, d_out)`` stacks that
      acts on each matrix separately (a norm's ``whole_lmo_matrices``).
    groups: per group, float32 stacks ``(b, d_in, d_out)`` of one matrix shape.
    mesh: ``None`` concatenates each group and calls its function once where the
      data lives; a mesh from :func:`find_mesh` gives every matrix one owner.
    exchange_dtype: on a mesh, the dtype the matrices travel in to their owners
      and back (see :func:`check_dtype`); ``None``: their own float32. The
      functions still see float32 stacks. Off a mesh nothing travels and it is
      ignored.
    keeps: ``None``, or per group, per stack: ``None`` (always computed) or a
      boolean scalar; where it is false the stack comes back zero and its
      function is not run (``lax.cond``: per stack on one device, per matrix
      on its owner on a mesh). Stacks without one are computed as without
      ``keeps``.

  Returns:
    Per group, the results stack by stack, each in its input's layout.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> from optax_lmo._src import exchange
    >>> polar = ol.norms.Spectral().whole_lmo_matrices
    >>> [[u]] = exchange.lmo_stacks([polar], [[jnp.ones((1, 4, 8))]])
    >>> u.shape
    (1, 4, 8)
  """
  keeps = keeps or [[None] * len(ms) for ms in groups]
  if mesh is None:
    return _batched(fns, groups, keeps)
  bits = [jnp.asarray(k).astype(bool).reshape(()) for ks in keeps for k in ks if k is not None]
  where = iter(range(len(bits)))  # each stack's index in the replicated vector of keep bits
  slots = [[None if k is None else next(where) for k in ks] for ks in keeps]
  extra = (jnp.stack(bits),) if bits else ()
  flat = [m for ms in groups for m in ms]
  starts = np.cumsum([0] + [len(ms) for ms in groups]).tolist()
  layouts = [_layout(m, mesh, 3) for m in flat]
  if any(layout is None for layout in layouts):
    res = _partitioned(fns, groups, mesh, exchange_dtype, slots, extra)
  else:
    metas = [
        [(m.shape, layouts[starts[j] + p]) for p, m in enumerate(ms)]
        for j, ms in enumerate(groups)
    ]
    specs = tuple(P(*layout) for layout in layouts)
    free = frozenset(
        a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t != AxisType.Manual
    )
    res = jax.shard_map(
        _local_fn(fns, metas, mesh, exchange_dtype, slots),
        mesh=mesh,
        in_specs=specs + (P(),) * len(extra),
        out_specs=specs,
        axis_names=free,
        check_vma=False,
    )(*flat, *extra)
  return [list(res[starts[j] : starts[j + 1]]) for j in range(len(groups))]


def _concat(ms: Sequence[jax.Array]) -> jax.Array:
  return jnp.concatenate(ms) if len(ms) > 1 else ms[0]


def _split(stack: jax.Array, like: Sequence[jax.Array]) -> list[jax.Array]:
  bounds = np.cumsum([m.shape[0] for m in like])[:-1].tolist()
  return list(jnp.split(stack, bounds)) if bounds else [stack]


def _batched(fns, groups, keeps) -> list[list[jax.Array]]:
  """The single-device program: each group's stacks without a keep bit in one call, the others
  each under its own ``lax.cond``."""
  out = []
  for fn, ms, ks in zip(fns, groups, keeps, strict=True):
    always = [m for m, k in zip(ms, ks, strict=True) if k is None]
    done = iter(_split(fn(_concat(always)), always) if always else ())
    cond = lambda m, k, fn=fn: jax.lax.cond(k, fn, jnp.zeros_like, m)
    out.append([next(done) if k is None else cond(m, k) for m, k in zip(ms, ks, strict=True)])
  return out


def _local_fn(fns: Sequence[StackFn], metas, mesh, wire: Any = None, slots=None) -> Callable:
  """The per-device program (inside ``shard_map`` or a custom partitioning) for all groups.

  With ``slots`` (per group, per stack: ``None`` or the index of its keep bit)
  holding any index, the program takes the vector of keep bits last.
  """
  owned = owners_lib.assign(metas, mesh)
  sizes = dict(zip(owned.axes, owned.sizes, strict=True))
  starts = np.cumsum([0] + [len(m) for m in metas]).tolist()
  slots = slots or [[None] * len(m) for m in metas]
  sampled = any(k is not None for ks in slots for k in ks)

  def local(*blocks):
    bits = blocks[-1] if sampled else None
    blocks = blocks[:-1] if sampled else blocks
    res = list(blocks)
    for unit in owned.units:
      base = starts[unit.group]
      mine = [blocks[base + p] for p in unit.members]
      ks = [slots[unit.group][p] for p in unit.members]
      keep = None
      if any(k is not None for k in ks):  # one bit per matrix of the unit's local stack
        keep = _concat([
            jnp.full(len(m), True) if k is None else jnp.broadcast_to(bits[k], (len(m),))
            for m, k in zip(mine, ks, strict=True)
        ])
      y = _own(_concat(mine), unit, sizes, fns[unit.group], wire, keep)
      for p, piece in zip(unit.members, _split(y, mine), strict=True):
        res[base + p] = piece
    return tuple(res)

  return local


def _partitioned(fns, groups, mesh, wire: Any = None, slots=None, extra=()) -> tuple:
  """Auto axes: the layouts are only known to XLA's partitioner, so ask it.

  A ``custom_partitioning`` op whose partition rule reads the layout XLA gave
  each stack, plans the owners from it and lowers to the same per-device
  program as the explicit path; results keep the layout of their inputs. Its
  reference implementation (used for shapes, and where nothing is partitioned)
  is the single-device program under ``jax.jit``, which keeps the functions'
  constants (coefficient tables) inside, as ``custom_partitioning`` requires.
  ``extra`` is ``()`` or the vector of keep bits (``slots`` index it), an
  operand kept replicated.
  """
  n = sum(len(ms) for ms in groups)
  bounds = np.cumsum([0] + [len(ms) for ms in groups]).tolist()
  slots = slots or [[None] * len(ms) for ms in groups]

  def regroup(pieces):
    return [pieces[bounds[j] : bounds[j + 1]] for j in range(len(groups))]

  @jax.jit
  def single_device(*args):
    bits = args[n] if extra else None
    keeps = [[None if k is None else bits[k] for k in ks] for ks in slots]
    return tuple(u for us in _batched(fns, regroup(args[:n]), keeps) for u in us)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    layouts = [
        owners_lib.fit_layout(owners_lib.spec_layout(a.sharding.spec, 3), a.shape, mesh)
        for a in arg_shapes[:n]
    ]
    metas = [[(arg_shapes[k].shape, layouts[k]) for k in ks] for ks in regroup(range(n))]
    shardings = tuple(NamedSharding(mesh, P(*layout)) for layout in layouts)
    args = shardings + (NamedSharding(mesh, P()),) * len(extra)
    return mesh, _local_fn(fns, metas, mesh, wire, slots), shardings, args

  def infer(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    return tuple(a.sharding for a in arg_shapes[:n])

  matrices = ", ".join(f"b{k} i{k} o{k}" for k in range(n))
  operands = matrices + ", k" * len(extra)
  op = custom_partitioning(lambda *args: single_device(*args))
  op.def_partition(
      partition, infer_sharding_from_operands=infer, sharding_rule=f"{operands} -> {matrices}",
      need_replication_factors=("k",) if extra else (),
  )
  return op(*(m for ms in groups for m in ms), *extra)


__all__ = ["check_dtype", "find_mesh", "lmo_stacks"]
