"""Randomized progressive training (``--drop``): freeze the blocks below a random cutoff each step.

Drop-Muon's randomized progressive training [DM]: each step draws a cutoff
``c`` uniformly from ``0 .. depth-1`` (the paper's "uniform index sampling";
``c = 0`` is a full step). The blocks ``< c`` and the embeddings are frozen for
that step, the blocks ``>= c``, the final norm and the head are trained:

* the backward pass stops at the input of block ``c``
  (``jax.lax.stop_gradient``). ``c`` is traced under ``jit``, so the step is a
  ``lax.switch`` over ``depth`` branches, one per static cutoff, each
  differentiated on its own: a branch has no backward for the frozen blocks,
  and only the drawn branch runs. This is where the time is saved;
* the optimizer leaves the frozen parameters **and their optimizer state**
  alone (:func:`freeze`): no step, no decay, momentum held, as in the paper.
  The mask goes to the inner optimizer as the extra argument ``keep`` (as
  ``optax_lmo.contrib.drop_leaves`` passes it), so Scion skips the frozen matrices'
  Newton–Schulz work.

The cutoff is a pure function of ``(seed, step)`` (:func:`cutoff`), like the
batches: a run is reproducible and a resumed run draws the same cutoffs.

[DM] Gruntkowska, Maziane, Qu, Richtárik, Drop-Muon: Update Less, Converge
Faster, arXiv:2510.02239, 2025.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

_LAYER = re.compile(r"(?:^|/)blocks/(\d+)/|(?:^|/)(?:pos_)?embed/")


def cutoff(seed: int, step: int, depth: int) -> np.int32:
  """The cutoff of ``step``: uniform over ``0 .. depth-1``, from its own stream of ``seed``."""
  return np.int32(np.random.default_rng([seed, step, 1]).integers(depth))


def _layer(path) -> int | None:
  """Block index of a leaf path, ``-1`` for the embeddings, ``None`` for what always trains."""
  name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
  m = _LAYER.search(name + "/")
  return None if m is None else (-1 if m.group(1) is None else int(m.group(1)))


def trains(path, cut) -> jax.Array | None:
  """Whether the leaf at ``path`` trains at cutoff ``cut`` (``None``: it always does)."""
  layer = _layer(path)
  return None if layer is None else (cut == 0 if layer < 0 else layer >= cut)


def value_and_grad(loss_fn, model: nnx.Module, cut: jax.Array, *args):
  """``loss_fn(model, *args, frozen_below=k)`` and its parameter gradients, ``k = cut``.

  A ``lax.switch`` over the static cutoffs ``0 .. depth-1``: each branch has
  only the backward pass of the blocks it trains.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def branch(k):
    f = lambda p: loss_fn(nnx.merge(graphdef, p, rest), *args, frozen_below=k)
    return lambda p: jax.value_and_grad(f)(p)

  return jax.lax.switch(cut, [branch(k) for k in range(len(model.blocks))], params)


def freeze(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner`` with an extra ``update`` argument ``cut``: frozen leaves keep params and state."""
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, *, cut, **extra_args):
    keep = jax.tree_util.tree_map_with_path(lambda p, _: trains(p, cut), updates)
    out, new_state = inner.update(updates, state, params, keep=keep, **extra_args)
    hold = lambda p, new, old: new if trains(p, cut) is None else jnp.where(
        trains(p, cut), new, old)
    out = jax.tree_util.tree_map_with_path(
        lambda p, u: hold(p, u, jnp.zeros_like(u)), out)
    return out, jax.tree_util.tree_map_with_path(hold, new_state, state)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)
