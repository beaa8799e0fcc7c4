r"""Randomized layer updates (Drop-Muon): each step updates only a random subset of the leaves.

:func:`drop_leaves` wraps an optimizer. Every step it draws, for each leaf with
a keep probability ``p``, whether the leaf is updated; a dropped leaf gets a
zero update (no step, no decay) and, inside :func:`~optax_lmo.scale_by_norm`,
does not pay for its polar factor (on one device, or on its owner device on a
mesh). The inner optimizer still sees every
gradient, so a dropped leaf's momentum keeps accumulating and its next step
uses it. The draws come from a key in the state, folded with the step count:
runs are reproducible and a restored checkpoint resumes the same draws.

References:
  Gruntkowska, Gaponov, Tovmasyan, Richtárik, Drop-Muon: Update Less, Converge
  Faster, arXiv:2510.02239, 2025.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import checks
from optax_lmo._src.transforms import PerLeaf, per_leaf


class DropState(NamedTuple):
  """State of :func:`drop_leaves`."""

  key: chex.Array  # uint32[2]: the draws' key (fixed; folded with count each step)
  count: chex.Array  # [], int32: steps taken
  inner_state: optax.OptState  # the inner optimizer's state


def drop_leaves(
    inner: optax.GradientTransformation,
    keep_prob: PerLeaf,
    *,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Updates each leaf with probability ``keep_prob`` per step; the rest stay put.

  .. math::
    W \leftarrow W - \xi_t\, \Delta_t(W), \qquad \xi_t \sim \mathrm{Bernoulli}(p)

  where ``Delta_t`` is the inner optimizer's update. The inner ``update`` gets
  the draws as the extra argument ``keep`` (a pytree of booleans), which
  :func:`~optax_lmo.scale_by_norm` reads to skip the Newton–Schulz work of
  dropped spectral leaves.

  Args:
    inner: the optimizer whose updates are sampled.
    keep_prob: one probability in ``(0, 1]`` for every leaf, or a pytree of them matched to
      the parameters by path (``None``: the leaf is always updated). May be
      traced (``optax.inject_hyperparams``); a traced probability draws even
      where its value is 1, so its leaves take the sampled path of
      :func:`~optax_lmo.scale_by_norm`.
    seed: seed of the draws.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`DropState`.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> tx = ol.contrib.drop_leaves(optax.sgd(1.0), {"a": 1e-9, "b": None})
    >>> g = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u["a"].tolist(), u["b"].tolist()  # "a" almost never moves, "b" always
    ([0.0, 0.0], [-1.0, -1.0])
  """
  checks.each_leaf("drop_leaves", "keep_prob", keep_prob)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return DropState(
        key=jax.random.PRNGKey(seed),
        count=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    leaves, treedef = jax.tree.flatten(updates)
    step_key = jax.random.fold_in(state.key, state.count)
    keep = [
        None if p is None
        else jax.random.uniform(jax.random.fold_in(step_key, i)) < jnp.asarray(p, jnp.float32)
        for i, p in enumerate(per_leaf(keep_prob, updates, what="keep_prob"))
    ]
    out, inner_state = inner.update(
        updates, state.inner_state, params, keep=treedef.unflatten(keep), **extra_args
    )
    out = [
        u if k is None else jnp.where(k, u, jnp.zeros_like(u))
        for u, k in zip(treedef.flatten_up_to(out), keep, strict=True)
    ]
    new_state = DropState(state.key, optax.safe_increment(state.count), inner_state)
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["DropState", "drop_leaves"]
