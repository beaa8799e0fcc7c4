r"""The optimizers: Scion, unconstrained Scion, Muon, sign descent, normalized SGD.

Each fills one frozen ``Options`` value and chains the public transforms (no math
here; ``lmo_chain.py`` builds the chain, ``route.py`` resolves the rules into the
plan it reads). Muon adds one partition: leaves whose group has no norm go to AdamW.
For leaf ``W`` with gradient ``g``, radius ``rho``, learning rate ``gamma_t`` and
weight decay ``mu``:

.. math::
  d \leftarrow \beta d + (1-\beta) g, \qquad
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

from typing import Any

import chex
import optax

from optax_lmo._src import checks, lmo_chain, settings, transforms
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.polar import Polar
from optax_lmo._src.route import route


def scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rules: Any = None,
    beta: chex.Numeric = 0.9,
    nesterov: bool = False,
    clip_to_dual_norm: bool = False,
    polar: Polar | None = None,
    mu_dtype: Any = None,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
    keep_prob: chex.Numeric | None = None,
    seed: int = 0,
    row_norm: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Scion: stochastic conditional gradient under a per-layer norm (SCG).

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W \leftarrow (1 - \gamma_t) W - \gamma_t\, \rho\, \mathrm{lmo}(d)

  Every leaf stays in its norm ball ``||W|| <= rho`` once inside it. The
  unconstrained form, with weight decay, is :func:`unconstrained_scion`; a
  group's ``weight_decay`` overrides the constrained shrink (1) for its leaves.

  The learning rate is both the decay of the weights (a memory of ``1/gamma``
  steps) and, times the radius, the step. At the default radii (hidden 48, head
  160), decaying over the last half, start from ``2**-11`` at 16 x 128 tokens
  per step: measured from 250 to 2000 steps, the best rate stayed within 0.3
  octaves of it. For another batch or horizon,
  ``ol.contrib.transfer_lr(2**-11, 16 * 128, 16 * 128 * 1000, batch * seq,
  tokens, law="scion")`` (``docs/radii.md``). Every numeric argument is checked
  here, naming a bad one (the API reference's *Checked hyperparameters*).

  Args:
    learning_rate: ``gamma``, a finite number ``>= 0`` or an optax schedule
      (evaluated at every update, under ``jit``: not checked here).
    rules: which leaf gets which norm, radius, lr multiplier, decay and view: a
      :class:`~optax_lmo.Rules` (e.g. from :func:`~optax_lmo.infer_rules`), a
      ``[(regex, Group), ...]`` list or a callable ``(path, leaf) -> Group``;
      ``None`` uses :func:`~optax_lmo.default_rules`. Checked at ``init``.
    beta: momentum, the decay of the running average (optax's convention; the
      Scion paper's ``alpha`` is ``1 - beta``, its default 0.1 is ``beta=0.9``);
      0 disables momentum.
    nesterov: feed ``beta d + (1 - beta) g`` to the LMO.
    clip_to_dual_norm: clipped Scion: step ``gamma min(rho, ||d||_*) lmo(d)``.
    polar: :class:`~optax_lmo.Polar` options for every spectral leaf.
    mu_dtype: dtype of the momentum state; ``None``: the parameters' dtype,
      float32 for bfloat16/float16 parameters.
    distribute: on a device mesh, give each spectral matrix one owner device
      (gather once, orthogonalize locally, scatter once; see
      :func:`~optax_lmo.scale_by_norm`). ``None``: whenever the updates live on
      a mesh with more than one device; ``False``: never (XLA partitions the
      polar factor itself, re-gathering the matrix inside every iteration).
    exchange_dtype: the dtype the matrices travel in to their owners and back,
      e.g. ``jnp.bfloat16`` to halve the bytes of both all-to-alls at a
      relative rounding error of at most 2^-8 per element each way; Newton–Schulz
      still runs at the ``polar``'s dtype. ``None``: float32. Static: under
      ``optax.inject_hyperparams`` name it in ``static_args``. Off a mesh it
      changes nothing (see :func:`~optax_lmo.scale_by_norm`).
    keep_prob: update each spectral leaf with this probability, in ``(0, 1]``, per
      step (Drop-Muon, :func:`~optax_lmo.contrib.drop_leaves`): a dropped leaf neither moves
      nor pays for its polar factor, and its momentum keeps accumulating. A
      group's ``keep_prob`` overrides it. ``None`` (the default): every leaf
      every step. Sampled leaves are batched apart from the others: on one
      device each runs its polar factor under a ``lax.cond``; on a mesh they go
      to their owner devices like the others, and an owner skips each dropped
      matrix (one ``lax.cond`` per matrix). Injected
      (``optax.inject_hyperparams``) it samples every spectral leaf, even at 1.
    seed: seed of those draws (static: under ``optax.inject_hyperparams`` name
      it in ``static_args``, or it is taken as a number and still only seeds).
    row_norm: NorMuon's row normalization between the LMO and the radius: each
      neuron's step divided by its running RMS, the Frobenius norm kept
      (:func:`~optax_lmo.contrib.scale_by_row_rms`, second-moment decay 0.95).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Every numeric argument can be
    injected with ``optax.inject_hyperparams``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optax_lmo as ol
    >>> params = {"w": jnp.eye(4), "b": jnp.zeros(4)}
    >>> rules = [("w", ol.Group(ol.norms.Spectral(), radius=1.0)),
    ...          ("b", ol.Group(ol.norms.BiasRMS()))]
    >>> tx = ol.scion(0.1, rules=rules)
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
  return lmo_chain.optimizer(settings.Options(
      "scion", learning_rate, beta=beta, nesterov=nesterov, weight_decay=1.0,
      clip_to_dual_norm=clip_to_dual_norm, polar=polar, mu_dtype=mu_dtype,
      distribute=distribute, exchange_dtype=exchange_dtype, keep_prob=keep_prob, seed=seed,
      row_norm=row_norm,
  ), rules)


def unconstrained_scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rules: Any = None,
    beta: chex.Numeric = 0.9,
    nesterov: bool = False,
    weight_decay: chex.Numeric = 0.0,
    clip_to_dual_norm: bool = False,
    polar: Polar | None = None,
    mu_dtype: Any = None,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
    keep_prob: chex.Numeric | None = None,
    seed: int = 0,
    row_norm: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Unconstrained Scion (uSCG): steepest descent under a per-layer norm.

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W \leftarrow W - \gamma_t\, (\rho\, \mathrm{lmo}(d) + \mu W)

  With ``weight_decay = mu`` this equals :func:`scion` with radius ``rho / mu``
  and learning rate ``mu gamma``.

  Without weight decay only the step ``gamma rho`` matters: the default rules
  (radii 1 / 3 / 10 / 1, not Scion's 1 / 48 / 160 / 1) at ``2**-7`` step a
  hidden matrix by 0.023 as Scion does at its defaults, and ``2**-7`` was the
  best of a 1000-step learning-rate sweep at these radii (``docs/radii.md``);
  with :func:`~optax_lmo.infer_rules`' radii divide it by 16.

  Args:
    learning_rate: ``gamma``, a finite number ``>= 0`` or an optax schedule;
      checked as in :func:`scion`.
    rules: routing, as in :func:`scion`; ``None`` uses
      ``default_rules(hidden_radius=3.0, output_radius=10.0)``.
    beta: momentum (decay of the running average); 0 disables it.
    nesterov: feed ``beta d + (1 - beta) g`` to the LMO.
    weight_decay: ``mu``; a group's ``weight_decay`` overrides it for its leaves.
    clip_to_dual_norm: clipped step ``gamma min(rho, ||d||_*) lmo(d)``.
    polar: :class:`~optax_lmo.Polar` options for every spectral leaf.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`scion`).
    distribute: whole-matrix ownership on a mesh, as in :func:`scion`.
    exchange_dtype: the dtype of that exchange, as in :func:`scion`.
    keep_prob, seed: randomized layer updates, as in :func:`scion`.
    row_norm: NorMuon's row normalization between the LMO and the radius: each
      neuron's step divided by its running RMS, the Frobenius norm kept
      (:func:`~optax_lmo.contrib.scale_by_row_rms`, second-moment decay 0.95).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.unconstrained_scion(0.5, beta=0.0)
    >>> u, _ = tx.update({"b": jnp.array([3.0, -4.0])}, tx.init({"b": jnp.zeros(2)}))
    >>> [round(float(v), 4) for v in u["b"]]  # -0.5 * b / rms(b)
    [-0.4243, 0.5657]
  """
  if rules is None:
    rules = rules_lib.default_rules(hidden_radius=rules_lib.USCG_HIDDEN_RADIUS,
                                    output_radius=rules_lib.USCG_OUTPUT_RADIUS)
  return lmo_chain.optimizer(settings.Options(
      "unconstrained_scion", learning_rate, beta=beta, nesterov=nesterov,
      weight_decay=weight_decay, clip_to_dual_norm=clip_to_dual_norm, polar=polar,
      mu_dtype=mu_dtype, distribute=distribute, exchange_dtype=exchange_dtype,
      keep_prob=keep_prob, seed=seed, row_norm=row_norm,
  ), rules)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.95,
    nesterov: bool = True,
    bias_correction: bool = False,
    weight_decay: chex.Numeric = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: chex.Numeric = 0.9,
    adam_b2: chex.Numeric = 0.999,
    adam_eps: chex.Numeric = 1e-8,
    adam_weight_decay: chex.Numeric = 0.0,
    adam_nesterov: bool = False,
    rules: Any = None,
    polar: Polar | None = None,
    mu_dtype: Any = None,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
    keep_prob: chex.Numeric | None = None,
    seed: int = 0,
    row_norm: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Muon: the spectral LMO on hidden matrices, AdamW on everything else.

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W \leftarrow W - \gamma_t\,(\rho\, \mathrm{lmo}(\beta d + (1-\beta) g) + \lambda W)

  Leaves whose group has a norm take the LMO step (uSCG); leaves whose group has
  ``norm=None`` go to ``optax.adamw`` with their own learning rate, betas and decay.

  Args:
    learning_rate: learning rate (or schedule) of the LMO group; checked as in
      :func:`scion`.
    beta: momentum, the decay of the running average.
    nesterov: Nesterov momentum.
    bias_correction: Adam-style bias correction of the momentum, as
      ``optax.contrib.muon`` does (it changes the Nesterov mix).
    weight_decay: decoupled decay ``lambda`` of the LMO group.
    adam_learning_rate: AdamW's learning rate (or schedule); ``None``: ``learning_rate``.
    adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW's hyperparameters.
    adam_nesterov: NAdam-style Nesterov in the AdamW group (``optax.contrib.muon``
      turns it on together with ``nesterov``).
    rules: routing; ``None`` uses :func:`~optax_lmo.muon_rules`.
    polar: :class:`~optax_lmo.Polar` options for the spectral leaves.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`scion`).
    distribute: whole-matrix ownership on a mesh, as in :func:`scion`.
    exchange_dtype: the dtype of that exchange, as in :func:`scion`.
    keep_prob, seed: randomized updates of the spectral leaves, as in :func:`scion`.
    row_norm: NorMuon's row normalization between the LMO and the radius: each
      neuron's step divided by its running RMS, the Frobenius norm kept
      (:func:`~optax_lmo.contrib.scale_by_row_rms`, second-moment decay 0.95).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; every numeric argument can be
    injected with ``optax.inject_hyperparams``.

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
  opts = settings.Options(
      "muon", learning_rate, beta=beta, nesterov=nesterov, bias_correction=bias_correction,
      weight_decay=weight_decay, polar=polar, mu_dtype=mu_dtype, distribute=distribute,
      exchange_dtype=exchange_dtype, keep_prob=keep_prob, seed=seed, row_norm=row_norm,
  )
  adam_tx = adamw("muon", learning_rate, adam_learning_rate, adam_b1, adam_b2, adam_eps,
                  adam_weight_decay, nesterov=adam_nesterov)
  return lmo_or_adamw("muon", opts, adam_tx, rules)


