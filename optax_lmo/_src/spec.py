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


@dataclasses.dataclass(frozen=True)
class MatrixSpec:
  """Which axes of a leaf are fan-in and which are fan-out.

  Axes may be negative. Axes named in neither tuple are batch axes.

  Examples:
    >>> import optax_lmo as ol
    >>> ol.MatrixSpec()  # a Flax Dense kernel (d_in, d_out)
    MatrixSpec(fan_in=(0,), fan_out=(1,))
    >>> ol.MatrixSpec(fan_in=(1,), fan_out=(2,))  # stacked layers (L, d_in, d_out)
    MatrixSpec(fan_in=(1,), fan_out=(2,))
  """

  fan_in: tuple[int, ...] = (0,)
  fan_out: tuple[int, ...] = (1,)

  def __post_init__(self):
    object.__setattr__(self, "fan_in", tuple(int(a) for a in _as_tuple(self.fan_in)))
    object.__setattr__(self, "fan_out", tuple(int(a) for a in _as_tuple(self.fan_out)))

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
    return MatrixSpec(tuple(axes[:n_in]), tuple(axes[n_in:]))

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
    """``(batch, d_in, d_out)`` sizes of the matrix view of ``shape``."""
    r = self.resolve(len(shape))
    d_in = math.prod(shape[a] for a in r.fan_in)
    d_out = math.prod(shape[a] for a in r.fan_out)
    batch = math.prod(shape[a] for a in self.batch_axes(len(shape)))
    return batch, d_in, d_out

  def describe(self, shape: Sequence[int]) -> str:
    """``"<batch>x<d_in>x<d_out>"`` for a leaf of ``shape`` (``"<d_in>x<d_out>"`` without batch)."""
    b, i, o = self.dims(shape)
    return f"{b}x{i}x{o}" if self.batch_axes(len(shape)) else f"{i}x{o}"


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
  return merge_axes(x, spec.groups(x.ndim))


def from_matrices(m_BxIxO: jax.Array, shape: Sequence[int], spec: MatrixSpec) -> jax.Array:
  """Inverse of :func:`to_matrices` for a leaf of shape ``shape``.

  Args:
    m_BxIxO: a ``(batch, d_in, d_out)`` stack.
    shape: the leaf's shape.
    spec: the leaf's matrix view.

  Returns:
    An array of ``shape``.
  """
  return split_axes(m_BxIxO, shape, spec.groups(len(shape)))


def batch_shape(shape: Sequence[int], spec: MatrixSpec) -> tuple[int, ...]:
  """Shape of the batch axes (what a per-matrix quantity such as a norm has).

  Args:
    shape: the leaf's shape.
    spec: its view.

  Returns:
    The sizes of the batch axes, in leaf order.
  """
  return tuple(shape[a] for a in spec.batch_axes(len(shape)))


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
