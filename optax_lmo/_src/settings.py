"""Each leaf's settings, decided once: the rules' group merged with the optimizer's options.

An optimizer's arguments become one frozen :class:`Options` value (checked once,
when it is built). At ``init`` :func:`settle` merges it with the group each leaf's
rule gave (:class:`~optax_lmo._src.rules.Plan`) into one :class:`Leaf` per
parameter: norm (with the optimizer's polar options), matrix view, radius,
learning-rate multiplier, weight decay, keep probability and state dtype. This
is the only place where an optimizer argument or a group field turns into a
leaf's setting; the chain, :func:`~optax_lmo.describe`, Drop-Muon and the
exchange read the leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from optax_lmo._src import checks
from optax_lmo._src import exchange as exchange_lib
from optax_lmo._src import momentum as momentum_lib
from optax_lmo._src.norms import Norm
from optax_lmo._src.polar import Polar
from optax_lmo._src.spec import MatrixSpec

INJECTED = "injected"  # a setting injected with optax.inject_hyperparams: known only per step


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
      Scion is ``mu = 1``. A group's ``weight_decay`` overrides it.
    clip_to_dual_norm: step ``gamma min(rho, ||d||_*) lmo(d)`` (clipped Scion).
    dual_scale: step ``gamma ||d||_* lmo(d)``, no radius (PolarGrad).
    polar: :class:`~optax_lmo.Polar` options put into every spectral norm.
    mu_dtype: dtype of the momentum state (``None``: follows the parameters).
    distribute: whole-matrix ownership on a device mesh (``None``: when on one).
    exchange_dtype: the dtype of that exchange (``None``: float32).
    keep_prob: probability a whole-matrix leaf is updated at a step (``None``: always).
    seed: seed of the ``keep_prob`` draws.
    row_norm: NorMuon's row normalization of the spectral leaves' directions
      (``normuon.scale_by_row_rms``), between the LMO and the radius.
    row_norm_beta2: the decay of its per-neuron second moment.
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
  row_norm: bool = False
  row_norm_beta2: Any = 0.95

  def __post_init__(self):
    checks.hyperparams(self.name, learning_rate=self.learning_rate, beta=self.beta,
                       weight_decay=self.weight_decay, keep_prob=self.keep_prob,
                       row_norm_beta2=self.row_norm_beta2)
    exchange_lib.check_dtype(self.exchange_dtype, self.name)


@dataclasses.dataclass(frozen=True)
class Leaf:
  """Every setting of one leaf, as :func:`settle` decided it.

  Attributes:
    norm: the leaf's norm, with the optimizer's polar options; ``None``: no LMO
      (the fallback optimizer's leaf, or no rule matched).
    spec: its matrix view (``None``: the norm's default).
    radius: ``rho`` (``None`` without a norm).
    lr_mult: the learning-rate multiplier (``None`` without a norm).
    weight_decay: ``mu``: a number, :data:`INJECTED`, or ``None`` (no optimizer, or no norm).
    keep_prob: the probability that the leaf is updated at a step: a number,
      :data:`INJECTED`, or ``None`` (every step).
    state_dtype: the dtype of its momentum (``None``: the parameter's, float32
      for low-precision parameters).
    role: what the leaf does in the model (from the group; informational).
    evidence: why it got its group (from the group; informational).
  """

  norm: Norm | None = None
  spec: MatrixSpec | None = None
  radius: float | None = None
  lr_mult: float | None = None
  weight_decay: Any = None
  keep_prob: Any = None
  state_dtype: Any = None
  role: str | None = None
  evidence: str = ""


def _static(x: Any) -> Any:
  """``x`` if it is a Python number (or ``None``), else :data:`INJECTED` (an array or tracer)."""
  return x if x is None or isinstance(x, (int, float)) else INJECTED


def settle(plan, options: Options | None = None, dtypes=None, *, static: bool = False):
  """``plan`` with one :class:`Leaf` per parameter: each leaf's every setting.

  A group's own ``weight_decay`` and ``keep_prob`` override the optimizer's; the
  optimizer's ``keep_prob`` applies to the leaves whose norm needs whole matrices
  (the polar factor is what a dropped leaf saves). The state dtype is
  :func:`~optax_lmo._src.momentum.state_dtype`'s.

  Args:
    plan: a :class:`~optax_lmo._src.rules.Plan` (the rules' groups per leaf).
    options: the optimizer's :class:`Options`; ``None``: the rules alone (no
      decay, keep probability or state dtype).
    dtypes: each leaf's dtype (``None``: unknown, e.g. a placeholder tree).
    static: keep only what is known before the first step: an injected (array
      or traced) value becomes :data:`INJECTED`. What ``init`` stores and
      ``describe`` shows.

  Returns:
    The plan with its ``leaves`` set.
  """
  dtypes = dtypes if dtypes is not None else (None,) * len(plan.groups)
  fix = _static if static else (lambda x: x)
  leaves = []
  for g, dtype in zip(plan.groups, dtypes, strict=True):
    if g is None:
      leaves.append(Leaf())
      continue
    if g.norm is None:
      leaves.append(Leaf(role=g.role, evidence=g.evidence))
      continue
    norm, decay, keep, state = g.norm, g.weight_decay, g.keep_prob, None
    if options is not None:
      norm = norm if options.polar is None else norm.with_polar(options.polar)
      decay = options.weight_decay if decay is None else decay
      if keep is None and norm.whole_matrices:
        keep = options.keep_prob
      state = options.mu_dtype if dtype is None else momentum_lib.state_dtype(
          dtype, options.mu_dtype)
    leaves.append(Leaf(norm, g.spec, g.radius, g.lr_mult, fix(decay), fix(keep),
                       None if state is None else jnp.dtype(state), g.role, g.evidence))
  sampled = options is not None and (options.keep_prob is not None or any(
      g is not None and g.norm is not None and g.keep_prob is not None for g in plan.groups))
  return dataclasses.replace(plan, leaves=tuple(leaves), sampled=sampled)


def bind(plan, options: Options | None):
  """``plan`` (settled with ``static=True``) with each :data:`INJECTED` setting replaced by
  the value ``options`` holds now (a traced value inside an update of an optimizer under
  ``optax.inject_hyperparams``); every other setting is the plan's own."""
  if options is None or plan.leaves is None:
    return plan
  live = {"weight_decay": options.weight_decay, "keep_prob": options.keep_prob}

  def one(leaf: Leaf) -> Leaf:
    changes = {k: v for k, v in live.items() if getattr(leaf, k) is INJECTED}
    return dataclasses.replace(leaf, **changes) if changes else leaf

  return dataclasses.replace(plan, leaves=tuple(one(leaf) for leaf in plan.leaves))


__all__ = ["INJECTED", "Leaf", "Options", "bind", "settle"]
