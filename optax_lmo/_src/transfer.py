"""Learning-rate and batch-size transfer across scale for norm-based optimizers [NT].

The laws were measured by Filatov et al. for Scion-style optimizers (ColNorm ->
Spectral -> RowNorm) on Llama-style models trained on Nemotron-CC data, up to
1.3B parameters and 138B tokens, with the batch size ``B`` counted in sequences
of 4096 tokens and the horizon ``D`` in tokens:

  ``log2 lr* = 0.62 log2 B - 0.56 log2 D + 9.8``,  ``B* ~ D^0.45``.

Constrained Scion at this library's defaults keeps its best learning rate
across run lengths (``transfer_lr(..., law="scion")``, fitted on a small GPT).
Other models, data, norms or radii shift the constant and may shift the
exponents: treat the defaults as a starting point and re-fit them from a small
sweep of your own with :func:`fit_transfer_exponents`. All results are float32.
Token counts pass as Python numbers of any size; across a ``jax.jit`` boundary
pass them as floats (a Python int above ``2^31`` overflows int32).

References:
  Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The [NT] constants (B in 4096-token sequences, D in tokens).
BATCH_EXPONENT = 0.62
TOKENS_EXPONENT = -0.56
LOG2_CONSTANT = 9.8
BATCH_TOKENS_EXPONENT = 0.45
SEQUENCE_LENGTH = 4096
# (batch exponent, tokens exponent) per law of transfer_lr: [NT]'s, and the fit to constrained
# Scion at the library's defaults (benchmarks/results/transfer.json, between grid points).
LAWS = {"nt": (BATCH_EXPONENT, TOKENS_EXPONENT), "scion": (0.42, -0.04)}


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def optimal_lr(
    batch: jax.typing.ArrayLike,
    tokens: jax.typing.ArrayLike,
    *,
    batch_exponent: jax.typing.ArrayLike = BATCH_EXPONENT,
    tokens_exponent: jax.typing.ArrayLike = TOKENS_EXPONENT,
    log2_constant: jax.typing.ArrayLike = LOG2_CONSTANT,
    sequence_length: int = SEQUENCE_LENGTH,
) -> jax.Array:
  r"""The [NT] optimal learning rate for a batch size and a training horizon.

  .. math::
    \log_2 \eta^* = a \log_2 B + b \log_2 D + c, \qquad
    (a, b, c) = (0.62, -0.56, 9.8)

  with ``B`` in sequences of 4096 tokens (``batch * sequence_length / 4096``)
  and ``D`` in tokens. Measured on Llama-style models and Nemotron-CC data up to
  1.3B parameters and 138B tokens: a starting point; prefer :func:`transfer_lr`
  from a tuned proxy run, or re-fit with :func:`fit_transfer_exponents`.

  Args:
    batch: the batch size, in sequences of ``sequence_length`` tokens.
    tokens: the training horizon ``D`` in tokens.
    batch_exponent: ``a``.
    tokens_exponent: ``b``.
    log2_constant: ``c``.
    sequence_length: tokens per sequence of ``batch``.

  Returns:
    The learning rate, a float32 scalar (or the broadcast shape of the inputs).

  Examples:
    >>> import optax_lmo as ol
    >>> lr = ol.contrib.optimal_lr(batch=128, tokens=2**33)   # 0.62*7 - 0.56*33 + 9.8 = -4.34
    >>> round(float(lr), 5)
    0.04938

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  b = _f32(batch) * (sequence_length / SEQUENCE_LENGTH)
  log2_lr = (
      _f32(batch_exponent) * jnp.log2(b)
      + _f32(tokens_exponent) * jnp.log2(_f32(tokens))
      + _f32(log2_constant)
  )
  return jnp.exp2(log2_lr)


