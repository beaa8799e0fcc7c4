r"""The optimizers: Scion, unconstrained Scion, Muon, sign descent, normalized SGD.

Each is only a chain of the core transforms (no math here). For leaf ``W`` with
gradient ``g``, radius ``rho``, learning rate ``gamma_t`` and decay ``mu``:

.. math::
  d \leftarrow (1-\alpha) d + \alpha g, \qquad
  W \leftarrow W - \gamma_t\,(\rho\, \mathrm{lmo}(d) + \mu W)

Constrained Scion (SCG) is the case ``mu = 1``: ``W <- (1 - gamma) W - gamma rho lmo(d)``,
which keeps ``||W|| <= rho``. Three spellings of the same update (tested equal):

1. uSCG with weight decay ``mu``, radius ``rho``, learning rate ``gamma``;
2. SCG (``mu = 1``) with radius ``rho / mu`` and learning rate ``gamma mu``;
3. decoupled decay with unit radius, ``W <- (1 - gamma lam) W - gamma lmo(d)``
   (Disco's form), whose fixed-point norm is ``1 / lam``: spelling 1 with ``rho = 1``.

References:
  Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs,
  ICML 2025, arXiv:2502.07529.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import transforms
from optax_lmo._src.polar import Polar
from optax_lmo._src.spec import path_str


def _norms_fn(rules: rules_lib.Rules, polar: Polar | None, *, what: str):
  """``tree -> tree of Norm``, with ``polar`` swapped into every spectral norm."""

  def fn(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for p, x in flat:
      g = rules.group_for(path_str(p), x)
      if g is None or g.norm is None:
        raise ValueError(
            f"{path_str(p)}: {what} needs a norm for every leaf; give this leaf a Group"
            " with a norm (or use muon, which sends norm-less leaves to AdamW)."
        )
      n = g.norm
      if polar is not None and hasattr(n, "polar"):
        n = dataclasses.replace(n, polar=polar)
      out.append(n)
    return treedef.unflatten(out)

  return fn


def _decay_fn(rules: rules_lib.Rules, default: float):
  def fn(tree):
    groups = rules.field("decay", default)(tree)
    return jax.tree.map(lambda d: None if d == 0 else d, groups)

  return fn


def _check_lr(learning_rate, what: str):
  if isinstance(learning_rate, (int, float)) and not learning_rate >= 0:
    raise ValueError(f"{what}: learning_rate must be >= 0, got {learning_rate}.")


def _lmo_chain(
    learning_rate, rules, *, alpha, nesterov, bias_correction, decay, clip, polar, mu_dtype,
    distribute, what,
) -> optax.GradientTransformationExtraArgs:
  _check_lr(learning_rate, what)
  radius = rules.field("radius", 1.0)
  return optax.chain(
      transforms.momentum(alpha, nesterov=nesterov, bias_correction=bias_correction,
                          mu_dtype=mu_dtype),
      transforms.scale_by_norm(
          _norms_fn(rules, polar, what=what),
          specs=rules.field("spec"),
          dual_clip=radius if clip else None,
          distribute=distribute,
      ),
      transforms.scale_by_radius(radius),
      transforms.add_constrained_decay(_decay_fn(rules, decay)),
      transforms.scale_by_radius(rules.field("lr_mult", 1.0)),  # per-group lr multiplier
      optax.scale_by_learning_rate(learning_rate),
  )


def scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rules: Any = None,
    momentum: chex.Numeric = 0.1,
    nesterov: bool = False,
    constrained: bool = True,
    weight_decay: float | None = None,
    clip_to_dual_norm: bool = False,
    polar: Polar | None = None,
    mu_dtype: Any = jnp.float32,
    distribute: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scion: stochastic conditional gradient under a per-layer norm (SCG).

  .. math::
    d \leftarrow (1-\alpha) d + \alpha g, \qquad
    W \leftarrow (1 - \gamma_t) W - \gamma_t\, \rho\, \mathrm{lmo}(d)

  Every leaf stays in its norm ball ``||W|| <= rho`` once inside it.

  Args:
    learning_rate: ``gamma``, a float or an optax schedule.
    rules: which leaf gets which norm, radius, lr multiplier, decay and view: a
      :class:`~optax_lmo.Rules`, a ``[(regex, Group), ...]`` list or a callable
      ``(path, leaf) -> Group``; ``None`` uses :func:`~optax_lmo.default_rules`.
    momentum: ``alpha`` (``1 - beta``); 1 disables momentum.
    nesterov: feed ``(1 - alpha) d + alpha g`` to the LMO.
    constrained: ``True`` is SCG (decay 1); ``False`` is uSCG (decay 0).
    weight_decay: ``mu`` in the uSCG spelling ``W <- W - gamma (rho u + mu W)``;
      ``None`` takes 1 when constrained, else 0. A group's ``decay`` overrides it.
    clip_to_dual_norm: clipped Scion: step ``gamma min(rho, ||d||_*) lmo(d)``.
    polar: :class:`~optax_lmo.Polar` options for every spectral leaf.
    mu_dtype: dtype of the momentum state.
    distribute: on a device mesh, give each spectral matrix one owner device
      (gather once, orthogonalize locally, scatter once; see
      :func:`~optax_lmo.scale_by_norm`). ``None``: whenever the updates live on
      a mesh with more than one device; ``False``: never (XLA partitions the
      polar factor itself, re-gathering the matrix inside every iteration).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optax_lmo as ol
    >>> params = {"w": jnp.eye(4), "b": jnp.zeros(4)}
    >>> tx = ol.scion(0.1)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(lambda p: -jnp.ones_like(p), params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> round(float(ol.norms.Spectral().norm(params["w"])), 1)  # on the ball: 0.9 * 1 + 0.1 * 1
    1.0

  References:
    Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs,
    ICML 2025, arXiv:2502.07529.
  """
  r = rules_lib.as_rules(rules)
  decay = weight_decay if weight_decay is not None else (1.0 if constrained else 0.0)
  tx = _lmo_chain(
      learning_rate, r, alpha=momentum, nesterov=nesterov, bias_correction=False, decay=decay,
      clip=clip_to_dual_norm, polar=polar, mu_dtype=mu_dtype, distribute=distribute,
      what="scion" if constrained else "unconstrained_scion",
  )
  return rules_lib.register(tx, r, default_decay=decay, mu_dtype=mu_dtype)


