"""Matrix views of parameter leaves: which axes are fan-in, fan-out and batch.

A leaf is seen as a batch of matrices ``(batch, fan_in, fan_out)`` in Flax
layout (``y = x @ W``). Every axis that is neither fan-in nor fan-out is a
batch axis (stacked layers, experts, heads); norms and LMOs act per matrix and
never across a batch axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True, repr=False)
class MatrixSpec:
  """Which axes of a leaf are fan-in and which are fan-out, and into how many blocks each is cut.

  Axes may be negative. Axes named in neither tuple are batch axes. With
  ``out_blocks=k`` the (single) fan-out axis is cut into ``k`` equal,
  contiguous blocks, each its own matrix: a fused QKV kernel ``(d, 3d)`` as q, k
  and v (``out_blocks=3``), a head-merged projection ``(d, h * d_head)`` as its
  ``h`` heads, or pairs of heads (``out_blocks=h // 2``). ``in_blocks`` cuts the
  fan-in axis the same way (an attention output projection ``(h * d_head, d)``
  per head). The blocks are a batch axis of the view, just before the cut axis.

  Examples:
    >>> import optax_lmo as ol
    >>> ol.MatrixSpec()  # a Flax Dense kernel (d_in, d_out)
    MatrixSpec(fan_in=(0,), fan_out=(1,))
    >>> ol.MatrixSpec(fan_in=(1,), fan_out=(2,))  # stacked layers (L, d_in, d_out)
    MatrixSpec(fan_in=(1,), fan_out=(2,))
    >>> ol.MatrixSpec(out_blocks=3).describe((64, 192))  # fused QKV: q, k and v
    '3x64x64 (fan-out in 3 blocks)'
  """

  fan_in: tuple[int, ...] = (0,)
  fan_out: tuple[int, ...] = (1,)
  in_blocks: int = 1
  out_blocks: int = 1

  def __post_init__(self):
    object.__setattr__(self, "fan_in", tuple(int(a) for a in _as_tuple(self.fan_in)))
    object.__setattr__(self, "fan_out", tuple(int(a) for a in _as_tuple(self.fan_out)))
    for name in ("in_blocks", "out_blocks"):
      k = getattr(self, name)
      if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"MatrixSpec {name} must be an int >= 1, got {k!r}.")
    for name, axes in (("in_blocks", self.fan_in), ("out_blocks", self.fan_out)):
      if getattr(self, name) > 1 and len(axes) != 1:
        side = "fan-in" if name == "in_blocks" else "fan-out"
        raise ValueError(f"MatrixSpec {name}={getattr(self, name)} cuts one {side} axis into"
                         f" blocks; got {side} axes {axes}. Merge them first (reshape the"
                         " leaf) or name one axis.")

  def __repr__(self):
    blocks = "".join(f", {n}={getattr(self, n)}" for n in ("in_blocks", "out_blocks")
                     if getattr(self, n) > 1)
    return f"MatrixSpec(fan_in={self.fan_in}, fan_out={self.fan_out}{blocks})"

  def cuts(self) -> list[tuple[int, int, str]]:
    """``(axis, blocks, side)`` of each cut axis of this (resolved) spec, fan-in first."""
    out = [(self.fan_in[0], self.in_blocks, "fan-in")] if self.in_blocks > 1 else []
    return out + ([(self.fan_out[0], self.out_blocks, "fan-out")] if self.out_blocks > 1 else [])

  @property
  def blocked(self) -> bool:
    """Whether a fan-in or fan-out axis is cut into blocks."""
    return self.in_blocks > 1 or self.out_blocks > 1

  def resolve(self, ndim: int, path: str = "") -> MatrixSpec:
    """Returns this spec with non-negative axes, checked against ``ndim``."""
    where = f"{path}: " if path else ""
    axes = []
    for a in self.fan_in + self.fan_out:
      if not -ndim <= a < ndim:
        raise ValueError(f"{where}axis {a} of {self} is out of range for ndim {ndim}.")
      axes.append(a % ndim)
    if len(set(axes)) != len(axes):
      raise ValueError(f"{where}{self} names an axis twice.")
    n_in = len(self.fan_in)
    return MatrixSpec(tuple(axes[:n_in]), tuple(axes[n_in:]), self.in_blocks, self.out_blocks)

  def unblocked(self, shape: Sequence[int], path: str = "") -> tuple[tuple[int, ...], MatrixSpec]:
    """The leaf shape with each cut axis split into ``(blocks, size / blocks)``, and its view.

    In that view the blocks are a batch axis; without blocks, ``shape`` and
    this spec (resolved) come back unchanged.

    Raises:
      ValueError: a cut axis that the blocks do not divide (naming ``path``).
    """
    r, shape = self.resolve(len(shape), path), tuple(int(n) for n in shape)
    fan_in, fan_out = list(r.fan_in), list(r.fan_out)
    for a, k, side in sorted(r.cuts(), reverse=True):  # the higher axis first: lower ones stay put
      if shape[a] % k:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}{self}: the {side} axis {a} (size {shape[a]}) does not cut"
                         f" into {k} equal blocks.")
      shape = shape[:a] + (k, shape[a] // k) + shape[a + 1:]
      fan_in = [x + 1 if x >= a else x for x in fan_in]
      fan_out = [x + 1 if x >= a else x for x in fan_out]
    return shape, MatrixSpec(tuple(fan_in), tuple(fan_out))

  def batch_axes(self, ndim: int) -> tuple[int, ...]:
    """The axes of a leaf with ``ndim`` axes that are neither fan-in nor fan-out, in order."""
    r = self.resolve(ndim)
    used = set(r.fan_in + r.fan_out)
    return tuple(a for a in range(ndim) if a not in used)

  def groups(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(batch axes, fan-in axes, fan-out axes)`` of a leaf with ``ndim`` axes."""
    r = self.resolve(ndim)
    return self.batch_axes(ndim), r.fan_in, r.fan_out

  def dims(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(batch, d_in, d_out)`` sizes of the matrix view of ``shape`` (blocks in the batch)."""
    shape, r = self.unblocked(shape)
    d_in = math.prod(shape[a] for a in r.fan_in)
    d_out = math.prod(shape[a] for a in r.fan_out)
    batch = math.prod(shape[a] for a in r.batch_axes(len(shape)))
    return batch, d_in, d_out

  def describe(self, shape: Sequence[int]) -> str:
    """``"<batch>x<d_in>x<d_out>"`` for a leaf of ``shape`` (``"<d_in>x<d_out>"`` without batch).

    A cut axis adds what it was cut into: ``"3x64x64 (fan-out in 3 blocks)"``.
    """
    b, i, o = self.dims(shape)
    plain, r = self.unblocked(shape)
    out = f"{b}x{i}x{o}" if r.batch_axes(len(plain)) else f"{i}x{o}"
    cuts = [f"{side} in {k} blocks" for side, k in (("fan-in", self.in_blocks),
                                                      ("fan-out", self.out_blocks)) if k > 1]
    return out + (f" ({', '.join(cuts)})" if cuts else "")


class Stack(NamedTuple):
  """A leaf as the float32 matrices a norm acts on, and the way back (``Norm.to_stack``).

  The norm of one matrix of the leaf's view is the largest norm of its
  ``blocks`` matrices in the stack divided by ``weight``; so its LMO is
  ``weight`` times the stack's LMO of each block, and its dual norm ``weight``
  times the sum of the blocks' dual norms.
  """

  matrices: jax.Array  # float32 (n, d_in, d_out); n = prod(batch_shape) * blocks
  unstack: Callable[[jax.Array], jax.Array]  # a stack shaped like `matrices` -> the leaf's shape
  batch_shape: tuple[int, ...]  # the view's batch axes: the shape of a per-matrix norm
  blocks: int = 1  # consecutive stack matrices that make one matrix of the view (conv taps)
  weight: float = 1.0  # the view's norm is the blocks' largest stack norm / weight

  def per_view(self, values_N: jax.Array) -> jax.Array:
    """Per-stack-matrix values ``(n,)`` as ``(*batch_shape, blocks)``, to reduce over blocks."""
    return values_N.reshape(*self.batch_shape, self.blocks)


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def default_spec(ndim: int, path: str = "", *, what: str = "this norm") -> MatrixSpec:
  """The spec used when none is given: Flax layout for 2-D, an error for ndim >= 3.

  Args:
    ndim: the leaf's number of axes.
    path: the leaf path, for the error message.
    what: the norm asking, for the error message.

  Returns:
    ``MatrixSpec((0,), (1,))``; raises ``ValueError`` for any other ``ndim``.
  """
  if ndim == 2:
    return MatrixSpec((0,), (1,))
  where = f"{path}: " if path else ""
  if ndim >= 3:
    raise ValueError(
        f"{where}ndim {ndim} needs a MatrixSpec for {what} (which axes are fan-in, which"
        " fan-out; the rest are batch axes), e.g. MatrixSpec(fan_in=(1,), fan_out=(2,))"
        " for stacked layers (L, d_in, d_out)."
    )
  raise ValueError(f"{where}{what} needs a matrix (ndim >= 2), got ndim {ndim}.")


def resolve_spec(
    shape: Sequence[int], spec: MatrixSpec | None, path: str = "", *, what: str = "this norm"
) -> MatrixSpec:
  """``spec`` resolved against ``shape``, or the default for ``shape``.

  Args:
    shape: the leaf's shape.
    spec: its view, or ``None``.
    path: the leaf path, for error messages.
    what: the caller, for error messages.

  Returns:
    A :class:`MatrixSpec` with non-negative axes.
  """
  if spec is None:
    return default_spec(len(shape), path, what=what)
  return spec.resolve(len(shape), path)


def explicit_spec(x: jax.Array) -> tuple | None:
  """The ``PartitionSpec`` entries of ``x``'s type on a mesh with ``Explicit`` axes, else ``None``.

  Args:
    x: an array or tracer.

  Returns:
    One entry per axis of ``x`` (``None``: unsharded), or ``None`` when the type
    carries no explicit sharding (then XLA lays the result out).
  """
  sharding = jax.typeof(x).sharding
  if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
    return None
  if AxisType.Explicit not in sharding.mesh.axis_types:
    return None
  return tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))


def _axes(entry) -> tuple:
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _entry(axes: tuple):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def merge_axes(x: jax.Array, groups: Sequence[Sequence[int]]) -> jax.Array:
  """Brings the axes of each group together, in order, and merges each group into one axis.

  On an ``Explicit`` mesh a merged axis is sharded over the mesh axes of its
  members, in order.

  Args:
    x: an array.
    groups: disjoint tuples of axes of ``x`` covering all of them.

  Returns:
    An array with one axis per group, each the product of its group's sizes.
  """
  perm = tuple(a for g in groups for a in g)
  shape = tuple(math.prod(x.shape[a] for a in g) for g in groups)
  spec = explicit_spec(x)
  y = jnp.transpose(x, perm)
  if spec is None:
    return y.reshape(shape)
  out = PartitionSpec(*(_entry(sum((_axes(spec[a]) for a in g), ())) for g in groups))
  return jax.lax.reshape(y, shape, out_sharding=out)


def split_axes(
    y: jax.Array, shape: Sequence[int], groups: Sequence[Sequence[int]], spec: tuple | None = None
) -> jax.Array:
  """Inverse of :func:`merge_axes` for an array of ``shape``.

  Args:
    y: an array shaped like ``merge_axes(x, groups)`` for ``x`` of ``shape``.
    shape: the shape of ``x``.
    groups: the groups given to :func:`merge_axes`.
    spec: :func:`explicit_spec` of ``x``, to return the result in its layout.

  Returns:
    An array of ``shape``.
  """
  perm = tuple(a for g in groups for a in g)
  inverse = tuple(int(k) for k in np.argsort(perm))
  permuted = tuple(shape[a] for a in perm)
  if spec is None:
    return jnp.transpose(y.reshape(permuted), inverse)
  out = PartitionSpec(*(spec[a] for a in perm))
  return jnp.transpose(jax.lax.reshape(y, permuted, out_sharding=out), inverse)


def to_matrices(x: jax.Array, spec: MatrixSpec) -> jax.Array:
  """Views ``x`` as a ``(batch, d_in, d_out)`` stack (a transpose and a reshape).

  Args:
    x: a leaf.
    spec: its matrix view.

  Returns:
    The ``(batch, d_in, d_out)`` stack, batch axes in leaf order.
  """
  shape, view = spec.unblocked(x.shape)
  return merge_axes(reshape(x, shape, cut_layout(x, spec)), view.groups(len(shape)))


def from_matrices(m_BxIxO: jax.Array, shape: Sequence[int], spec: MatrixSpec) -> jax.Array:
  """Inverse of :func:`to_matrices` for a leaf of shape ``shape``.

  Args:
    m_BxIxO: a ``(batch, d_in, d_out)`` stack.
    shape: the leaf's shape.
    spec: the leaf's matrix view.

  Returns:
    An array of ``shape``.
  """
  cut, view = spec.unblocked(shape)
  return split_axes(m_BxIxO, cut, view.groups(len(cut))).reshape(tuple(shape))


def batch_shape(shape: Sequence[int], spec: MatrixSpec) -> tuple[int, ...]:
  """Shape of the batch axes (what a per-matrix quantity such as a norm has).

  Args:
    shape: the leaf's shape.
    spec: its view.

  Returns:
    The sizes of the batch axes, in leaf order.
  """
  shape, view = spec.unblocked(shape)
  return tuple(shape[a] for a in view.batch_axes(len(shape)))


def cut_layout(x: jax.Array, spec: MatrixSpec) -> tuple | None:
  """The :func:`explicit_spec` of ``x`` after :meth:`MatrixSpec.unblocked` cuts its axes.

  A cut axis's mesh axes go to the blocks where they divide the number of
  blocks, else to the part within a block where they divide that, else nowhere.

  Args:
    x: a leaf (array or tracer).
    spec: its view.

  Returns:
    One entry per axis of the cut shape, or ``None`` off an ``Explicit`` mesh.
  """
  layout = explicit_spec(x)
  if layout is None or not spec.blocked:
    return layout
  r, mesh = spec.resolve(x.ndim), jax.typeof(x).sharding.mesh
  out = list(layout)
  for a, k, _ in sorted(r.cuts(), reverse=True):
    entry, size = out[a], x.shape[a]
    devices = math.prod(mesh.shape[m] for m in _axes(entry))
    on_blocks = entry if k % devices == 0 else None
    within = entry if on_blocks is None and (size // k) % devices == 0 else None
    out[a:a + 1] = [on_blocks, within]
  return tuple(out)


def pin_blocks(x_cut: jax.Array, spec: MatrixSpec) -> jax.Array:
  """On a mesh whose axes XLA lays out (``Auto``), keeps each cut axis's blocks whole.

  XLA may split a cut axis over part of a mesh axis, a layout the exchange's
  partitioner cannot name. Here each cut (blocks and their inside) is
  replicated unless the blocks divide evenly over every usable device; other
  axes stay XLA's choice. Off such a mesh, or without blocks: ``x_cut`` as is.

  Args:
    x_cut: the leaf after :meth:`MatrixSpec.unblocked`'s cut (an array or tracer).
    spec: the leaf's view (with its blocks).

  Returns:
    ``x_cut``, constrained where needed.
  """
  if not spec.blocked or not isinstance(x_cut, jax.core.Tracer):
    return x_cut
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AxisType.Auto not in mesh.axis_types:
    return x_cut
  devices = math.prod(n for n, t in zip(mesh.axis_sizes, mesh.axis_types, strict=True)
                      if t == AxisType.Auto)
  r = spec.resolve(x_cut.ndim - (spec.in_blocks > 1) - (spec.out_blocks > 1))
  cuts = r.cuts()
  entries = [PartitionSpec.UNCONSTRAINED] * x_cut.ndim
  pinned = False
  for a, k, _ in cuts:
    if k % devices:
      at = a + sum(b < a for b, _, _ in cuts)  # the blocks' axis in the cut shape
      entries[at] = entries[at + 1] = None
      pinned = True
  return jax.lax.with_sharding_constraint(x_cut, PartitionSpec(*entries)) if pinned else x_cut


def reshape(x: jax.Array, shape: Sequence[int], layout: tuple | None) -> jax.Array:
  """``x`` reshaped to ``shape``, laid out as ``layout`` on an ``Explicit`` mesh."""
  if tuple(x.shape) == tuple(shape):
    return x
  if layout is None:
    return x.reshape(tuple(shape))
  return jax.lax.reshape(x, tuple(shape), out_sharding=PartitionSpec(*layout))


def path_str(path) -> str:
  """``"blocks/0/attn/qkv/kernel"`` from a JAX key path.

  A trailing ``.value`` attribute (how Flax NNX variables flatten) is dropped, so
  a path names the parameter, not its storage.

  Args:
    path: a key path from ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The keys joined by ``/``.
  """
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name in (
      "value",
      "raw_value",
  ):
    path = path[:-1]
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)