def transfer_lr(
    lr0: jax.typing.ArrayLike,
    batch0: jax.typing.ArrayLike,
    tokens0: jax.typing.ArrayLike,
    batch: jax.typing.ArrayLike,
    tokens: jax.typing.ArrayLike,
    *,
    law: str = "nt",
    batch_exponent: jax.typing.ArrayLike | None = None,
    tokens_exponent: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Moves a learning rate tuned at ``(batch0, tokens0)`` to ``(batch, tokens)``.

  .. math::
    \eta = \eta_0 \, (B / B_0)^{a} \, (D / D_0)^{b}

  The ratio form of :func:`optimal_lr`: the constant cancels, and so do the
  units of ``B`` and ``D`` (use the same ones on both sides; tokens per step for
  ``B`` when the sequence length changes too). ``law`` picks ``(a, b)``:

  * ``"nt"``: [NT]'s ``(0.62, -0.56)`` (Llama-style models, Nemotron-CC, up to
    1.3B parameters and 138B tokens). When the batch also follows
    :func:`transfer_batch` (``B ~ D^0.45``) the net law is ``lr ~ D^-0.28``.
  * ``"scion"``: ``(0.42, -0.04)``, fitted to constrained Scion at the
    library's defaults (radii 48 and 160 from :func:`~optax_lmo.init_params`, the
    learning rate decaying over the last half) on a 4-layer, width-128 character
    GPT from 250 to 2000 steps and batches 8 to 64 (``benchmarks/transfer.py``;
    one model, one seed per run). The horizon barely moves it; the batch does.
    From the base point: ``transfer_lr(2**-11, 16 * 128, 16 * 128 * 1000,
    batch * seq, tokens, law="scion")``.

  An exponent passed as a number replaces the law's (re-fit yours with
  :func:`fit_transfer_exponents`).

  Args:
    lr0: the learning rate tuned on the proxy run.
    batch0: the proxy run's batch size.
    tokens0: the proxy run's horizon in tokens.
    batch: the new batch size (same units as ``batch0``).
    tokens: the new horizon in tokens.
    law: ``"nt"`` or ``"scion"``, where the exponents come from.
    batch_exponent: ``a``, instead of the law's.
    tokens_exponent: ``b``, instead of the law's.

  Returns:
    The learning rate, a float32 scalar (or the broadcast shape of the inputs).

  Examples:
    >>> import optax_lmo as ol
    >>> lr = ol.contrib.transfer_lr(2**-6, batch0=32, tokens0=2**30, batch=128, tokens=2**33)
    >>> round(float(lr), 6)   # 2^(-6 + 0.62*2 - 0.56*3)
    0.011518
    >>> import math
    >>> lr = ol.contrib.transfer_lr(2**-11, 16 * 128, 16 * 128 * 1000,   # Scion's base point
    ...                             64 * 128, 64 * 128 * 4000, law="scion")
    >>> round(math.log2(float(lr)), 2)   # -11 + 2 a + 4 b: batch x4, tokens x16
    -10.32

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  if law not in LAWS:
    raise ValueError(f"transfer_lr: unknown law={law!r}; choose from {sorted(LAWS)}.")
  a, b = LAWS[law]
  batch_exponent = a if batch_exponent is None else batch_exponent
  tokens_exponent = b if tokens_exponent is None else tokens_exponent
  log2_ratio = _f32(batch_exponent) * (jnp.log2(_f32(batch)) - jnp.log2(_f32(batch0))) + _f32(
      tokens_exponent
  ) * (jnp.log2(_f32(tokens)) - jnp.log2(_f32(tokens0)))
  return _f32(lr0) * jnp.exp2(log2_ratio)


