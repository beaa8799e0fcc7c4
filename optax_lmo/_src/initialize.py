"""Geometry-consistent initialization: each leaf drawn from its group's norm, inside its ball."""

from __future__ import annotations

import math

import jax
import numpy as np

from optax_lmo._src import rules as rules_lib
from optax_lmo._src import spec as spec_lib

SCALES = ("unit", "radius")


def init_params(rules, params, key: jax.Array, *, scale: str = "unit", keep_gains: bool = True):
  r"""Re-initializes every leaf with its group's norm initializer, inside its ball.

  Each matrix of a leaf (per its group's view) is drawn with its norm's shape
  (semi-orthogonal for Spectral, normalized rows for ColNorm, normalized columns
  for RowNorm, random signs for Sign; zeros for BiasRMS) at the norm

  .. math::
    \|W\| = \min(\rho, u), \qquad u = \begin{cases}
      \sqrt{k_h k_w} & \text{SpectralConv (the RMS-preserving kernel)} \\
      1 & \text{otherwise}
    \end{cases}

  with ``scale="unit"`` (the default), whatever the radius ``rho``: a hidden
  matrix maps inputs of RMS 1 to outputs of RMS 1 (as Flax's default
  initializers do on average), an embedding row has RMS 1, and an output head
  (RowNorm or Sign) starts with logits of RMS about ``1/sqrt(d_in)``, so the
  first loss sits near the uniform-prediction loss ``ln V`` at any radius.
  The constraint only asks ``||W|| <= rho``; constrained Scion then moves each
  leaf toward its radius at the rate of the learning rate.

  ``scale="radius"`` draws every matrix on its ball's boundary, ``||W|| == rho``
  (the point constrained Scion keeps it at). The first logits then grow with
  the output radius: about 7 nats at radius 20 for a character model, hundreds
  at 3000.

  Args:
    rules: :class:`~optax_lmo.Rules` (e.g. from :func:`~optax_lmo.infer_rules`), a
      rule list or a callable; ``None`` uses :func:`~optax_lmo.default_rules`.
    params: the parameter pytree (Flax linen params, an NNX ``nnx.State``, ...).
    key: a PRNG key; each leaf gets its own fold of it.
    scale: ``"unit"`` (the norm ``min(rho, u)`` above) or ``"radius"`` (``rho``).
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
  out = []
  for (path, leaf), k in zip(flat, keys, strict=False):
    p = spec_lib.path_str(path)
    g = rules.group_for(p, leaf)
    if g is None or g.norm is None or (keep_gains and g.role == "gain"):
      out.append(leaf)
      continue
    shape = tuple(np.shape(leaf))
    norm = g.radius if scale == "radius" else min(g.radius, unit_norm(g, shape))
    new = norm * g.norm.init(k, shape, spec=g.spec)
    out.append(new.astype(leaf.dtype))
  return treedef.unflatten(out)


def unit_norm(group, shape) -> float:
  """``u`` of :func:`init_params`: ``sqrt(taps)`` for a SpectralConv kernel, else 1."""
  from optax_lmo._src.conv import SpectralConv  # noqa: PLC0415 (conv imports norms)

  if not isinstance(group.norm, SpectralConv) or not group.norm.scaled:
    return 1.0
  _, taps, _ = group.norm._layout(shape, group.spec, "")
  return math.sqrt(taps)
