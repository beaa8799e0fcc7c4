r"""The newest members of the family, as optimizers: NorMuon and the hyperball (MuonH).

Each chains the public transforms like the optimizers of ``alias.py``, routed by
``muon_rules`` (the hidden matrices take the spectral LMO, the other leaves AdamW):

* :func:`normuon` is Muon with the row normalization
  (:func:`~optax_lmo.contrib.scale_by_row_rms`) between the LMO and the radius;
* :func:`hyperball` moves each hidden matrix along its polar factor by ``lr`` times
  its own Frobenius norm and puts it back on the sphere of its initial norm
  (``hyperball.scale_by_hyperball``); the output head does the same along Adam's
  direction (AdamH).
"""

from __future__ import annotations

from typing import Any

import chex
import optax

from optax_lmo._src import alias, transforms
from optax_lmo._src import momentum as momentum_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.hyperball import scale_by_hyperball
from optax_lmo._src.polar import Polar
from optax_lmo._src.route import route
from optax_lmo._src.settings import Options


def normuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.95,
    beta2: chex.Numeric = 0.95,
    nesterov: bool = True,
    weight_decay: chex.Numeric = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: chex.Numeric = 0.9,
    adam_b2: chex.Numeric = 0.999,
    adam_eps: chex.Numeric = 1e-8,
    adam_weight_decay: chex.Numeric = 0.0,
    rules: Any = None,
    polar: Polar | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon: Muon with each neuron's step divided by its running RMS.

  .. math::
    O = \mathrm{lmo}(\beta d + (1-\beta) g), \qquad
    W \leftarrow W - \gamma_t\,(\rho\, \mathrm{rownorm}_{\beta_2}(O) + \lambda W)

  where ``rownorm`` is :func:`~optax_lmo.contrib.scale_by_row_rms` (the Frobenius norm
  of ``O`` kept), on the leaves with a norm (:func:`~optax_lmo.muon_rules`: the hidden
  matrices); AdamW on the rest. ``ol.muon(lr, row_norm=True)`` is the same optimizer at
  ``beta2=0.95``.

  Args:
    learning_rate: learning rate (or schedule) of the spectral leaves.
    beta: momentum, the decay of the running average.
    beta2: decay of the per-neuron second moment, in ``[0, 1)``.
    nesterov: Nesterov momentum.
    weight_decay: decoupled decay of the spectral leaves.
    adam_learning_rate: AdamW's learning rate (or schedule); ``None``: ``learning_rate``.
    adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW's hyperparameters.
    rules: routing; ``None`` uses :func:`~optax_lmo.muon_rules`.
    polar: :class:`~optax_lmo.Polar` options for the spectral leaves.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`~optax_lmo.scion`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; every numeric argument can be
    injected with ``optax.inject_hyperparams``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> params = {"w": jnp.eye(8), "b": jnp.zeros(8)}
    >>> tx = ol.contrib.normuon(0.02, polar=ol.Polar(method="svd"))
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> round(float(jnp.linalg.norm(u["w"])), 4)  # 0.02 ||polar(I)||_F = 0.02 sqrt(8)
    0.0566

  References:
    Li et al., NorMuon: Making Muon more efficient and scalable, arXiv:2510.05491, 2025.
  """
  opts = Options("normuon", learning_rate, beta=beta, nesterov=nesterov,
                 weight_decay=weight_decay, polar=polar, mu_dtype=mu_dtype, row_norm=True,
                 row_norm_beta2=beta2)
  adam_tx = alias.adamw("normuon", learning_rate, adam_learning_rate, adam_b1, adam_b2,
                        adam_eps, adam_weight_decay)
  return alias.lmo_or_adamw("normuon", opts, adam_tx, rules)


def hyperball(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: chex.Numeric = 0.95,
    nesterov: bool = True,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: chex.Numeric = 0.9,
    adam_b2: chex.Numeric = 0.999,
    adam_eps: chex.Numeric = 1e-8,
    adam_weight_decay: chex.Numeric = 0.0,
    rules: Any = None,
    polar: Polar | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The hyperball (MuonH): each matrix moves by ``lr ||W||_F`` and stays on its sphere.

  For every matrix ``W`` of a leaf with a norm (:func:`~optax_lmo.muon_rules`: the hidden
  matrices), with ``r = ||W_0||_F`` its norm at ``init`` and ``u`` the leaf's LMO
  direction (the polar factor for a spectral leaf):

  .. math::
    d \leftarrow \beta d + (1-\beta) g, \qquad
    W' = W - \gamma_t\, r\, \frac{u}{\|u\|_F}, \qquad
    W \leftarrow r\, \frac{W'}{\|W'\|_F}

  The output head (a matrix the rules send to the fallback with role ``"output"``)
  does the same along Adam's direction ``m / (sqrt(v) + eps)`` (AdamH, with
  ``adam_b1``, ``adam_b2``, ``adam_eps``); the embeddings and the vectors take
  AdamW at ``adam_learning_rate``. No weight decay on the sphere: the norm is fixed.
  The groups' ``radius``, ``weight_decay`` and ``lr_mult`` are not used (the
  radius is each matrix's own initial norm). A matrix that starts at zero stays
  at zero: give it a nonzero init or route it to AdamW.

  Unlike Scion's ball (``||W|| <= rho``, reached by the convex step ``(1 - gamma) W -
  gamma rho lmo(d)``, linear in ``gamma``), this is a sphere: a retraction after the
  step, with a step relative to ``||W||`` rather than a fixed radius, so it is its own
  optimizer rather than an option of :func:`~optax_lmo.scion` (``docs/optimizers.md``).

  Args:
    learning_rate: ``gamma``, the step relative to each matrix's norm (and AdamH's):
      a number or an optax schedule.
    beta: momentum of the sphere leaves, the decay of the running average.
    nesterov: Nesterov momentum on the sphere leaves.
    adam_learning_rate: AdamW's learning rate (or schedule) for the embeddings and
      vectors; ``None``: ``learning_rate``.
    adam_b1, adam_b2, adam_eps: Adam's hyperparameters (AdamW's and AdamH's).
    adam_weight_decay: AdamW's decay (not AdamH's).
    rules: routing; ``None`` uses :func:`~optax_lmo.muon_rules`.
    polar: :class:`~optax_lmo.Polar` options for the spectral leaves.
    mu_dtype: dtype of the momentum state (``None``: as in :func:`~optax_lmo.scion`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Every numeric argument can be
    injected with ``optax.inject_hyperparams``; the update is not linear in the
    learning rate (the retraction).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optax_lmo as ol
    >>> params = {"w": 2.0 * jnp.eye(4), "b": jnp.zeros(4)}
    >>> tx = ol.contrib.hyperball(0.1)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    >>> for _ in range(3):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> round(float(jnp.linalg.norm(params["w"])), 4)  # ||2 I||_F = 4, kept
    4.0

  References:
    MuonH and AdamH (the hyperball): weights and updates at a fixed Frobenius norm,
    arXiv:2606.16899, 2026; the JAX reference is Levanter's ``optim/muonh.py``.
  """
  # The options settle the polar factor and the state dtype into the plan (route).
  opts = Options("hyperball", learning_rate, beta=beta, polar=polar, mu_dtype=mu_dtype)
  adam_tx = alias.adamw("hyperball", learning_rate, adam_learning_rate, adam_b1, adam_b2,
                        adam_eps, adam_weight_decay)
  adamh_tx = transforms.with_float32_state(optax.chain(
      optax.scale_by_adam(b1=adam_b1, b2=adam_b2, eps=adam_eps),
      scale_by_hyperball(learning_rate)))

  def label(leaf, shape):
    if leaf.norm is not None:
      return "sphere"
    return "adamh" if leaf.role == "output" and len(shape) == 2 else "adam"

  def build(plan):
    sphere = optax.chain(
        momentum_lib.momentum(beta, nesterov=nesterov, mu_dtype=plan.settings("state_dtype")),
        transforms.scale_by_norm(plan.settings("norm"), specs=plan.settings("spec")),
        scale_by_hyperball(learning_rate, specs=plan.settings("spec")),
    )
    labels = plan.treedef.unflatten(list(map(label, plan.leaves, plan.shapes)))
    return optax.partition({"sphere": sphere, "adamh": adamh_tx, "adam": adam_tx}, labels)

  return route(rules_lib.muon_rules() if rules is None else rules, build, name="hyperball",
               options=opts, needs_norm=False, fallback="AdamW (AdamH if output)")


__all__ = ["hyperball", "normuon"]
