"""Does Scion with inferred rules at default radii match tuned AdamW on a small image task?

scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits``, no network),
a fixed 80/20 train/test split (seed 0), pixels scaled to [0, 1]. Two Flax linen
models: an MLP (64 -> 128 -> 128 -> 10) and a small CNN (two 3x3 convs, the
second with stride 2, then a dense head). Each is trained with

* ``ol.scion(lr, beta=0.9, rules=ol.infer_rules(apply, params, x))`` at the
  default radii of ``infer_rules`` (the 3x3 convolutions at ``hidden_radius``
  times 9 taps), from ``ol.init_params`` (``--scion-init rms``, its default:
  every matrix inside its ball, RMS-preserving; ``radius``: on its
  norm sphere; ``flax``: Flax's own init);
* ``optax.adamw(lr)`` (optax defaults, weight decay 1e-4) from the Flax init;

for ``--steps`` (300) steps of batch ``--batch`` (128), each optimizer on its own
learning-rate grid (factor ~3 apart, ``GRIDS``; each best lies inside its
grid); the same batches for every run; ``--seeds`` (2) seeds of init and batch
order. Reported: test accuracy after the last step, averaged
over seeds, at each optimizer's best learning rate.

Prints a table and writes ``benchmarks/results/digits.json``.

Usage (from the repository root)::

  python -m benchmarks.digits                      # a few minutes on 2 CPU cores
  python -m benchmarks.digits --scion-init flax    # Scion from the Flax init instead
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from sklearn.datasets import load_digits

import optax_lmo as ol
from benchmarks._common import RESULTS, command, device_name, write_json

GRIDS = {  # Scion's: lr x hidden radius 48 (the step) from 0.003 to 0.3
    "scion": (6e-5, 2e-4, 6e-4, 2e-3, 6e-3),
    "adamw": (3e-3, 1e-2, 3e-2, 1e-1),
}


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x_BxHxWx1):
    x = x_BxHxWx1.reshape(x_BxHxWx1.shape[0], -1)
    x = nn.relu(nn.Dense(128)(x))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x_BxHxWx1):
    x = nn.relu(nn.Conv(16, (3, 3))(x_BxHxWx1))
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


MODELS = {"mlp": MLP, "cnn": CNN}


def load(seed: int = 0):
  """Train and test arrays ``(N, 8, 8, 1)`` in [0, 1] with integer labels; fixed split."""
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = len(y) // 5
  test, train = order[:n_test], order[n_test:]
  return (x[train], y[train]), (x[test], y[test])


def make_optimizer(name: str, lr, rules):
  if name == "scion":
    return ol.scion(lr, beta=0.9, rules=rules)
  return optax.adamw(lr, weight_decay=1e-4)


def run(model_name: str, opt: str, seed: int, args, data, radii: dict) -> list[float]:
  """Test accuracy after training, one per learning rate of the optimizer's grid."""
  (xtr, ytr), (xte, yte) = data
  model = MODELS[model_name]()
  key_init, key_data, key_scion = jax.random.split(jax.random.key(seed), 3)
  params = model.init(key_init, xtr[:1])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  rules = ol.infer_rules(apply, params, xtr[:1], output_norm=args.output_norm, **radii)
  if opt == "scion" and args.scion_init != "flax":
    params = ol.init_params(rules, params, key_scion, scale=args.scion_init)
  idx = jax.random.randint(key_data, (args.steps, args.batch), 0, len(ytr))
  xtr, ytr, xte, yte = map(jnp.asarray, (xtr, ytr, xte, yte))

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  @jax.jit
  def train(params, lr):  # one compilation serves the whole grid (lr is traced)
    tx = make_optimizer(opt, lr, rules)

    def step(carry, batch):
      p, s = carry
      g = jax.grad(loss_fn)(p, xtr[batch], ytr[batch])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
    return jnp.mean(jnp.argmax(apply(p, xte), -1) == yte)

  return [float(train(params, jnp.float32(lr))) for lr in GRIDS[opt]]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--scion-init", choices=("rms", "radius", "flax"), default="rms",
                      help="Scion's initial parameters: ol.init_params at scale 'rms' (its"
                      " default) or 'radius', or the Flax init")
  parser.add_argument("--output-norm", choices=("rownorm", "sign"), default="rownorm")
  parser.add_argument("--radii", default="",
                      help="override infer_rules radii, e.g. 'hidden_radius=3,output_radius=10'")
  parser.add_argument("--models", default="mlp,cnn")
  parser.add_argument("--out", default=os.path.join(RESULTS, "digits.json"))
  args = parser.parse_args(argv)
  radii = {k: float(v) for k, v in (kv.split("=") for kv in args.radii.split(",") if kv)}
  data = load()
  t0 = time.perf_counter()
  results = {}
  for m in args.models.split(","):
    for opt in ("scion", "adamw"):
      accs = np.array([run(m, opt, s, args, data, radii) for s in range(args.seeds)])
      mean = accs.mean(axis=0)
      best = int(np.argmax(mean))
      results[f"{m}/{opt}"] = dict(model=m, optimizer=opt, lrs=list(GRIDS[opt]),
                                   test_acc_mean=[round(float(a), 4) for a in mean],
                                   test_acc_per_seed=accs.round(4).tolist(),
                                   best_lr=GRIDS[opt][best], best_test_acc=round(float(mean[best]),
                                                                                4))
  elapsed = time.perf_counter() - t0
  lines = [f"{'model':5s} {'optimizer':9s} {'best lr':>8s} {'best test acc':>13s}   "
           "test acc per lr"]
  for r in results.values():
    per = "  ".join(f"{lr:g}:{a:.3f}" for lr, a in zip(r["lrs"], r["test_acc_mean"], strict=True))
    lines.append(f"{r['model']:5s} {r['optimizer']:9s} {r['best_lr']:8g} "
                 f"{100 * r['best_test_acc']:12.2f}%   {per}")
  gaps = {m: round(100 * (results[f"{m}/adamw"]["best_test_acc"]
                          - results[f"{m}/scion"]["best_test_acc"]), 2)
          for m in args.models.split(",")}
  lines.append("AdamW minus Scion (points): " + ", ".join(f"{m} {g:+.2f}" for m, g in gaps.items()))
  print("\n".join(lines))
  write_json(dict(
      command=command("digits", argv), device=device_name(), seconds=round(elapsed, 1),
      steps=args.steps, batch=args.batch, seeds=args.seeds, scion_init=args.scion_init,
      output_norm=args.output_norm, radii=radii or "infer_rules defaults",
      split="load_digits, permutation(seed 0), 20% test", results=results,
      adamw_minus_scion_points=gaps), args.out)


if __name__ == "__main__":
  main()
