"""Geometry-consistent initialization: each leaf drawn from its group's norm, inside its ball."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import spec as spec_lib

SCALES = ("rms", "radius")


def init_params(rules, params, key: jax.Array, *, scale: str = "rms", keep_gains: bool = True):
  r"""Re-initializes every leaf with its group's norm initializer, inside its ball.

  Each matrix of a leaf (per its group's view) is drawn with its norm's shape
  (semi-orthogonal for Spectral, normalized rows for ColNorm, normalized columns
  for RowNorm, random signs for Sign; zeros for BiasRMS) at the norm

  .. math::
    \|W\| = \min(\rho,\ u), \qquad
    u:\ \text{the norm at which } W \text{ keeps the RMS of its input}

  with ``scale="rms"`` (the default), whatever the radius ``rho``: a dense or
  convolution kernel, an output head included, maps inputs of RMS 1 to outputs
  of RMS 1 on average (``||W||_F = sqrt(d_out)`` for its matrix view, as Flax's
  default initializers do in expectation), and an embedding row has RMS 1
  (``u = 1`` for ColNorm). When the token embedding is tied to the output head
  (a leaf of ``role="tied"``), its rows start at the head's scale,
  ``1/sqrt(d)``, and the other embedding tables (a learned position table added
  to it, as in GPT-2) start at that same row RMS: tables that are summed start
  at one scale, so neither drowns the other. So a model starts where it would
  from Flax's init (first loss near ``ln V`` plus half a nat for a head on
  normalized features) at any radius. The constraint only asks ``||W|| <= rho``; constrained Scion
  then moves each leaf toward its radius at the rate of the learning rate.

  ``scale="radius"`` draws every matrix on its ball's boundary, ``||W|| == rho``
  (the point constrained Scion keeps it at; the reference code's init). The
  first logits then grow with the output radius: about 7 nats at radius 20 for
  a character model, hundreds at 3000.

  Args:
    rules: :class:`~optax_lmo.Rules` (e.g. from :func:`~optax_lmo.infer_rules`), a
      rule list or a callable; ``None`` uses :func:`~optax_lmo.default_rules`.
    params: the parameter pytree (Flax linen params, an NNX ``nnx.State``, ...).
    key: a PRNG key; each leaf gets its own fold of it.
    scale: ``"rms"`` (the norm ``min(rho, u)`` above) or ``"radius"`` (``rho``).
    keep_gains: leave leaves whose group has ``role="gain"`` (normalization
      scales, which multiply activations) unchanged instead of zeroing them.

  Returns:
    A pytree like ``params``; leaves whose group has ``norm=None`` (or that no
    rule matches in a non-strict rule set) are returned unchanged.

  Examples:
    >>> import jax, jax.numpy as jnp, optax_lmo as ol
    >>> params = {"w": jnp.zeros((16, 32)), "b": jnp.ones((32,))}
    >>> rules = [("w", ol.Group(ol.norms.Spectral(), radius=3.0)),
    ...          ("b", ol.Group(ol.norms.BiasRMS()))]
    >>> new = ol.init_params(rules, params, jax.random.key(0))
    >>> round(float(ol.norms.Spectral().norm(new["w"])), 4), float(new["b"].sum())
    (1.0, 0.0)
    >>> new = ol.init_params(rules, params, jax.random.key(0), scale="radius")
    >>> round(float(ol.norms.Spectral().norm(new["w"])), 4)
    3.0
  """
  if scale not in SCALES:
    raise ValueError(f"init_params: scale must be one of {SCALES}, got {scale!r}.")
  rules = rules_lib.as_rules(rules)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, max(len(flat), 1))
  out, tables, tied_rms = [], [], None
  for (path, leaf), k in zip(flat, keys, strict=False):
    p = spec_lib.path_str(path)
    g = rules.group_for(p, leaf)
    if g is None or g.norm is None or (keep_gains and g.role == "gain"):
      out.append(leaf)
      continue
    unit = g.norm.init(k, tuple(np.shape(leaf)), spec=g.spec)  # norm 1 per matrix
    norm = g.radius if scale == "radius" else jnp.minimum(g.radius, rms_norm(g, unit))
    out.append((norm * unit).astype(leaf.dtype))
    if scale == "rms" and g.role == "tied" and tied_rms is None:
      tied_rms = jnp.sqrt(jnp.mean(jnp.square(norm * unit)))  # its rows' RMS (Sign: all equal)
    if scale == "rms" and g.role == "embedding" and isinstance(g.norm, norms_lib.ColNorm):
      tables.append((len(out) - 1, g, unit, leaf.dtype))
  for i, g, unit, dtype in tables if tied_rms is not None else ():  # the tied table's scale
    out[i] = (jnp.minimum(g.radius, tied_rms) * unit).astype(dtype)
  return treedef.unflatten(out)


def rms_norm(group, unit: jax.Array) -> jax.Array:
  """``u`` of :func:`init_params` for a leaf ``unit`` of norm 1 in ``group``'s norm.

  ``sqrt(d_out) / ||W||_F`` per matrix of the view (averaged over the leaf's
  matrices): the factor that gives ``unit`` an average RMS gain of 1. ColNorm
  (embedding rows, read by one-hot inputs) and BiasRMS: 1; Frobenius (the whole
  leaf): ``sqrt`` of its last axis.
  """
  if isinstance(group.norm, (norms_lib.ColNorm, norms_lib.BiasRMS)):
    return jnp.float32(1.0)
  if isinstance(group.norm, norms_lib.Frobenius):  # one matrix of the whole leaf; d_out: last axis
    return jnp.float32(np.sqrt(unit.shape[-1]) if unit.ndim >= 2 else 1.0)
  st = group.norm.to_stack(unit, group.spec)
  sq = st.per_view(jnp.sum(jnp.square(st.matrices), axis=(-2, -1))).sum(-1)  # ||.||_F^2 per view
  return jnp.sqrt(st.matrices.shape[-1] / jnp.mean(sq))
