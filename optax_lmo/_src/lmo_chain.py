"""One LMO optimizer = one frozen :class:`Options` value + one chain built from it and the plan.

The optimizers in ``alias.py`` only fill in :class:`Options` (checked once, in
``checks``, when it is built). :func:`optimizer` wraps :func:`chain` in
:func:`~optax_lmo.route`, which resolves the rules into a plan at ``init`` and
carries it in the state; :func:`chain` reads every setting from the options
and every per-leaf value from the plan::

    momentum -> LMO per leaf -> radius -> decay -> lr multiplier -> learning rate

No argument passes through more than this one function on its way to the
transform that uses it. ``docs/flow.md`` draws the whole path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import optax

from optax_lmo._src import checks, drop, transforms
from optax_lmo._src import exchange as exchange_lib
from optax_lmo._src import momentum as momentum_lib
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.polar import Polar
from optax_lmo._src.route import route


@dataclasses.dataclass(frozen=True)
class Options:
  """Every setting of one LMO optimizer, under the public argument names.

  Attributes:
    name: the optimizer (``"scion"``, ``"muon"``, ...): errors and ``describe`` name it.
    learning_rate: ``gamma``, a number or an optax schedule.
    beta: momentum, the decay of the running average.
    nesterov: feed ``beta d + (1 - beta) g`` to the LMO.
    bias_correction: Adam-style bias correction of the momentum.
    weight_decay: ``mu`` in ``W <- W - gamma (rho lmo(d) + mu W)``; constrained
      Scion is ``mu = 1``. A group's ``decay`` overrides it.
    clip_to_dual_norm: step ``gamma min(rho, ||d||_*) lmo(d)`` (clipped Scion).
    dual_scale: step ``gamma ||d||_* lmo(d)``, no radius (PolarGrad).
    polar: :class:`~optax_lmo.Polar` options put into every spectral norm.
    mu_dtype: dtype of the momentum state (``None``: follows the parameters).
    distribute: whole-matrix ownership on a device mesh (``None``: when on one).
    exchange_dtype: the dtype of that exchange (``None``: float32).
    keep_prob: probability a spectral leaf is updated at a step (``None``: always).
    seed: seed of the ``keep_prob`` draws.
  """

  name: str
  learning_rate: optax.ScalarOrSchedule
  beta: Any = 0.9
  nesterov: bool = False
  bias_correction: bool = False
  weight_decay: Any = 0.0
  clip_to_dual_norm: bool = False
  dual_scale: bool = False
  polar: Polar | None = None
  mu_dtype: Any = None
  distribute: bool | None = None
  exchange_dtype: Any = None
  keep_prob: Any = None
  seed: int = 0

  def __post_init__(self):
    checks.hyperparams(self.name, learning_rate=self.learning_rate, beta=self.beta,
                       weight_decay=self.weight_decay, keep_prob=self.keep_prob)
    exchange_lib.check_dtype(self.exchange_dtype, self.name)


def chain(opts: Options, plan: rules_lib.Plan) -> optax.GradientTransformationExtraArgs:
  """momentum -> LMO per leaf -> radius -> decay -> lr multiplier -> learning rate.

  Args:
    opts: the optimizer's settings.
    plan: each leaf's :class:`~optax_lmo.Group` (norm, view, radius, decay,
      learning-rate multiplier, keep probability), resolved by :func:`~optax_lmo.route`.

  Returns:
    The chain; wrapped in :func:`~optax_lmo.contrib.drop_leaves` when a keep
    probability is set (by ``opts`` or by a group).
  """

  def leaf_decay(g):
    d = opts.weight_decay if g.decay is None else g.decay
    return None if isinstance(d, (int, float)) and d == 0 else d

  def leaf_keep(g):
    if g.norm is None:
      return None
    p = g.keep_prob if g.keep_prob is not None else (
        opts.keep_prob if isinstance(g.norm, norms_lib.Spectral) else None)
    return None if isinstance(p, (int, float)) and p == 1 else p

  radius = plan.tree(lambda g: g.radius if g.norm is not None else None)
  tx = optax.chain(
      momentum_lib.momentum(opts.beta, nesterov=opts.nesterov,
                            bias_correction=opts.bias_correction, mu_dtype=opts.mu_dtype),
      transforms.scale_by_norm(
          plan.tree(lambda g: g.norm),
          specs=plan.tree(lambda g: g.spec),
          dual_clip=radius if opts.clip_to_dual_norm else None,
          dual_scale=opts.dual_scale,
          distribute=opts.distribute,
          exchange_dtype=opts.exchange_dtype,
      ),
      transforms.scale_by_radius(None if opts.dual_scale else radius),
      transforms.add_constrained_decay(plan.tree(leaf_decay)),
      transforms.scale_by_radius(plan.tree(lambda g: g.lr_mult)),  # per-group lr multiplier
      optax.scale_by_learning_rate(opts.learning_rate),
  )
  # Wrapped whenever keep_prob is given (a number, or an injected traced value) or a group
  # sets one, so the state's structure does not depend on the values; a leaf whose
  # probability is the number 1 draws nothing. keep_prob=None (the default): no sampling.
  if opts.keep_prob is None and all(g is None or g.keep_prob is None for g in plan.groups):
    return tx
  return drop.drop_leaves(tx, plan.tree(leaf_keep), seed=opts.seed)


def optimizer(opts: Options, rules: Any) -> optax.GradientTransformationExtraArgs:
  """:func:`chain` behind :func:`~optax_lmo.route`: every leaf needs a norm."""
  return route(rules, functools.partial(chain, opts), name=opts.name, polar=opts.polar,
               options=opts)