def adamw(name, learning_rate, adam_learning_rate, b1, b2, eps, weight_decay, nesterov=False):
  """AdamW with float32 state (the Muons' fallback), its hyperparameters checked under
  ``name``; ``adam_learning_rate=None`` takes ``learning_rate``."""
  checks.hyperparams(name, adam_learning_rate=adam_learning_rate, adam_b1=b1, adam_b2=b2,
                     adam_eps=eps, adam_weight_decay=weight_decay)
  return transforms.with_float32_state(optax.adamw(
      learning_rate if adam_learning_rate is None else adam_learning_rate,
      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, nesterov=nesterov))


def lmo_or_adamw(name, opts, adam_tx, rules):
  """The LMO chain of ``opts`` on the leaves the rules give a norm, ``adam_tx`` on the rest
  (``rules=None``: :func:`~optax_lmo.muon_rules`)."""
  def build(plan):
    labels = plan.treedef.unflatten(
        ["adam" if leaf.norm is None else "lmo" for leaf in plan.leaves])
    return optax.partition({"lmo": lmo_chain.chain(opts, plan), "adam": adam_tx}, labels)

  return route(rules_lib.muon_rules() if rules is None else rules, build, name=name,
               options=opts, needs_norm=False, fallback="AdamW")


def polargrad(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rules: Any = None,
    beta: chex.Numeric = 0.9,
    nesterov: bool = False,
    weight_decay: chex.Numeric = 0.0,
    polar: Polar | None = None,
    mu_dtype: Any = None,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
    keep_prob: chex.Numeric | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""PolarGrad: steepest descent under each leaf's norm, the LMO scaled by the dual norm.

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W \leftarrow W - \gamma_t\,(\|d\|_*\, \mathrm{lmo}(d) + \mu W)

  For a hidden matrix (the spectral norm) the step is ``||d||_nuc polar(d)``
  times the squared dimension factor ``d_out / d_in``; the dual norm comes from
  the LMO itself, ``||d||_* = <d, lmo(d)>``. Unlike the LMO step the update is
  degree-1 homogeneous in ``d`` (it shrinks with the gradient), so learning
  rates are on an SGD-like scale; radii are not used. Routing as in
  :func:`scion` (:func:`~optax_lmo.default_rules`: embeddings ColNorm, head
  RowNorm, vectors BiasRMS, hidden matrices Spectral).

  Args:
    learning_rate: ``gamma``, a finite number ``>= 0`` or an optax schedule;
      checked as in :func:`scion`.
    rules: routing, as in :func:`scion` (radii are ignored).
    beta: momentum (decay of the running average); 0 disables it.
    nesterov: feed ``beta d + (1 - beta) g`` to the LMO.
    weight_decay: ``mu``; a group's ``weight_decay`` overrides it for its leaves.
    polar: :class:`~optax_lmo.Polar` options for every spectral leaf.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`scion`).
    distribute: whole-matrix ownership on a mesh, as in :func:`scion`.
    exchange_dtype: the dtype of that exchange, as in :func:`scion`.
    keep_prob, seed: randomized updates of the spectral leaves, as in :func:`scion`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.contrib.polargrad(0.1, beta=0.0, rules=[(".*", ol.Group(ol.norms.Spectral()))],
    ...                   polar=ol.Polar(method="svd"))
    >>> g = jnp.diag(jnp.array([3.0, 1.0]))
    >>> u, _ = tx.update(g, tx.init(g))
    >>> [round(float(v), 4) for v in jnp.diag(u)]  # -0.1 * ||g||_nuc * polar(g) = -0.4 I
    [-0.4, -0.4]

  References:
    Lau, Long, Su, PolarGrad: A class of matrix-gradient optimizers from a
    unifying preconditioning perspective, arXiv:2505.21799, 2025.
  """
  return lmo_chain.optimizer(settings.Options(
      "polargrad", learning_rate, beta=beta, nesterov=nesterov, weight_decay=weight_decay,
      dual_scale=True, polar=polar, mu_dtype=mu_dtype, distribute=distribute,
      exchange_dtype=exchange_dtype, keep_prob=keep_prob, seed=seed,
  ), rules)


def sign_descent(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.9,
    weight_decay: chex.Numeric = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Signum: uSCG with the (unscaled) Sign LMO on every leaf.

  .. math::
    W \leftarrow W - \gamma_t\,(\mathrm{sign}(d) + \mu W)

  Args:
    learning_rate: ``gamma``, a finite number ``>= 0`` or an optax schedule;
      checked as in :func:`scion`.
    beta: momentum (decay of the running average); 0 disables it.
    weight_decay: ``mu``.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`scion`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.sign_descent(0.1, beta=0.0)
    >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
    >>> u.tolist()
    [-0.10000000149011612, 0.10000000149011612]
  """
  return _every_leaf(norms_lib.Sign(scaled=False), "sign_descent", learning_rate, beta=beta,
                     weight_decay=weight_decay, mu_dtype=mu_dtype)


def normalized_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.9,
    weight_decay: chex.Numeric = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Normalized SGD: uSCG with the Frobenius LMO ``g / ||g||_F`` on every leaf.

  Args:
    learning_rate: ``gamma``, a finite number ``>= 0`` or an optax schedule;
      checked as in :func:`scion`.
    beta: momentum (decay of the running average); 0 disables it.
    weight_decay: ``mu``.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`scion`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.normalized_sgd(1.0, beta=0.0)
    >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> [round(float(v), 4) for v in u]
    [-0.6, -0.8]
  """
  return _every_leaf(norms_lib.Frobenius(), "normalized_sgd", learning_rate, beta=beta,
                     weight_decay=weight_decay, mu_dtype=mu_dtype)


def _every_leaf(norm, name, learning_rate, *, beta, weight_decay, mu_dtype):
  """uSCG with one norm on every leaf (sign descent, normalized SGD)."""
  group = rules_lib.Group(norm, role="any", evidence=name)
  opts = settings.Options(name, learning_rate, beta=beta, weight_decay=weight_decay,
                           mu_dtype=mu_dtype)
  return lmo_chain.optimizer(opts, rules_lib.Rules((), fallback=lambda p, x: group))
