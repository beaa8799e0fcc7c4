"""The example's optimizers: defaults, schedules, the --drop and --adaptive-batch wrappers, QK-clip.

With ``--adaptive-batch ETA`` the optimizer is wrapped in
``optax_lmo.contrib.adaptive_batch``: every training step feeds it one micro-batch (the
configured ``--batch``) and it steps once the norm test passes. The run's
length (``--steps``), its data order, evaluations and checkpoints count
micro-batches, and so does the learning-rate schedule: the inner optimizer runs
at its peak rate and the schedule's factor ``schedule(n) / peak`` (``n``: the
micro-batches seen) scales each update it emits. Every optimizer here is linear
in its learning rate (the rate multiplies the whole update, decay included), so
this is the schedule evaluated at the data seen rather than the optimizer steps
taken, and the rate still decays to 0 at the end of the run.

With ``--qk-clip TAU`` the optimizer is chained with ``optax_lmo.contrib.qk_clip``
(``model.qk_clip``), and each step passes it the forward pass's per-head largest
attention logits (``train.train_step_qk_clip``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_lmo as ol
from benchmarks.gpt import checkpoint as ckpt_lib
from benchmarks.gpt import model as model_lib
from benchmarks.gpt import progressive

OPTIMIZERS = ("scion", "unconstrained_scion", "muon", "adamw", "optax_muon", "scion_hybrid",
              "hyperball")
POLAR_METHODS = ("auto", "newton_schulz", "gram_newton_schulz", "svd")  # auto: the library's
NS_COEFFS = ("polar_express", "jordan", "you5", "cubic", "aol")  # ol.Polar's coefficient presets
NS_PRECONDITIONINGS = ("frobenius", "aol")  # ol.Polar's preconditioning
# The defaults that depend on the optimizer, each the best run of a measured sweep (1000 steps
# of a 4-layer, width-128 GPT) at exactly these settings: scion (benchmarks/ablation.py) at the
# library's radii (48, 160) from ol.init_params, its lr decaying over the last 50% of the steps;
# scion_hybrid (ablation.py) at hidden radius 48 from Flax's init; unconstrained_scion
# (benchmarks/convergence.py) at radii 3 and 10 from the init on the norm sphere; AdamW and both
# Muons (convergence.py) from Flax's init.
# hyperball (benchmarks/newest.py) from Flax's init: its lr is a relative step, the fraction of
# each matrix's Frobenius norm it moves by.
DEFAULT_LR = {"scion": 2**-11, "unconstrained_scion": 2**-7, "muon": 0.01, "adamw": 1.5e-3,
              "optax_muon": 0.01, "scion_hybrid": 2**-12, "hyperball": 2**-7}
# (hidden, output): the model's defaults, infer_rules()'s
LIBRARY_RADII = (model_lib.GPTConfig.hidden_radius, model_lib.GPTConfig.output_radius)
DEFAULT_RADII = {"unconstrained_scion": (3.0, 10.0)}  # the others: the library's
DEFAULT_DECAY_FRAC = {"scion": 0.5}  # the share of the steps the lr decays over; the others: 0.3
DEFAULT_INIT = {"scion": "rms", "unconstrained_scion": "scion"}  # the others: Flax's (standard)
ROUTED = ("scion", "unconstrained_scion", "muon", "scion_hybrid", "hyperball")  # --blocks
ROW_NORM = ("scion", "unconstrained_scion", "muon", "scion_hybrid")  # take --row-norm


def resolve(cfg):
  """``cfg`` with the optimizer-dependent defaults (``lr``, ``beta``, ``init``, radii,
  ``decay_frac``) filled in.

  Idempotent: a field already set is kept.
  """
  muon_like = cfg.optimizer in ("muon", "optax_muon", "hyperball")
  hidden, output = DEFAULT_RADII.get(cfg.optimizer, LIBRARY_RADII)
  init = DEFAULT_INIT.get(cfg.optimizer, "standard")

  def pick(value, default):
    return default if value is None else value

  return dataclasses.replace(
      cfg, lr=pick(cfg.lr, DEFAULT_LR[cfg.optimizer]),
      beta=pick(cfg.beta, 0.95 if muon_like else 0.9), init=pick(cfg.init, init),
      hidden_radius=pick(cfg.hidden_radius, hidden), output_radius=pick(cfg.output_radius, output),
      decay_frac=pick(cfg.decay_frac, DEFAULT_DECAY_FRAC.get(cfg.optimizer, 0.3)))


def make_schedule(cfg, peak) -> optax.Schedule:
  """Linear warmup to ``peak``, constant, then to 0 at the end over ``decay_frac`` of the steps.

  The decay's shape (``cfg.schedule``): ``linear_decay``, ``cosine_decay`` (half a cosine) or
  ``sqrt_decay`` (``1 - sqrt(t)`` of the decay's progress ``t``); ``constant``: none.
  """
  decay = 0 if cfg.schedule == "constant" else round(cfg.decay_frac * cfg.steps)
  if cfg.schedule == "cosine_decay":
    tail = optax.cosine_decay_schedule(peak, max(decay, 1))
  elif cfg.schedule == "sqrt_decay":
    tail = lambda n: peak * (1.0 - jnp.sqrt(jnp.clip(n / max(decay, 1), 0.0, 1.0)))
  else:
    tail = optax.linear_schedule(peak, 0.0, decay)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, cfg.warmup), optax.constant_schedule(peak), tail],
      [cfg.warmup, cfg.steps - decay])


def polar_of(cfg) -> ol.Polar | None:
  """The ``ol.Polar`` that ``--polar``, ``--ns-coeffs``, ``--ns-steps`` and ``--ns-precondition``
  ask for; ``None`` when all four are at their defaults (the library's own polar factor)."""
  if (cfg.polar, cfg.ns_coeffs, cfg.ns_steps, cfg.ns_precondition) == (
      "auto", "polar_express", None, "frobenius"):
    return None
  return ol.Polar(method=cfg.polar, coeffs=cfg.ns_coeffs, steps=cfg.ns_steps,
                  preconditioning=cfg.ns_precondition)


def base_optimizer(cfg, gcfg: model_lib.GPTConfig, lr, adam_lr) -> optax.GradientTransformation:
  """The ``--optimizer`` at learning rates ``lr`` (``adam_lr``: Muons' AdamW part)."""
  polar = polar_of(cfg)
  nesterov = {} if cfg.nesterov is None else dict(nesterov=cfg.nesterov)
  kw = dict(beta=cfg.beta, weight_decay=cfg.weight_decay, **nesterov)
  row = dict(row_norm=True) if cfg.row_norm else {}  # NorMuon's row normalization
  if cfg.optimizer == "scion":  # constrained: its decay is fixed (weight_decay must be 0)
    return ol.scion(lr, rules=model_lib.rules(gcfg), beta=cfg.beta, polar=polar, **nesterov,
                    **row)
  if cfg.optimizer == "unconstrained_scion":
    return ol.unconstrained_scion(lr, rules=model_lib.rules(gcfg), polar=polar, **kw, **row)
  if cfg.optimizer == "muon":  # the model's hidden matrices (in its --blocks view), AdamW else
    rules = model_lib.muon_rules(gcfg)
    return ol.muon(lr, rules=rules, adam_learning_rate=adam_lr, polar=polar, **kw, **row)
  if cfg.optimizer == "scion_hybrid":  # constrained Scion on the hidden matrices, AdamW elsewhere
    rules = model_lib.muon_rules(gcfg, radius=cfg.hidden_radius)
    return ol.muon(lr, rules=rules, beta=cfg.beta, nesterov=bool(cfg.nesterov), weight_decay=1.0,
                   adam_learning_rate=adam_lr, polar=polar, **row)
  if cfg.optimizer == "hyperball":  # MuonH on the hidden matrices, AdamH on the head, AdamW else
    rules = model_lib.muon_rules(gcfg)
    return ol.contrib.hyperball(lr, rules=rules, beta=cfg.beta, adam_learning_rate=adam_lr,
                                polar=polar, **nesterov)
  if cfg.optimizer == "optax_muon":
    return optax.contrib.muon(lr, adam_learning_rate=adam_lr, **kw,
                              muon_weight_dimension_numbers=model_lib.optax_muon_dims)
  return optax.adamw(lr, b1=cfg.beta, weight_decay=cfg.weight_decay)


def make_optimizer(cfg, gcfg: model_lib.GPTConfig) -> optax.GradientTransformation:
  """The ``--optimizer`` with its schedule and rules, wrapped for --drop or --adaptive-batch,
  or chained with QK-clip (``--qk-clip``)."""
  cfg = resolve(cfg)
  if cfg.adaptive_batch is not None:  # constant inside; the schedule counts micro-batches
    inner = base_optimizer(cfg, gcfg, cfg.lr, cfg.adam_lr)
    return optax.chain(
        ol.contrib.adaptive_batch(inner, cfg.adaptive_batch,
                                  max_micro_batches=cfg.max_micro_batches),
        optax.scale_by_schedule(make_schedule(cfg, 1.0)))
  tx = base_optimizer(cfg, gcfg, make_schedule(cfg, cfg.lr), make_schedule(cfg, cfg.adam_lr))
  if cfg.qk_clip is not None:  # its update takes max_logits (train.train_step_qk_clip)
    return optax.chain(tx, model_lib.qk_clip(gcfg, cfg.qk_clip))
  return progressive.freeze(tx) if cfg.drop else tx


def adaptive_stats(optimizer: nnx.Optimizer) -> dict[str, int]:
  """``batch_size`` (micro-batches of the last optimizer step) and ``opt_steps`` taken."""
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(optimizer, nnx.OptState))[0]
  found = {ckpt_lib.leaf_name(p).rsplit("/", 1)[-1]: x for p, x in flat}
  return {"batch_size": int(found["batch_size"]), "opt_steps": int(found["steps"])}
