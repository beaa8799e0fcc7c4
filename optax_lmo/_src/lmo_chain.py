"""One LMO optimizer = one frozen ``Options`` value + one chain that reads the settled plan.

The optimizers in ``alias.py`` only fill in :class:`~optax_lmo._src.settings.Options`
(checked once when it is built). :func:`optimizer` wraps :func:`chain` in
``route``, which at ``init`` resolves the rules into a plan and settles it into
every leaf's settings (``settings.settle``), and carries it in the state.
:func:`chain` reads the optimizer-wide settings (momentum, learning rate, the
exchange) from the options and every per-leaf value from the plan's leaves::

    momentum -> LMO per leaf [-> row normalization] -> radius -> decay -> lr multiplier
      -> learning rate

``docs/flow.md`` draws the whole path.
"""

from __future__ import annotations

import functools
from typing import Any

import optax

from optax_lmo._src import drop, normuon, transforms
from optax_lmo._src import momentum as momentum_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.route import route
from optax_lmo._src.settings import Options


def _unless(value: Any, default: float) -> Any:
  """``None`` where ``value`` is the Python number ``default`` (nothing to do), else ``value``."""
  return None if isinstance(value, (int, float)) and value == default else value


def chain(opts: Options, plan: rules_lib.Plan) -> optax.GradientTransformationExtraArgs:
  """momentum -> LMO per leaf -> radius -> decay -> lr multiplier -> learning rate.

  Args:
    opts: the optimizer's settings.
    plan: the settled plan: each leaf's norm, view, radius, learning-rate
      multiplier, weight decay, keep probability and state dtype.

  Returns:
    The chain; wrapped in :func:`~optax_lmo.contrib.drop_leaves` when the plan
    samples (a keep probability was given, by ``opts`` or by a group).
  """
  leaves = plan.leaves
  radius = plan.settings("radius")
  tx = optax.chain(
      momentum_lib.momentum(opts.beta, nesterov=opts.nesterov,
                            bias_correction=opts.bias_correction,
                            mu_dtype=plan.settings("state_dtype")),
      transforms.scale_by_norm(
          plan.settings("norm"),
          specs=plan.settings("spec"),
          dual_clip=radius if opts.clip_to_dual_norm else None,
          dual_scale=opts.dual_scale,
          distribute=opts.distribute,
          exchange_dtype=opts.exchange_dtype,
      ),
      # NorMuon's row normalization (normuon.py), only where asked for
      *([normuon.scale_by_row_rms(opts.row_norm_beta2, norms=plan.settings("norm"),
                                  specs=plan.settings("spec"))] if opts.row_norm else []),
      transforms.scale_by_radius(None if opts.dual_scale else radius),
      transforms.add_constrained_decay(
          plan.treedef.unflatten([_unless(leaf.weight_decay, 0) for leaf in leaves])),
      transforms.scale_each("lr_mult", "lr_mult", plan.settings("lr_mult")),
      optax.scale_by_learning_rate(opts.learning_rate),
  )
  # Wrapped whenever a keep probability is given (a number, or an injected traced value),
  # so the state's structure does not depend on the values; a leaf whose probability is the
  # number 1 draws nothing. No keep probability (the default): no sampling.
  if not plan.sampled:
    return tx
  keep = plan.treedef.unflatten([_unless(leaf.keep_prob, 1) for leaf in leaves])
  return drop.drop_leaves(tx, keep, seed=opts.seed)


def optimizer(opts: Options, rules: Any) -> optax.GradientTransformationExtraArgs:
  """:func:`chain` behind ``route``: every leaf needs a norm."""
  return route(rules, functools.partial(chain, opts), name=opts.name, options=opts)
