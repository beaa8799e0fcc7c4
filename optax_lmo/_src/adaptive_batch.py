r"""Adaptive batch size by the norm test: keep accumulating micro-batches until the mean is sure.

A wrapper like ``optax.MultiSteps`` whose number of accumulated micro-batches
is decided by the data. After micro-batch gradients ``g_1 .. g_m`` with mean
``g`` the variance of the mean is estimated as

.. math::
  V = \frac{1}{m (m - 1)} \sum_{i=1}^m \|g_i - g\|^2

and the inner optimizer takes a step with ``g`` once ``V <= eta^2 ||g||^2``
(the norm test of Byrd et al., 2012, as used by AdAdaGrad), or once ``m``
reaches ``max_micro_batches``. Small ``eta`` asks for a precise mean (large
batches); the batch grows by itself as the gradient shrinks relative to its
noise, late in training.

References:
  Byrd, Chin, Nocedal, Wu, Sample size selection in optimization methods for
  machine learning, Math. Program. 2012.
  Lau, Liu, Kolar, AdAdaGrad: Adaptive batch size schemes for adaptive gradient
  methods, arXiv:2402.11215, 2024.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import checks


class AdaptiveBatchState(NamedTuple):
  """State of :func:`adaptive_batch`."""

  micro_batches: chex.Array  # [], int32: micro-batches in the current accumulation (m)
  mean: optax.Updates  # like params, float32: running mean g of this accumulation
  sq_dev: chex.Array  # [], float32: sum_i ||g_i - g||^2 over all leaves (Welford)
  batch_size: chex.Array  # [], int32: micro-batches of the last step taken (0 before one)
  steps: chex.Array  # [], int32: steps the inner optimizer has taken
  inner_state: optax.OptState  # the inner optimizer's state


def adaptive_batch(
    inner: optax.GradientTransformation,
    eta: chex.Numeric,
    *,
    min_micro_batches: int = 2,
    max_micro_batches: int = 64,
) -> optax.GradientTransformationExtraArgs:
  r"""Accumulates micro-batch gradients until the norm test passes, then applies ``inner``.

  Each call to ``update`` takes one micro-batch gradient. While the test fails
  it returns zero updates (as ``optax.MultiSteps`` does); when it passes (or
  ``max_micro_batches`` is reached) it returns ``inner``'s update for the mean
  gradient and starts a new accumulation. The current effective batch (in
  micro-batches) is ``state.batch_size``, for logging.

  .. math::
    \frac{1}{m (m-1)} \sum_i \|g_i - \bar g\|^2 \le \eta^2 \|\bar g\|^2

  Args:
    inner: the optimizer to apply (any ``optax.GradientTransformation``: ours,
      ``optax.adamw``, ...).
    eta: the test's tolerance, ``> 0``; may be injected (a traced value).
    min_micro_batches: never step on fewer (at least 2: the variance needs two).
    max_micro_batches: always step at this many.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`AdaptiveBatchState`.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> tx = ol.contrib.adaptive_batch(optax.sgd(1.0), eta=0.5, max_micro_batches=8)
    >>> state = tx.init(jnp.zeros(2))
    >>> for g in ([1.0, 1.0], [1.1, 0.9]):   # two close micro-batches: the test passes
    ...   u, state = tx.update(jnp.array(g), state)
    >>> int(state.batch_size), [round(float(v), 2) for v in u]
    (2, [-1.05, -0.95])
  """
  checks.hyperparams("adaptive_batch", eta=eta)
  if not 2 <= min_micro_batches <= max_micro_batches:
    raise ValueError(
        "adaptive_batch: need 2 <= min_micro_batches <= max_micro_batches, got"
        f" {min_micro_batches} and {max_micro_batches}."
    )
  inner = optax.with_extra_args_support(inner)
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return AdaptiveBatchState(
        micro_batches=zero,
        mean=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params),
        sq_dev=jnp.zeros([], jnp.float32),
        batch_size=zero,
        steps=zero,
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    # Welford's update of the mean and of the summed squared deviations.
    m = state.micro_batches + 1
    mf = m.astype(jnp.float32)
    g = f32(updates)
    delta = jax.tree.map(lambda x, mu: x - mu, g, state.mean)
    mean = jax.tree.map(lambda mu, d: mu + d / mf, state.mean, delta)
    sq_dev = state.sq_dev + sum(
        jnp.sum(d * (x - mu)) for d, x, mu in zip(
            jax.tree.leaves(delta), jax.tree.leaves(g), jax.tree.leaves(mean), strict=True)
    )
    mean_sq = sum(jnp.sum(mu * mu) for mu in jax.tree.leaves(mean))
    variance = sq_dev / jnp.maximum(mf * (mf - 1.0), 1.0)
    passed = (m >= min_micro_batches) & (variance <= jnp.asarray(eta, jnp.float32) ** 2 * mean_sq)
    emit = passed | (m >= max_micro_batches)

    def step(_):
      grads = jax.tree.map(lambda mu, u: mu.astype(u.dtype), mean, updates)
      out, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
      return jax.tree.map(lambda o, u: o.astype(u.dtype), out, updates), inner_state

    def wait(_):
      return jax.tree.map(jnp.zeros_like, updates), state.inner_state

    out, inner_state = jax.lax.cond(emit, step, wait, None)
    keep = lambda new, reset: jnp.where(emit, reset, new)
    new_state = AdaptiveBatchState(
        micro_batches=keep(m, jnp.zeros_like(m)),
        mean=jax.tree.map(lambda mu: keep(mu, jnp.zeros_like(mu)), mean),
        sq_dev=keep(sq_dev, jnp.zeros_like(sq_dev)),
        batch_size=jnp.where(emit, m, state.batch_size),
        steps=state.steps + emit.astype(jnp.int32),
        inner_state=inner_state,
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["AdaptiveBatchState", "adaptive_batch"]
