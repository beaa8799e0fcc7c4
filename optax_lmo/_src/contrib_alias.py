r"""The newest members of the family, as optimizers: NorMuon.

Each chains the public transforms like the optimizers of ``alias.py``, routed by
``muon_rules`` (the hidden matrices take the spectral LMO, the other leaves AdamW):

* :func:`normuon` is Muon with the row normalization
  (:func:`~optax_lmo.contrib.scale_by_row_rms`) between the LMO and the radius.
"""

from __future__ import annotations

from typing import Any

import chex
import optax

from optax_lmo._src import checks, lmo_chain, transforms
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.polar import Polar
from optax_lmo._src.route import route
from optax_lmo._src.settings import Options


def _adamw(name, learning_rate, adam_learning_rate, b1, b2, eps, weight_decay):
  """AdamW with float32 state, its hyperparameters checked under ``name``."""
  checks.hyperparams(name, adam_learning_rate=adam_learning_rate, adam_b1=b1, adam_b2=b2,
                     adam_eps=eps, adam_weight_decay=weight_decay)
  return transforms.with_float32_state(optax.adamw(
      learning_rate if adam_learning_rate is None else adam_learning_rate,
      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


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
    >>> tx = ol.contrib.normuon(0.02)
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> round(float(jnp.linalg.norm(u["w"])), 4)  # 0.02 ||polar(I)||_F = 0.02 sqrt(8)
    0.0566

  References:
    Li et al., NorMuon: Making Muon more efficient and scalable, arXiv:2510.05491, 2025.
  """
  opts = Options("normuon", learning_rate, beta=beta, nesterov=nesterov,
                 weight_decay=weight_decay, polar=polar, mu_dtype=mu_dtype, row_norm=True,
                 row_norm_beta2=beta2)
  adam_tx = _adamw("normuon", learning_rate, adam_learning_rate, adam_b1, adam_b2, adam_eps,
                   adam_weight_decay)

  def build(plan):
    labels = plan.treedef.unflatten(
        ["adam" if leaf.norm is None else "lmo" for leaf in plan.leaves])
    return optax.partition({"lmo": lmo_chain.chain(opts, plan), "adam": adam_tx}, labels)

  return route(rules_lib.muon_rules() if rules is None else rules, build, name="normuon",
               options=opts, needs_norm=False, fallback="AdamW")



__all__ = ["normuon"]