def unconstrained_scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rules: Any = None,
    momentum: chex.Numeric = 0.1,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip_to_dual_norm: bool = False,
    polar: Polar | None = None,
    mu_dtype: Any = jnp.float32,
    distribute: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Unconstrained Scion (uSCG): steepest descent under a per-layer norm.

  .. math::
    d \leftarrow (1-\alpha) d + \alpha g, \qquad
    W \leftarrow W - \gamma_t\, (\rho\, \mathrm{lmo}(d) + \mu W)

  Same arguments as :func:`scion`; ``weight_decay`` is ``mu`` (default 0).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.unconstrained_scion(0.5, momentum=1.0)
    >>> u, _ = tx.update({"b": jnp.array([3.0, -4.0])}, tx.init({"b": jnp.zeros(2)}))
    >>> [round(float(v), 4) for v in u["b"]]  # -0.5 * b / rms(b)
    [-0.4243, 0.5657]
  """
  return scion(
      learning_rate, rules=rules, momentum=momentum, nesterov=nesterov, constrained=False,
      weight_decay=weight_decay, clip_to_dual_norm=clip_to_dual_norm, polar=polar,
      mu_dtype=mu_dtype, distribute=distribute,
  )


def muon_rules(*, radius: float = 1.0, input_layer: bool = False) -> rules_lib.Rules:
  """Default Muon routing: hidden 2-D matrices -> Spectral; embeddings, head, 0-1-D -> AdamW.

  Embeddings and output heads are recognized by module name as in
  :func:`~optax_lmo.default_rules`; ``input_layer=True`` uses the factor
  ``max(1, sqrt(d_out/d_in))`` (KellerJordan/Muon and ``optax.contrib.muon``).
  """
  spectral = rules_lib.Group(norms_lib.Spectral(input_layer=input_layer), radius=radius)

  def fallback(path, leaf):
    nd = len(getattr(leaf, "shape", ()))
    if nd == 2 and not (rules_lib._EMBED.search(path) or rules_lib._HEAD.search(path)):
      return spectral
    return rules_lib.Group(None)

  return rules_lib.Rules((), fallback=fallback, strict=True)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.95,
    nesterov: bool = True,
    bias_correction: bool = False,
    weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
    adam_nesterov: bool = False,
    rules: Any = None,
    polar: Polar | None = None,
    mu_dtype: Any = jnp.float32,
    distribute: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Muon: the spectral LMO on hidden matrices, AdamW on everything else.

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W \leftarrow W - \gamma_t\,(\rho\, \mathrm{lmo}(\beta d + (1-\beta) g) + \lambda W)

  Leaves whose group has a norm take the LMO step (uSCG); leaves whose group has
  ``norm=None`` go to ``optax.adamw`` with their own learning rate, betas and decay.

  Args:
    learning_rate: learning rate (or schedule) of the LMO group.
    beta: momentum coefficient (``alpha = 1 - beta``).
    nesterov: Nesterov momentum.
    bias_correction: Adam-style bias correction of the momentum, as
      ``optax.contrib.muon`` does (it changes the Nesterov mix).
    weight_decay: decoupled decay ``lambda`` of the LMO group.
    adam_learning_rate: AdamW's learning rate (or schedule); ``None``: ``learning_rate``.
    adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW's hyperparameters.
    adam_nesterov: NAdam-style Nesterov in the AdamW group (``optax.contrib.muon``
      turns it on together with ``nesterov``).
    rules: routing; ``None`` uses :func:`muon_rules`.
    polar: :class:`~optax_lmo.Polar` options for the spectral leaves.
    mu_dtype: dtype of the momentum state.
    distribute: on a device mesh, give each spectral matrix one owner device
      (gather once, orthogonalize locally, scatter once; see
      :func:`~optax_lmo.scale_by_norm`). ``None``: whenever the updates live on
      a mesh with more than one device; ``False``: never (XLA partitions the
      polar factor itself, re-gathering the matrix inside every iteration).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> params = {"w": jnp.zeros((8, 8)), "b": jnp.zeros(8)}
    >>> tx = ol.muon(0.02)
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> sorted(u)
    ['b', 'w']

  References:
    Jordan et al., Muon: An optimizer for hidden layers,
    https://kellerjordan.github.io/posts/muon/, 2024.
  """
  r = muon_rules() if rules is None else rules_lib.as_rules(rules)
  lmo_tx = _lmo_chain(
      learning_rate, r, alpha=1 - beta, nesterov=nesterov, bias_correction=bias_correction,
      decay=weight_decay, clip=False, polar=polar, mu_dtype=mu_dtype, distribute=distribute,
      what="muon",
  )
  if adam_learning_rate is not None:
    _check_lr(adam_learning_rate, "muon (AdamW group)")
  adam_tx = transforms.with_float32_state(optax.adamw(
      learning_rate if adam_learning_rate is None else adam_learning_rate,
      b1=adam_b1, b2=adam_b2, eps=adam_eps, weight_decay=adam_weight_decay,
      nesterov=adam_nesterov,
  ))

  def labels(tree):
    groups = r.resolve(tree)
    return jax.tree.map(
        lambda g: "adam" if g is None or g.norm is None else "lmo",
        groups,
        is_leaf=lambda g: g is None or isinstance(g, rules_lib.Group),
    )

  tx = optax.partition({"lmo": lmo_tx, "adam": adam_tx}, labels)
  return rules_lib.register(tx, r, default_decay=weight_decay, mu_dtype=mu_dtype,
                            fallback="AdamW")


