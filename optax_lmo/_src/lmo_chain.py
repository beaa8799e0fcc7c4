"""The LMO template as one chain, from which the optimizers in ``alias.py`` are built.

``template`` chains momentum -> the LMO of each leaf's norm -> its radius ->
decay -> its learning-rate multiplier -> the learning rate, from a resolved
plan; ``uscg`` wraps it in :func:`~optax_lmo.route`. The optimizers in
``alias.py`` call these with their own arguments.
"""


import optax

from optax_lmo._src import drop, transforms
from optax_lmo._src import exchange as exchange_lib
from optax_lmo._src import momentum as momentum_lib
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.route import route


def template(
    learning_rate, plan: rules_lib.Plan, *, beta, nesterov, bias_correction, decay, clip,
    mu_dtype, distribute, exchange_dtype=None, keep_prob=None, seed=0, steepest=False,
) -> optax.GradientTransformationExtraArgs:
  """momentum -> LMO per leaf -> radius -> decay -> lr multiplier -> learning rate.

  ``steepest`` scales each direction by its dual norm instead of the radius
  (PolarGrad); ``keep_prob`` < 1 samples the spectral leaves (Drop-Muon).
  """

  def leaf_decay(g):
    d = decay if g.decay is None else g.decay
    return None if isinstance(d, (int, float)) and d == 0 else d

  def leaf_keep(g):
    p = g.keep_prob if g.keep_prob is not None else (
        keep_prob if isinstance(g.norm, norms_lib.Spectral) else None)
    return None if isinstance(p, (int, float)) and p == 1 else p

  radius = plan.tree(lambda g: g.radius if g.norm is not None else None)
  tx = optax.chain(
      momentum_lib.momentum(beta, nesterov=nesterov, bias_correction=bias_correction,
                            mu_dtype=mu_dtype),
      transforms.scale_by_norm(
          plan.tree(lambda g: g.norm),
          specs=plan.tree(lambda g: g.spec),
          dual_clip=radius if clip else None,
          dual_scale=steepest,
          distribute=distribute,
          exchange_dtype=exchange_dtype,
      ),
      transforms.scale_by_radius(None if steepest else radius),
      transforms.add_constrained_decay(plan.tree(leaf_decay)),
      transforms.scale_by_radius(plan.tree(lambda g: g.lr_mult)),  # per-group lr multiplier
      optax.scale_by_learning_rate(learning_rate),
  )
  # Wrapped whenever keep_prob is given (a number, or an injected traced value) or a group
  # sets one, so the state's structure does not depend on the values; a leaf whose
  # probability is the number 1 draws nothing. keep_prob=None (the default): no sampling.
  if keep_prob is None and all(g is None or g.keep_prob is None for g in plan.groups):
    return tx
  keep = plan.tree(lambda g: leaf_keep(g) if g.norm is not None else None)
  return drop.drop_leaves(tx, keep, seed=seed)


def uscg(learning_rate, rules, *, name, beta, nesterov, decay, clip, polar, mu_dtype,
          distribute, exchange_dtype=None, keep_prob=None, seed=0, steepest=False):
  exchange_lib.check_dtype(exchange_dtype, name)
  build = lambda plan: template(
      learning_rate, plan, beta=beta, nesterov=nesterov, bias_correction=False, decay=decay,
      clip=clip, mu_dtype=mu_dtype, distribute=distribute, exchange_dtype=exchange_dtype,
      keep_prob=keep_prob, seed=seed, steepest=steepest,
  )
  return route(rules, build, name=name, polar=polar, mu_dtype=mu_dtype, decay=decay,
               keep_prob=keep_prob)
