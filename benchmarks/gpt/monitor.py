"""The ball check of constrained Scion: every leaf finite and inside its norm ball, all run long.

Constrained Scion's update ``W <- (1 - gamma) W - gamma rho lmo(d)`` with
``||lmo(d)|| = 1`` and ``gamma <= 1`` keeps ``||W|| <= rho`` once inside, and the
scion init starts every leaf on its sphere, so ``||W|| <= rho (1 + tol)`` must
hold at every step up to rounding. :class:`BallCheck` is an ``on_eval``
callback of :func:`benchmarks.gpt.train.train` that checks it (with the norm and
radius the rules give each leaf) and that the loss and the weights are finite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import optax_lmo as ol


def leaf_norms_fn(rules: ol.Rules, params) -> Callable[[Any], list[dict]]:
  """``tree -> rows`` for trees shaped like ``params``, one jitted call per use.

  One row per leaf: ``path``, ``norm`` (its class name), ``radius``, ``value``
  (``||W||`` in that norm, NaN unless ``finite``) and ``finite`` (no NaN or Inf
  entry). The norm and radius are those ``rules`` give the leaf; a leaf stored
  as a stack of matrices reports its largest norm.
  """
  plan = rules.plan(params)
  paths, groups = plan.paths, plan.groups

  @jax.jit
  def values(leaves):
    return [(jnp.max(g.norm.norm(x, g.spec, path=p)), jnp.all(jnp.isfinite(x)))
            for g, p, x in zip(groups, paths, leaves, strict=True)]

  def fn(tree) -> list[dict]:
    got = jax.device_get(values(jax.tree.leaves(tree)))
    return [dict(path=p, norm=type(g.norm).__name__, radius=float(g.radius),
                 value=float(v) if ok else math.nan, finite=bool(ok))
            for p, g, (v, ok) in zip(paths, groups, got, strict=True)]

  return fn


def leaf_norms(params, rules: ol.Rules) -> list[dict]:
  """The rows of :func:`leaf_norms_fn` for ``params``."""
  return leaf_norms_fn(rules, params)(params)


def violations(step: int, val_loss: float, rows: list[dict], tol: float) -> list[str]:
  """What is wrong at ``step``: a non-finite loss or leaf, or a leaf outside ``rho (1 + tol)``."""
  bad = []
  if not math.isfinite(val_loss):
    bad.append(f"step {step}: validation loss is {val_loss}")
  for r in rows:
    if not r["finite"]:
      bad.append(f"step {step}: {r['path']} has NaN or Inf entries")
    elif r["value"] > r["radius"] * (1 + tol):
      bad.append(f"step {step}: {r['path']}: {r['norm']} norm {r['value']:.6g} exceeds its radius"
                 f" {r['radius']:g} (ratio {r['value'] / r['radius']:.6f})")
  return bad


class BallCheck:
  """``on_eval`` callback: checks each evaluation and keeps, per leaf, the largest ``||W|| / rho``.

  Attributes:
    evals: per evaluation, ``step``, ``val_loss``, ``max_ratio`` and ``seconds``.
    leaves: per leaf path, ``norm``, ``radius``, ``max_value``, ``max_ratio``,
      ``at_step`` (where the maximum was) and ``final_ratio``.
    violations: every :func:`violations` line so far.
  """

  def __init__(self, rules: ol.Rules | None, tol: float, *, verbose: bool = False):
    self.rules, self.tol, self.verbose = rules, tol, verbose
    self.evals: list[dict] = []
    self.leaves: dict[str, dict] = {}
    self.violations: list[str] = []
    self.t0 = time.perf_counter()
    self._norms = None  # leaf_norms_fn, built at the first evaluation

  def __call__(self, step: int, val_loss: float, model) -> None:
    if self.evals and self.evals[-1]["step"] == step:
      return  # the example evaluates the last step again when it stops between evaluations
    params = nnx.state(model, nnx.Param)
    if self._norms is None:
      if self.rules is None:  # the rules of the model at hand (its own trace)
        from benchmarks.gpt import model as model_lib

        self.rules = model_lib.rules(model.cfg)
      self._norms = leaf_norms_fn(self.rules, params)
    rows = self._norms(params)
    self.violations += violations(step, val_loss, rows, self.tol)
    worst = 0.0
    for r in rows:
      ratio = r["value"] / r["radius"] if r["finite"] else math.inf
      worst = max(worst, ratio)
      seen = self.leaves.setdefault(r["path"], dict(norm=r["norm"], radius=r["radius"],
                                                    max_value=-math.inf, max_ratio=-math.inf,
                                                    at_step=None))
      if ratio > seen["max_ratio"]:
        seen.update(max_value=r["value"], max_ratio=ratio, at_step=step)
      seen["final_ratio"] = ratio
    rec = dict(step=step, val_loss=val_loss, max_ratio=worst,
               seconds=round(time.perf_counter() - self.t0, 1))
    self.evals.append(rec)
    if self.verbose:
      print(f"  step {step:5d}  val {val_loss:.4f}  max ||W||/rho {worst:.6f}"
            f"  ({rec['seconds']:.0f} s)", flush=True)
