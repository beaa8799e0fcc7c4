"""NorMuon's row normalization: each output neuron's step divided by its running RMS.

:func:`scale_by_row_rms` goes between the LMO and the radius of any optimizer here
(``row_norm=True`` in :func:`~optax_lmo.scion`, :func:`~optax_lmo.muon`, ...);
:func:`~optax_lmo.contrib.normuon` is :func:`~optax_lmo.muon` with it (the paper's optimizer).
In the Flax layout ``W: (d_in, d_out)`` a neuron (a row of PyTorch's ``(out, in)``)
is a column.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import checks, numerics
from optax_lmo._src import spec as spec_lib
from optax_lmo._src import transforms as transforms_lib
from optax_lmo._src.norms import Norm, Spectral
from optax_lmo._src.spec import MatrixSpec


class ScaleByRowRmsState(NamedTuple):
  """State of :func:`scale_by_row_rms`: one second moment per neuron of each spectral leaf."""

  nu: Any  # per leaf: float32 (matrices of the view, d_out); a float32 0 if not spectral


def _rows(norm: Norm, x: jax.Array, spec, path: str):
  """The leaf as float32 ``(V, blocks, d_in, d_out)`` matrices of its view, and the stack."""
  st = norm.to_stack(x, spec, path=path)
  m = st.matrices
  return m.reshape((-1, st.blocks) + m.shape[1:]), st


def _rows_shape(norm: Norm, shape, spec, path: str) -> tuple[int, int]:
  """``(V, d_out)``: the shape of a leaf's second moment, without computing anything."""
  out = jax.eval_shape(lambda x: _rows(norm, x, spec, path)[0],
                       jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
  return out.shape[0], out.shape[-1]


def _frobenius(m: jax.Array) -> jax.Array:
  """``||m||_F`` per leading index, shaped ``(V, 1, 1, 1)``, without underflow."""
  return numerics.unit(m.reshape(m.shape[0], -1), -1)[1].reshape(-1, 1, 1, 1)


def scale_by_row_rms(
    beta2: chex.Numeric = 0.95,
    eps: chex.Numeric = 1e-8,
    *,
    norms: Norm | Any = None,
    specs: MatrixSpec | Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon's row normalization of an LMO direction ``O``, keeping its Frobenius norm.

  Per matrix of each spectral leaf's view (per block with ``out_blocks``/``in_blocks``,
  e.g. a split qkv kernel), with ``O`` of shape ``d_in x d_out`` and a state ``v`` of
  one number per output neuron ``j`` (starting at 0, no bias correction):

  .. math::
    n_j = \tfrac{1}{d_{in}} \textstyle\sum_i O_{ij}^2, \qquad
    v \leftarrow \beta_2 v + (1 - \beta_2)\, n, \qquad
    O'_{ij} = \frac{O_{ij}}{\sqrt{v_j} + \epsilon}, \qquad
    O'' = O' \, \frac{\|O\|_F}{\|O'\|_F}

  Neurons whose direction has been large lately take smaller steps, the others larger
  ones; the step's Frobenius norm, and so the radius's meaning, stays the LMO's. Leaves
  whose entry is not a :class:`~optax_lmo.norms.Spectral` norm (nor
  ``SpectralConv``) pass through unchanged. A zero direction stays zero.

  Args:
    beta2: decay of the running second moment, in ``[0, 1)`` (can be injected).
    eps: added to ``sqrt(v)``, ``>= 0`` (the paper's 1e-8).
    norms: each leaf's norm, or one for every leaf (``None``: ``Spectral()`` everywhere),
      in the forms :func:`~optax_lmo.scale_by_norm` takes; the spectral ones are normalized.
    specs: each leaf's :class:`~optax_lmo.MatrixSpec` (``None``: the norm's default view).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`ScaleByRowRmsState`
    (float32 whatever the parameters' dtype).

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> tx = optax.chain(ol.orthogonalize(method="svd", scaled=False),
    ...                  ol.contrib.scale_by_row_rms())
    >>> g = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # (d_in, d_out) = (3, 2)
    >>> u, state = tx.update(g, tx.init(g))
    >>> [round(float(v), 4) for v in state[1].nu[0]]  # 0.05 x each column's mean square
    [0.0167, 0.0167]
    >>> round(float(jnp.linalg.norm(u)), 4)  # the orthogonalized step's Frobenius norm
    1.4142

  References:
    Li et al., NorMuon: Making Muon more efficient and scalable, arXiv:2510.05491, 2025.
  """
  checks.hyperparams("scale_by_row_rms", beta2=beta2, eps=eps)
  norms = Spectral() if norms is None else norms

  def entries(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    norm_l = transforms_lib.per_leaf(norms, tree, kind=Norm, what="norm")
    spec_l = transforms_lib.per_leaf(specs, tree, kind=MatrixSpec, what="MatrixSpec")
    return [(spec_lib.path_str(p), x, n if isinstance(n, Spectral) else None, s)
            for (p, x), n, s in zip(flat, norm_l, spec_l, strict=True)]

  def init_fn(params):
    nu = [jnp.zeros(() if n is None else _rows_shape(n, jnp.shape(x), s, p), jnp.float32)
          for p, x, n, s in entries(params)]
    return ScaleByRowRmsState(nu=jax.tree.structure(params).unflatten(nu))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    b2 = jnp.asarray(beta2, jnp.float32)
    out, new_nu = [], []
    for (p, u, n, s), nu in zip(entries(updates), jax.tree.leaves(state.nu), strict=True):
      if n is None:
        out.append(u)
        new_nu.append(nu)
        continue
      o, st = _rows(n, u, s, p)
      nu = b2 * nu + (1 - b2) * jnp.mean(o * o, axis=(1, 2))  # (V, d_out)
      o2 = o / (jnp.sqrt(nu)[:, None, None, :] + jnp.asarray(eps, jnp.float32))
      before, after = _frobenius(o), _frobenius(o2)
      o2 = o2 * (before / jnp.where(after > 0, after, 1.0))
      out.append(st.unstack(o2.reshape(st.matrices.shape)).astype(u.dtype))
      new_nu.append(nu)
    return (jax.tree.structure(updates).unflatten(out),
            ScaleByRowRmsState(jax.tree.structure(state.nu).unflatten(new_nu)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["ScaleByRowRmsState", "scale_by_row_rms"]
