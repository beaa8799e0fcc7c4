"""Geometry-consistent initialization: each leaf drawn from its group's norm, times its radius."""

from __future__ import annotations

import jax
import numpy as np

from optax_lmo._src import rules as rules_lib
from optax_lmo._src import spec as spec_lib


def init_params(rules, params, key: jax.Array, *, keep_gains: bool = True):
  r"""Re-initializes every leaf with its group's norm initializer times its radius.

  Each matrix of a leaf (per its group's view) is drawn with norm 1 under the
  group's norm (semi-orthogonal for Spectral, normalized rows for ColNorm,
  normalized columns for RowNorm, random signs for Sign; zeros for BiasRMS) and
  scaled by the radius, so ``||W|| == rho`` for every matrix leaf: the point
  constrained Scion keeps it at.

  Args:
    rules: :class:`~optax_lmo.Rules` (e.g. from :func:`~optax_lmo.infer_rules`), a
      rule list or a callable; ``None`` uses :func:`~optax_lmo.default_rules`.
    params: the parameter pytree (Flax linen params, an NNX ``nnx.State``, ...).
    key: a PRNG key; each leaf gets its own fold of it.
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
    (3.0, 0.0)
  """
  rules = rules_lib.as_rules(rules)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, max(len(flat), 1))
  out = []
  for (path, leaf), k in zip(flat, keys, strict=False):
    p = spec_lib.path_str(path)
    g = rules.group_for(p, leaf)
    if g is None or g.norm is None or (keep_gains and g.role == "gain"):
      out.append(leaf)
      continue
    new = g.radius * g.norm.init(k, tuple(np.shape(leaf)), spec=g.spec)
    out.append(new.astype(leaf.dtype))
  return treedef.unflatten(out)