def transfer_batch(
    batch0: jax.typing.ArrayLike,
    tokens0: jax.typing.ArrayLike,
    tokens: jax.typing.ArrayLike,
    *,
    exponent: jax.typing.ArrayLike = BATCH_TOKENS_EXPONENT,
) -> jax.Array:
  r"""Moves an optimal batch size found at ``tokens0`` to a horizon of ``tokens``.

  .. math::
    B^* = B_0 \, (D / D_0)^{0.45}

  Measured in [NT] (Llama-style models, Nemotron-CC, up to 1.3B parameters and
  138B tokens). Round the result to a batch your hardware takes; near the
  optimum the loss is flat in ``B`` if the learning rate follows ``lr ~ sqrt(B)``.

  Args:
    batch0: the optimal batch size at ``tokens0``.
    tokens0: the proxy horizon in tokens.
    tokens: the new horizon in tokens.
    exponent: the exponent of ``D``.

  Returns:
    The batch size, a float32 scalar (not rounded).

  Examples:
    >>> import optax_lmo as ol
    >>> round(float(ol.contrib.transfer_batch(64, tokens0=2**30, tokens=2**40)), 1)   # 64 * 2^4.5
    1448.2

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  log2_ratio = _f32(exponent) * (jnp.log2(_f32(tokens)) - jnp.log2(_f32(tokens0)))
  return _f32(batch0) * jnp.exp2(log2_ratio)


def norm_transfer_schedule(
    learning_rate: jax.typing.ArrayLike | None,
    batch: jax.typing.ArrayLike,
    tokens: jax.typing.ArrayLike,
    *,
    proxy: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
    base_schedule: optax.Schedule | None = None,
    batch_exponent: jax.typing.ArrayLike = BATCH_EXPONENT,
    tokens_exponent: jax.typing.ArrayLike = TOKENS_EXPONENT,
    log2_constant: jax.typing.ArrayLike = LOG2_CONSTANT,
    sequence_length: int = SEQUENCE_LENGTH,
) -> optax.Schedule:
  r"""A learning-rate schedule whose peak is transferred from a proxy run [NT].

  .. math::
    \eta(t) = \eta_{peak}\, s(t), \qquad
    \eta_{peak} = \eta_0 \, (B / B_0)^{0.62} \, (D / D_0)^{-0.56}

  where ``s`` is ``base_schedule``, a schedule with peak 1 (warmup, cosine or
  linear decay, ...; ``None``: constant 1). With ``learning_rate=None`` and no
  proxy the peak is the absolute law :func:`optimal_lr`. The exponents were
  measured on Llama-style models and Nemotron-CC data up to 1.3B parameters and
  138B tokens: re-fit them with :func:`fit_transfer_exponents` for other setups.

  Args:
    learning_rate: ``eta_0``, the peak learning rate tuned on the proxy run;
      ``None`` to use :func:`optimal_lr` instead.
    batch: the new run's batch size ``B`` (the same units as the proxy's; in
      sequences of ``sequence_length`` tokens for the absolute law).
    tokens: the new run's horizon ``D`` in tokens.
    proxy: ``(batch0, tokens0)`` of the proxy run; required with a
      ``learning_rate``.
    base_schedule: a unit-peak schedule ``step -> multiplier``, e.g.
      ``optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps)``.
    batch_exponent: the exponent of ``B``.
    tokens_exponent: the exponent of ``D``.
    log2_constant: the constant of the absolute law (without a proxy).
    sequence_length: tokens per sequence of ``batch`` (absolute law only).

  Returns:
    An ``optax.Schedule``: ``step -> learning rate`` in float32, usable under
    ``jax.jit`` wherever optax takes a ``ScalarOrSchedule``.

  Examples:
    >>> import optax, optax_lmo as ol
    >>> unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000)
    >>> sched = ol.norm_transfer_schedule(
    ...     2**-6, batch=128, tokens=2**33, proxy=(32, 2**30), base_schedule=unit)
    >>> round(float(sched(100)), 6), float(sched(0))
    (0.011518, 0.0)
    >>> opt = optax.sgd(sched)

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  if learning_rate is None and proxy is None:
    peak = optimal_lr(
        batch,
        tokens,
        batch_exponent=batch_exponent,
        tokens_exponent=tokens_exponent,
        log2_constant=log2_constant,
        sequence_length=sequence_length,
    )
  elif learning_rate is not None and proxy is not None:
    batch0, tokens0 = proxy
    peak = transfer_lr(
        learning_rate,
        batch0,
        tokens0,
        batch,
        tokens,
        batch_exponent=batch_exponent,
        tokens_exponent=tokens_exponent,
    )
  else:
    raise ValueError(
        "norm_transfer_schedule: pass both learning_rate (the proxy's tuned lr) and"
        " proxy=(batch0, tokens0) to transfer from a proxy run, or neither to use"
        f" the absolute law optimal_lr; got learning_rate={learning_rate!r},"
        f" proxy={proxy!r}."
    )

  def schedule(count: jax.typing.ArrayLike) -> jax.Array:
    if base_schedule is None:
      return peak
    return (peak * base_schedule(count)).astype(jnp.float32)

  return schedule


_PRESETS = {
    # [NT]: input : hidden : output = 1 : 1/8 : 1 (up to 6% lower loss).
    "nt": (1.0, 1.0 / 8.0, 1.0),
    "uniform": (1.0, 1.0, 1.0),
}


