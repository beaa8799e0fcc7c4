"""Train a small character-level GPT with Scion: the whole recipe in one file.

  python -m examples.quickstart_gpt                      # what `make demo` runs
  python -m examples.quickstart_gpt --data my_text.txt --steps 2000

A Flax NNX transformer on a text file (default: the Python help topics that ship
with Python, so no download), routed by ``ol.infer_rules`` from its own
computation, initialized by ``ol.init_params`` and trained by ``ol.scion``. Prints
the routing table and the validation loss, and writes ``runs/quickstart_loss.png``.
The full trainer (checkpoints, meshes, other optimizers) is ``benchmarks/gpt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_lmo as ol


@dataclasses.dataclass(frozen=True)
class Config:
  data: str | None = None  # a UTF-8 text file; None: pydoc_data.topics (ships with Python)
  steps: int = 800  # optimizer steps
  batch: int = 32  # sequences per step
  seq: int = 64  # characters per sequence
  width: int = 128  # model width
  depth: int = 4  # transformer blocks
  heads: int = 4  # attention heads
  lr: float = 2**-11  # Scion's peak learning rate: the decay rate; lr x radius is the step
  decay_frac: float = 0.5  # the last fraction of the steps decays the lr linearly to 0
  eval_every: int = 100  # steps between validation losses
  seed: int = 0  # initialization and batch order
  plot: str = "runs/quickstart_loss.png"  # where the loss curve goes ("": nowhere)


# -- data: characters of a text file, random windows -------------------------------------
def load_text(path: str | None) -> str:
  if path is None:
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics.values())
  with open(path, encoding="utf-8") as f:
    return f.read()


def batches(ids_N: np.ndarray, batch: int, seq: int, seed: int):
  """Endless ``(inputs_BxL, targets_BxL)`` from random windows of ``ids_N``."""
  rng = np.random.default_rng(seed)
  while True:
    starts_B = rng.integers(0, len(ids_N) - seq - 1, size=batch)
    window_BxL = np.stack([ids_N[s:s + seq + 1] for s in starts_B])
    yield jnp.asarray(window_BxL[:, :-1]), jnp.asarray(window_BxL[:, 1:])


# -- model: a pre-norm decoder-only transformer -----------------------------------------
class Block(nnx.Module):
  def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.norm1, self.norm2 = nnx.RMSNorm(d, rngs=rngs), nnx.RMSNorm(d, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, rngs=rngs)
    self.fc_in = nnx.Linear(d, 4 * d, use_bias=False, rngs=rngs)
    self.fc_out = nnx.Linear(4 * d, d, use_bias=False, rngs=rngs)

  def __call__(self, x_BxLxD):
    b, l, d = x_BxLxD.shape
    q, k, v = (t.reshape(b, l, self.heads, d // self.heads)
               for t in jnp.split(self.qkv(self.norm1(x_BxLxD)), 3, axis=-1))
    o_BxLxHxK = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x_BxLxD = x_BxLxD + self.out(o_BxLxHxK.reshape(b, l, d))
    h_BxLxF = jax.nn.gelu(self.fc_in(self.norm2(x_BxLxD))) * math.sqrt(2.0)  # keeps the variance
    return x_BxLxD + self.fc_out(h_BxLxF)


class GPT(nnx.Module):
  def __init__(self, vocab: int, cfg: Config, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, cfg.width, rngs=rngs)
    self.pos = nnx.Embed(cfg.seq, cfg.width, rngs=rngs)
    self.blocks = nnx.List([Block(cfg.width, cfg.heads, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = nnx.RMSNorm(cfg.width, rngs=rngs)
    self.head = nnx.Linear(cfg.width, vocab, use_bias=False, rngs=rngs)

  def __call__(self, tokens_BxL):
    x_BxLxD = self.embed(tokens_BxL) + self.pos(jnp.arange(tokens_BxL.shape[1]))
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD)
    return self.head(self.norm(x_BxLxD))


def loss_fn(model, x_BxL, y_BxL):
  return optax.softmax_cross_entropy_with_integer_labels(model(x_BxL), y_BxL).mean()


@nnx.jit
def train_step(model, optimizer, x_BxL, y_BxL):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x_BxL, y_BxL)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_step(model, x_BxL, y_BxL):
  return loss_fn(model, x_BxL, y_BxL)


def main(cfg: Config) -> float:
  text = load_text(cfg.data)
  vocab = sorted(set(text))
  index = {c: i for i, c in enumerate(vocab)}
  ids_N = np.array([index[c] for c in text], np.int32)
  split = int(0.9 * len(ids_N))
  if split - cfg.seq - 1 < cfg.batch or len(ids_N) - split - cfg.seq - 1 < 1:
    raise SystemExit(f"error: {len(text)} characters is too little text for --seq {cfg.seq}.")
  train, val = batches(ids_N[:split], cfg.batch, cfg.seq, cfg.seed), ids_N[split:]
  val_batches = list(zip(range(8), batches(val, cfg.batch, cfg.seq, seed=12345), strict=False))

  model = GPT(len(vocab), cfg, rngs=nnx.Rngs(cfg.seed))
  tokens = jnp.zeros((1, cfg.seq), jnp.int32)
  # Routing from the model's own computation: the embeddings, the hidden matrices, the head,
  # at the default radii (1, 48 and 160: docs/radii.md).
  rules = ol.infer_rules(model, tokens)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, ol.init_params(rules, params, jax.random.key(cfg.seed)))
  decay = round(cfg.decay_frac * cfg.steps)
  schedule = optax.join_schedules(
      [optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, 0.0, decay)],
      [cfg.steps - decay])
  tx = ol.scion(schedule, rules=rules)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  print(ol.describe(tx, params))

  def evaluate():
    return float(np.mean([eval_step(model, x, y) for _, (x, y) in val_batches]))

  curve, losses, t0 = [(0, math.nan, evaluate())], [], time.perf_counter()
  print(f"step     0  val {curve[0][2]:.4f} (uniform: {math.log(len(vocab)):.4f})")
  for step in range(1, cfg.steps + 1):
    losses.append(train_step(model, optimizer, *next(train)))
    if step % cfg.eval_every == 0 or step == cfg.steps:
      train_loss, val_loss, losses = float(np.mean(losses)), evaluate(), []  # train: the mean
      if not math.isfinite(val_loss):
        raise SystemExit(f"error: the validation loss is {val_loss} at step {step}; lower --lr.")
      curve.append((step, train_loss, val_loss))
      print(f"step {step:5d}  train {train_loss:.4f}  val {val_loss:.4f}"
            f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
  if cfg.plot:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(cfg.plot)), exist_ok=True)
    steps, train_losses, val_losses = zip(*curve, strict=True)
    plt.figure(figsize=(6, 4))
    plt.plot(steps[1:], train_losses[1:], label="train (mean since the last point)")
    plt.plot(steps, val_losses, label="validation")
    plt.xlabel("step"), plt.ylabel("loss (nats per character)"), plt.legend()
    plt.title("optax_lmo.scion on a character-level GPT")
    plt.savefig(cfg.plot, dpi=100, bbox_inches="tight")
    print(f"wrote {cfg.plot}")
  return curve[-1][2]


def parse_args(argv=None) -> Config:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  for f in dataclasses.fields(Config):
    kind = {"int": int, "float": float}.get(str(f.type), str)
    p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
  cfg = Config(**vars(p.parse_args(argv)))
  for name in ("steps", "batch", "seq", "width", "depth", "heads", "eval_every"):
    if getattr(cfg, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1.")
  if not (math.isfinite(cfg.lr) and cfg.lr > 0) or not 0 <= cfg.decay_frac <= 1:
    p.error("--lr must be a finite number > 0 and --decay-frac in [0, 1].")
  if cfg.width % cfg.heads:
    p.error(f"--heads {cfg.heads} must divide --width {cfg.width}.")
  return cfg


if __name__ == "__main__":
  main(parse_args())