def sign_descent(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: chex.Numeric = 0.1,
    weight_decay: float = 0.0,
    mu_dtype: Any = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Signum: uSCG with the (unscaled) Sign LMO on every leaf.

  .. math::
    W \leftarrow W - \gamma_t\,(\mathrm{sign}(d) + \mu W)

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.sign_descent(0.1, momentum=1.0)
    >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
    >>> u.tolist()
    [-0.10000000149011612, 0.10000000149011612]
  """
  r = rules_lib.Rules((), fallback=lambda p, x: rules_lib.Group(norms_lib.Sign(scaled=False)))
  return scion(learning_rate, rules=r, momentum=momentum, constrained=False,
               weight_decay=weight_decay, mu_dtype=mu_dtype)


def normalized_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: chex.Numeric = 0.1,
    weight_decay: float = 0.0,
    mu_dtype: Any = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Normalized SGD: uSCG with the Frobenius LMO ``g / ||g||_F`` on every leaf.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.normalized_sgd(1.0, momentum=1.0)
    >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> [round(float(v), 4) for v in u]
    [-0.6, -0.8]
  """
  r = rules_lib.Rules((), fallback=lambda p, x: rules_lib.Group(norms_lib.Frobenius()))
  return scion(learning_rate, rules=r, momentum=momentum, constrained=False,
               weight_decay=weight_decay, mu_dtype=mu_dtype)
