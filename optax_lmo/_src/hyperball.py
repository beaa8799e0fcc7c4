"""The hyperball (MuonH): each matrix held on the Frobenius sphere of its initial norm.

:func:`scale_by_hyperball` is the last transform of a chain: it takes a direction
(a polar factor, an Adam direction, ...) and returns the update that moves the
parameters by ``lr`` times their own norm along it, then back onto their sphere.
:func:`~optax_lmo.contrib.hyperball` chains it after the spectral LMO (MuonH) and
after Adam's direction on the output head (AdamH).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import numerics
from optax_lmo._src import spec as spec_lib
from optax_lmo._src import transforms as transforms_lib
from optax_lmo._src.norms import Frobenius
from optax_lmo._src.spec import MatrixSpec


class ScaleByHyperballState(NamedTuple):
  """State of :func:`scale_by_hyperball`."""

  count: jax.Array  # int32 (): steps taken, for a learning-rate schedule
  radius: Any  # per leaf: float32 (matrices of the view,): each matrix's Frobenius norm at init


def _matrices(x: jax.Array, spec, path: str):
  """The leaf as float32 ``(N, d_in * d_out)`` rows, one per matrix of its view, and the stack."""
  st = Frobenius().to_stack(x, spec, path=path)
  return st.matrices.reshape(st.matrices.shape[0], -1), st


def scale_by_hyperball(
    learning_rate: optax.ScalarOrSchedule,
    *,
    specs: MatrixSpec | Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""A step of ``lr`` times ``||W||_F`` along a direction, then back onto ``W``'s sphere.

  For each matrix ``W`` of each leaf's view (the whole leaf without a spec), with ``r``
  its Frobenius norm at ``init`` (kept in the state) and ``u`` the incoming direction:

  .. math::
    W' = W - \gamma_t\, r\, \frac{u}{\|u\|_F}, \qquad
    W_{new} = r\, \frac{W'}{\|W'\|_F}

  and the update is ``W_new - W``. Every matrix stays on the sphere of radius ``r``
  (up to the rounding of ``W + update``, undone at the next step, as the radius is
  the stored one). The step is not linear in ``gamma``: chain this transform last, with
  the learning rate given here (not ``optax.scale_by_learning_rate``). A zero direction
  or a zero learning rate gives a zero update; a matrix that starts at zero stays at zero.

  Args:
    learning_rate: ``gamma``, the step relative to ``||W||_F``: a number or an optax
      schedule (can be injected).
    specs: each leaf's :class:`~optax_lmo.MatrixSpec`, or one for every leaf; ``None``
      (or a ``None`` entry): the whole leaf is one matrix.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`ScaleByHyperballState`;
    ``update`` needs the parameters.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from optax_lmo._src.hyperball import scale_by_hyperball
    >>> w = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ||w||_F = 5
    >>> tx = scale_by_hyperball(0.1)
    >>> u, _ = tx.update(jnp.array([[0.0, 1.0], [0.0, 0.0]]), tx.init(w), w)
    >>> round(float(jnp.linalg.norm(optax.apply_updates(w, u))), 4)
    5.0

  References:
    MuonH and AdamH (the hyperball): weights and updates at a fixed Frobenius norm,
    arXiv:2606.16899, 2026; the JAX reference is Levanter's ``optim/muonh.py``.
  """

  def entries(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    spec_l = transforms_lib.per_leaf(specs, tree, kind=MatrixSpec, what="MatrixSpec")
    return [(spec_lib.path_str(p), x, s) for (p, x), s in zip(flat, spec_l, strict=True)]

  def init_fn(params):
    radius = [numerics.unit(_matrices(x, s, p)[0], -1)[1][:, 0] for p, x, s in entries(params)]
    return ScaleByHyperballState(jnp.zeros([], jnp.int32),
                                 jax.tree.structure(params).unflatten(radius))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("scale_by_hyperball needs the parameters: call tx.update(grads, state,"
                       " params).")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)
    p_l = jax.tree.structure(updates).flatten_up_to(params)
    out = []
    for (p, u, s), w, r in zip(entries(updates), p_l, jax.tree.leaves(state.radius),
                               strict=True):
      w_m, st = _matrices(w, s, p)
      u_hat, u_norm = numerics.unit(_matrices(u, s, p)[0], -1)
      moved = w_m - lr * r[:, None] * u_hat
      new = r[:, None] * numerics.unit(moved, -1)[0]
      delta = jnp.where((u_norm > 0) & (lr != 0), new - w_m, 0.0)  # no step: no move, exactly
      out.append(st.unstack(delta.reshape(st.matrices.shape)).astype(u.dtype))
    return (jax.tree.structure(updates).unflatten(out),
            ScaleByHyperballState(optax.safe_increment(state.count), state.radius))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["ScaleByHyperballState", "scale_by_hyperball"]
