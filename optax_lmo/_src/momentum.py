"""Momentum: the exponential moving average of the gradient, in optax's ``beta`` convention."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lmo._src import checks
from optax_lmo._src.transforms import per_leaf

_DTYPE = (str, type, np.dtype)  # what a single mu_dtype can be (jnp.bfloat16 is a type)


class MomentumState(NamedTuple):
  """State of :func:`momentum`."""

  count: chex.Array  # [], int32: steps taken
  trace: optax.Updates  # like params; mu_dtype, or float32 for low-precision params: d


def state_dtype(dtype, mu_dtype=None):
  """The dtype of optimizer state for a leaf of ``dtype``.

  ``mu_dtype`` when given; otherwise the leaf's own dtype, except float32 for
  floating-point dtypes narrower than 32 bits (bfloat16, float16).
  """
  if mu_dtype is not None:
    return jnp.dtype(mu_dtype)
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return dtype


def momentum(
    beta: chex.Numeric = 0.9,
    *,
    nesterov: bool = False,
    bias_correction: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Momentum as an exponential moving average, in optax's convention.

  .. math::
    d \leftarrow \beta\, d + (1 - \beta)\, g, \qquad
    \text{output } d \text{ (or } \beta\, d + (1-\beta)\, g \text{ with Nesterov)}

  ``beta`` is the decay of the running average, as in ``optax.sgd(momentum=0.9)``
  and ``optax.contrib.muon(beta=0.95)``; ``beta = 0`` is no momentum. The Scion
  paper's ``alpha`` is ``1 - beta`` (its ``momentum=0.1`` is ``beta=0.9`` here).
  The state is created eagerly as zeros shaped (and sharded) like the parameters.

  Args:
    beta: decay of the running average, in ``[0, 1)``; may be a traced value
      (``optax.inject_hyperparams``).
    nesterov: feed ``beta d + (1 - beta) g`` forward (Muon, Disco).
    bias_correction: divide by ``1 - beta^t`` as Adam does (``t`` the step;
      with Nesterov the ``d`` term uses ``t + 1``), as ``optax.contrib.muon``
      does. LMOs are scale invariant, so this only matters with Nesterov.
    mu_dtype: dtype of the trace; ``None``: the parameter's dtype, float32 for
      bfloat16 and float16 parameters (see :func:`state_dtype`). One dtype for
      every leaf, or a pytree of them matched to the parameters by path.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`MomentumState`.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.momentum(0.5)
    >>> s = tx.init(jnp.zeros(1))
    >>> u, s = tx.update(jnp.ones(1), s)
    >>> u, s = tx.update(jnp.ones(1), s)
    >>> u.tolist()
    [0.75]
  """
  checks.hyperparams("momentum", beta=beta)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    dtypes = per_leaf(mu_dtype, params, kind=_DTYPE, what="mu_dtype")
    return MomentumState(
        count=jnp.zeros([], jnp.int32),
        trace=treedef.unflatten([jnp.zeros_like(p, dtype=state_dtype(p.dtype, d))
                                 for p, d in zip(leaves, dtypes, strict=True)]),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    count = optax.safe_increment(state.count)

    def step(g, d):
      # Computed in the trace's dtype, at least float32 (float64 stays float64 under x64).
      ct = jnp.promote_types(d.dtype, jnp.float32)
      b, g = jnp.asarray(beta, ct), g.astype(ct)
      d = b * d.astype(ct) + (1 - b) * g
      # Bias-correction denominators 1 - beta^t (ones when switched off).
      t = count.astype(ct)
      c_g = 1 - b**t if bias_correction else 1.0
      c_d = (1 - b ** (t + 1) if nesterov else c_g) if bias_correction else 1.0
      out = b * d / c_d + (1 - b) * g / c_g if nesterov else d / c_d
      return out, d

    g_l, treedef = jax.tree.flatten(updates)
    d_l = treedef.flatten_up_to(state.trace)
    res = [step(g, d) for g, d in zip(g_l, d_l, strict=True)]
    out = treedef.unflatten([o.astype(g.dtype) for (o, _), g in zip(res, g_l, strict=True)])
    trace = treedef.unflatten([n.astype(d.dtype) for (_, n), d in zip(res, d_l, strict=True)])
    return out, MomentumState(count=count, trace=trace)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