def group_lr_multipliers(preset: str = "nt") -> dict[str, float]:
  r"""Per-group learning-rate multipliers for the input, hidden and output layers.

  .. math::
    \eta_{input} : \eta_{hidden} : \eta_{output} = 1 : 1/8 : 1

  The ``"nt"`` preset is the ratio [NT] found best (up to 6% lower loss than
  one shared rate, Llama-style models up to 1.3B parameters); ``"uniform"`` is
  all ones. Each value is a :class:`~optax_lmo.Group`'s ``lr_mult`` for that role.

  Args:
    preset: ``"nt"`` or ``"uniform"``.

  Returns:
    ``{"input": ..., "hidden": ..., "output": ...}``.

  Examples:
    >>> import optax_lmo as ol
    >>> from optax_lmo._src.transfer import group_lr_multipliers
    >>> group_lr_multipliers()
    {'input': 1.0, 'hidden': 0.125, 'output': 1.0}
    >>> hidden = ol.Group(ol.norms.Spectral(), 3.0, group_lr_multipliers()["hidden"])

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  if preset not in _PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose from {sorted(_PRESETS)}.")
  return dict(zip(("input", "hidden", "output"), _PRESETS[preset], strict=True))


class TransferFit(NamedTuple):
  """A fitted law ``log2 lr* = batch_exponent log2 B + tokens_exponent log2 D + log2_constant``."""

  batch_exponent: float  # a, the exponent of the batch size
  tokens_exponent: float  # b, the exponent of the horizon in tokens
  log2_constant: float  # c, in the units of the sweep's batch sizes
  rms_residual: float  # root-mean-square residual of log2 lr*, in octaves

  def lr(self, batch: jax.typing.ArrayLike, tokens: jax.typing.ArrayLike) -> jax.Array:
    """The fitted optimal learning rate (``batch`` in the sweep's units), float32."""
    return optimal_lr(
        batch,
        tokens,
        batch_exponent=self.batch_exponent,
        tokens_exponent=self.tokens_exponent,
        log2_constant=self.log2_constant,
    )


def fit_transfer_exponents(
    results: Sequence[tuple[float, float, float]],
    *,
    batch_exponent: float | None = None,
    tokens_exponent: float | None = None,
) -> TransferFit:
  r"""Fits the [NT] transfer law to your own sweep by least squares in log space.

  .. math::
    \min_{a, b, c} \sum_k \left(a \log_2 B_k + b \log_2 D_k + c
      - \log_2 \eta^*_k\right)^2

  Each result is ``(batch, tokens, best_lr)``: the best learning rate of a
  sweep at one ``(B, D)``. An exponent passed as a number is held fixed (e.g.
  ``batch_exponent=0.62`` when the sweep used a single batch size). The [NT]
  values (0.62, -0.56, 9.8; Llama-style models, Nemotron-CC, up to 1.3B
  parameters and 138B tokens) are where to start; this tells you how far your
  setup is from them.

  Args:
    results: ``[(batch, tokens, best_lr), ...]``, in any consistent units.
    batch_exponent: hold ``a`` fixed at this value (``None``: fit it).
    tokens_exponent: hold ``b`` fixed at this value (``None``: fit it).

  Returns:
    A :class:`TransferFit` of Python floats; ``fit.lr(batch, tokens)`` evaluates it.

  Examples:
    >>> import optax_lmo as ol
    >>> sweep = [(b, d, float(ol.contrib.optimal_lr(b, d)))
    ...          for b in (16, 64, 256) for d in (2**28, 2**31)]
    >>> fit = ol.contrib.fit_transfer_exponents(sweep)
    >>> round(fit.batch_exponent, 3), round(fit.tokens_exponent, 3), round(fit.log2_constant, 2)
    (0.62, -0.56, 9.8)

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  data = np.asarray(results, np.float64)
  if data.ndim != 2 or data.shape[1] != 3:
    raise ValueError(
        f"results must be a sequence of (batch, tokens, best_lr) triples; got shape {data.shape}."
    )
  if np.any(data <= 0) or not np.all(np.isfinite(data)):
    raise ValueError("results must hold positive, finite batch sizes, token counts and rates.")
  log_b, log_d, log_lr = np.log2(data).T
  target = log_lr.copy()
  columns, names = [], []
  for log_x, fixed, name in ((log_b, batch_exponent, "batch"), (log_d, tokens_exponent, "tokens")):
    if fixed is None:
      columns.append(log_x)
      names.append(name)
    else:
      target -= fixed * log_x
  design = np.stack([*columns, np.ones_like(target)], axis=1)
  if np.linalg.matrix_rank(design) < design.shape[1]:
    raise ValueError(
        f"The sweep cannot determine the {' and '.join(names)} exponent(s) and the"
        " constant: it needs at least as many distinct (batch, tokens) points as unknowns,"
        " varying in each fitted quantity; add runs or hold an exponent fixed"
        " (batch_exponent=0.62 or tokens_exponent=-0.56)."
    )
  coef, *_ = np.linalg.lstsq(design, target, rcond=None)
  fitted = dict(zip(names, coef[:-1], strict=True))
  a = fitted.get("batch", batch_exponent)
  b = fitted.get("tokens", tokens_exponent)
  residual = log_lr - (a * log_b + b * log_d + coef[-1])
  return TransferFit(
      batch_exponent=float(a),
      tokens_exponent=float(b),
      log2_constant=float(coef[-1]),
      rms_residual=float(np.sqrt(np.mean(residual**2))),
  )


__all__ = [
    "TransferFit",
    "fit_transfer_exponents",
    "group_lr_multipliers",
    "norm_transfer_schedule",
    "optimal_lr",
    "transfer_batch",
    "transfer_lr",
]
