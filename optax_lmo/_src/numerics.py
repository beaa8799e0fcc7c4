"""Vector and matrix norms that neither underflow nor overflow in float32.

Squaring an entry near 1e-20 falls below float32's smallest normal number, so
``||x||`` computed directly is 0 there (and ``inf`` near 1e20), which breaks the
scale invariance every LMO must have. Every norm of the library divides by the
max-abs entry first and multiplies it back; only an exactly zero vector is
guarded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Axis = int | tuple[int, ...]


def peak_scaled(x: jax.Array, axis: Axis) -> tuple[jax.Array, jax.Array]:
  """``x`` divided by its max-abs entry along ``axis``, and that entry.

  Args:
    x: a float array.
    axis: the axis (or axes) the max is taken over.

  Returns:
    ``(x / peak, peak)`` with ``peak`` kept as size-1 axes; a zero slice stays 0.
  """
  peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  return x / jnp.where(peak > 0, peak, 1.0), peak


def unit(x: jax.Array, axis: Axis) -> tuple[jax.Array, jax.Array]:
  """``(x / ||x||_2, ||x||_2)`` along ``axis``, scale invariant from 1e-20 to 1e20.

  Args:
    x: a float array.
    axis: the axis (or axes) of the vectors.

  Returns:
    The unit vectors (a zero vector maps to zeros) and their norms, the latter
    with ``axis`` kept as size-1 axes.
  """
  y, peak = peak_scaled(x, axis)
  n = jnp.sqrt(jnp.sum(y * y, axis=axis, keepdims=True))
  return y / jnp.where(n > 0, n, 1.0), n * peak


def singular_values(m_BxIxO: jax.Array) -> jax.Array:
  """Singular values of each matrix of a ``(B, I, O)`` stack, by SVD.

  Args:
    m_BxIxO: a float32 stack.

  Returns:
    A ``(B, min(I, O))`` array, descending per matrix.
  """
  y, peak = peak_scaled(m_BxIxO, (-2, -1))
  return jnp.linalg.svd(y, compute_uv=False) * peak[:, :, 0]
