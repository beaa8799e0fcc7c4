"""Does constrained Scion keep the demo GPT finite and every leaf inside its norm ball?

Trains the example GPT (``examples/gpt``, the ``--preset demo`` model: width
128, depth 4, batch 32, seq 64) with its default optimizer, constrained
``scion``, for ``--steps`` (3000) steps, and at every evaluation (every
``--eval-every`` = 100 steps, and at step 0) checks

* the validation loss is finite;
* every parameter is finite;
* every leaf ``W`` satisfies ``||W|| <= rho (1 + tol)`` in the norm and radius
  its rule gives it (``optax_lmo.describe`` of the example's rules:
  Spectral for the hidden kernels, ColNorm for the embedding, RowNorm for the
  head, BiasRMS for the RMSNorm gains), ``tol = --tol`` (1e-3).

The constrained update ``W <- (1 - gamma) W - gamma rho lmo(d)`` with
``||lmo(d)|| = 1`` and ``gamma <= 1`` keeps ``||W|| <= rho`` once inside; the
example's scion init starts every matrix on its sphere (``||W|| = rho``) and the
gains at 1 (``rho = 1``), so the bound must hold at every step up to rounding.
After the run the train losses of ``log.jsonl`` (every 10 steps) are checked
finite too.

Prints a table (one row per leaf: its norm, radius, largest ``||W||`` over the
run, its ratio to ``rho`` and the ratio at the end) and writes
``benchmarks/results/stability.json``.

Usage::

  .venv/bin/python benchmarks/stability.py                   # 3000 steps, ~15 min on 2 CPU cores
  .venv/bin/python benchmarks/stability.py --steps 200 --out /tmp/stability.json   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # examples/ is not installed

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import optax_lmo as ol  # noqa: E402
from examples.gpt import model as model_lib  # noqa: E402
from examples.gpt import train as train_lib  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def leaf_norms_fn(rules: ol.Rules, params) -> Callable[[Any], list[dict]]:
  """``params -> rows`` for trees shaped like ``params``, one jitted call per use.

  One row per leaf: ``path``, ``norm`` (its name), ``radius``, ``value`` (``||W||``,
  NaN unless ``finite``) and ``finite`` (no NaN or Inf entry). The norm and radius
  are those ``rules`` give the leaf (what ``optax_lmo.describe`` prints); a leaf
  stored as a stack of matrices reports its largest norm.
  """
  rows = ol.describe(rules, params, verbose=False)
  groups = [rules.group_for(r["path"], x)
            for r, x in zip(rows, jax.tree.leaves(params), strict=True)]

  @jax.jit
  def values(leaves):
    return [(jnp.max(g.norm.norm(x, g.spec, path=r["path"])), jnp.all(jnp.isfinite(x)))
            for g, r, x in zip(groups, rows, leaves, strict=True)]

  def fn(tree) -> list[dict]:
    out = []
    for r, g, (v, ok) in zip(rows, groups, jax.device_get(values(jax.tree.leaves(tree))),
                             strict=True):
      out.append(dict(path=r["path"], norm=r["norm"], radius=float(g.radius),
                      value=float(v) if ok else math.nan, finite=bool(ok)))
    return out

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


class Monitor:
  """``on_eval`` callback of ``examples.gpt.train.train``: checks each evaluation, keeps maxima."""

  def __init__(self, rules: ol.Rules, tol: float, *, verbose: bool = False):
    self.rules, self.tol, self.verbose = rules, tol, verbose
    self.evals: list[dict] = []  # per evaluation: step, val_loss, worst ratio, seconds
    self.leaves: dict[str, dict] = {}  # per leaf: norm, radius, max value and ratio, at step
    self.violations: list[str] = []
    self.t0 = time.perf_counter()
    self._norms = None  # leaf_norms_fn, built at the first evaluation

  def __call__(self, step: int, val_loss: float, model) -> None:
    if self.evals and self.evals[-1]["step"] == step:
      return  # the example re-evaluates the last step when it stops between evaluations
    params = nnx.state(model, nnx.Param)
    if self._norms is None:
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


def run(cfg: train_lib.TrainConfig, *, tol: float = 1e-3, verbose: bool = False) -> dict:
  """Trains ``cfg`` with the checks at every evaluation; returns the summary (the JSON body)."""
  cfg = train_lib.resolve(cfg)
  if cfg.optimizer != "scion":
    raise ValueError(f"the ball bound holds for constrained scion only, not {cfg.optimizer!r}.")
  gcfg = model_lib.GPTConfig(embed_radius=cfg.embed_radius, hidden_radius=cfg.hidden_radius,
                             output_radius=cfg.output_radius, output_norm=cfg.output_norm)
  monitor = Monitor(model_lib.rules(gcfg), tol, verbose=verbose)
  t0 = time.perf_counter()
  out = train_lib.train(cfg, on_eval=monitor)
  wall = time.perf_counter() - t0
  with open(os.path.join(cfg.workdir, "log.jsonl")) as f:
    train_losses = [r for r in map(json.loads, f) if r.get("kind") == "train"]
  bad_train = [f"step {r['step']}: train loss is {r['loss']}" for r in train_losses
               if not math.isfinite(r["loss"])]
  all_bad = monitor.violations + bad_train
  return dict(
      steps=out["step"],
      final_val_loss=out["val_loss"],
      unigram=out["unigram"],
      tol=tol,
      ok=not all_bad and out["step"] == cfg.steps,
      violations=all_bad,
      n_evals=len(monitor.evals),
      n_train_losses_checked=len(train_losses),
      max_ratio=max(v["max_ratio"] for v in monitor.leaves.values()),
      leaves=monitor.leaves,
      evals=monitor.evals,
      wall_s=round(wall, 1),
      config={k: v for k, v in dataclasses.asdict(cfg).items() if k != "workdir"},
  )


def _machine() -> dict:
  dev = jax.devices()[0]
  return dict(
      platform=dev.platform,
      device=dev.device_kind if dev.platform != "cpu" else (platform.processor() or "cpu"),
      cpu_count=os.cpu_count(),
      load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
      python=platform.python_version(),
      jax=jax.__version__,
      date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  )


def table(res: dict) -> str:
  head = ("leaf", "norm", "radius", "max ||W||", "max ||W||/rho", "at step", "final ||W||/rho")
  rows = [head] + [(p, v["norm"], f"{v['radius']:g}", f"{v['max_value']:.6g}",
                    f"{v['max_ratio']:.6f}", str(v["at_step"]), f"{v['final_ratio']:.6f}")
                   for p, v in res["leaves"].items()]
  widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
  p.add_argument("--eval-every", type=int, default=100, help="steps between checks (default 100)")
  p.add_argument("--tol", type=float, default=1e-3, help="relative tolerance on ||W|| <= rho")
  p.add_argument("--workdir", default=None, help="the run's workdir (default: a temporary one)")
  p.add_argument("--out", default=str(RESULTS / "stability.json"), help="where the JSON goes")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    cfg = train_lib.make_config(
        preset="demo", steps=args.steps, eval_every=args.eval_every, ckpt_every=args.steps,
        workdir=args.workdir or tmp, resume=False, progress=False, plot=False)
    print(f"scion, demo model, {args.steps} steps, checks every {args.eval_every}:", flush=True)
    res = run(cfg, tol=args.tol, verbose=True)
  res = dict(machine=_machine(), **res)
  print()
  print(table(res))
  print(f"\n{res['steps']} steps in {res['wall_s']:.0f} s; final validation loss"
        f" {res['final_val_loss']:.4f} (unigram {res['unigram']:.4f}); largest ||W||/rho"
        f" {res['max_ratio']:.6f}; {len(res['violations'])} violations"
        f" ({'ok' if res['ok'] else 'FAILED'})")
  for v in res["violations"][:20]:
    print("  " + v)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  print(f"wrote {args.out}")
  if not res["ok"]:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
