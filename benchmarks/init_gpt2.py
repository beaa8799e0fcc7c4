"""Does ``ol.init_params`` beat a model's own init on a model it did not come from?

transformers' Flax GPT-2 (``FlaxGPT2LMHeadModel``: the token table tied to the
head, learned positions, fused QKV in the Conv1D layout), from a random config
(2 layers, width 64, 4 heads, context 64; no download), character-level text,
batch 16. Routing from ``ol.infer_rules`` on the model's own call. Per horizon
(200 and 1000 steps) and per start:

- ``model``: the model's own init (GPT-2's normal(0, 0.02) everywhere);
- ``init_params``: ``ol.init_params(rules, params, key)``;
- ``init_params, tables at RMS 1``: the same, then every embedding table other
  than the tied one rescaled to rows of RMS 1 (what ``init_params`` did before
  0.3.0: the learned position table then starts 8x the token rows);

constrained Scion at the library defaults on a learning-rate grid (x2 steps,
extended past a winning edge), and AdamW from the model's init on its own grid.
Scion's lr decays over the last half, AdamW's over the last 30%, as in the GPT
trainer. The loss is the mean over 8 fixed validation batches at the end.

Needs ``transformers<5`` (a benchmark-only extra). Writes
``benchmarks/results/init_gpt2.json`` and ``init_gpt2.md``.

Usage, from the repository root::

  python -m benchmarks.init_gpt2 --data PATH [--steps 200,1000] [--resume] [--report]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lmo as ol
from benchmarks import _common

SHAPE = dict(layers=2, width=64, heads=4, seq=64, batch=16)
STARTS = ("model", "init_params", "init_params, tables at RMS 1")
GRID = {"scion": [2**-12, 2**-11, 2**-10, 2**-9], "adamw": [1e-3, 2e-3, 4e-3]}
MAX_EXTEND = 2
EVAL_BATCHES = 8


def corpus(path: str | None):
  """Character ids of the text (``None``: ``pydoc_data.topics``), split 90/10."""
  if path is None:
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics.values())
  else:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  vocab = sorted(set(text))
  lookup = {c: i for i, c in enumerate(vocab)}
  ids = np.array([lookup[c] for c in text], np.int32)
  cut = int(0.9 * len(ids))
  return ids[:cut], ids[cut:], len(vocab)


def batch(rng, ids):
  starts = rng.integers(0, len(ids) - SHAPE["seq"] - 1, SHAPE["batch"])
  w = ids[starts[:, None] + np.arange(SHAPE["seq"] + 1)]
  return w[:, :-1], w[:, 1:]


def model_and_rules(vocab: int):
  from transformers import FlaxGPT2LMHeadModel, GPT2Config  # the benchmark-only extra

  cfg = GPT2Config(vocab_size=vocab, n_positions=SHAPE["seq"], n_embd=SHAPE["width"],
                   n_layer=SHAPE["layers"], n_head=SHAPE["heads"], resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0)
  model = FlaxGPT2LMHeadModel(cfg, seed=0)
  apply = lambda p, x: model(x, params=p).logits
  rules = ol.infer_rules(apply, model.params,
                         jnp.zeros((SHAPE["batch"], SHAPE["seq"]), jnp.int32))
  return model.params, apply, rules


def start(name: str, params, rules):
  if name == "model":
    return params
  new = ol.init_params(rules, params, jax.random.key(0))
  if name == "init_params":
    return new
  roles = {r["path"]: r["role"] for r in ol.describe(rules, params)}

  def rms_one(path, w):  # the other embedding tables' rows back at RMS 1
    if roles.get(_common_path(path)) != "embedding":
      return w
    return w / jnp.sqrt(jnp.mean(jnp.square(w), axis=-1, keepdims=True))

  return jax.tree_util.tree_map_with_path(rms_one, new)


def _common_path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def schedule(opt: str, lr: float, steps: int) -> optax.Schedule:
  decay = int(round((0.5 if opt == "scion" else 0.3) * steps))
  return optax.join_schedules([optax.constant_schedule(lr),
                               optax.linear_schedule(lr, 0.0, decay)], [steps - decay])


def train(setup, start_name: str, opt: str, lr: float, steps: int) -> dict:
  params0, apply, rules, train_ids, val_ids = setup
  p = start(start_name, params0, rules)
  sched = schedule(opt, lr, steps)
  tx = ol.scion(sched, rules=rules) if opt == "scion" else optax.adamw(sched)
  state = tx.init(p)

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  @jax.jit
  def step(p, state, x, y):
    value, grads = jax.value_and_grad(loss)(p, x, y)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, value

  val = [batch(np.random.default_rng(10_000 + i), val_ids) for i in range(EVAL_BATCHES)]
  evaluate = jax.jit(loss)
  first = float(np.mean([evaluate(p, x, y) for x, y in val]))
  rng, t0 = np.random.default_rng(0), time.perf_counter()
  for _ in range(steps):
    p, state, _ = step(p, state, *batch(rng, train_ids))
  final = float(np.mean([evaluate(p, x, y) for x, y in val]))
  return dict(start=start_name, optimizer=opt, lr=lr, steps=steps, first_loss=first,
              val_loss=final if math.isfinite(final) else math.nan,
              seconds=time.perf_counter() - t0)


def arms():
  return [(s, "scion") for s in STARTS] + [("model", "adamw")]


def key(start_name, opt, lr, steps) -> str:
  return json.dumps([start_name, opt, lr, steps])


def grid(runs: dict, start_name: str, opt: str, steps: int) -> list[float]:
  def loss(lr):
    r = runs.get(key(start_name, opt, lr, steps))
    return None if r is None else r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf

  return _common.extend_past_edges(list(GRID[opt]), loss, lambda lr, s: lr * 2.0**s,
                                   MAX_EXTEND)


def markdown(runs: dict, horizons: list[int]) -> str:
  lines = ["| steps | start | optimizer | loss at step 0 | best lr | final val loss |"
           " grid (lr: loss) |", "|---|---|---|---|---|---|---|"]
  for steps in horizons:
    for start_name, opt in arms():
      done = [runs[k] for k in (key(start_name, opt, lr, steps)
                                for lr in grid(runs, start_name, opt, steps)) if k in runs]
      if not done:
        continue
      best = min(done, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
      edge = " (edge)" if best["lr"] in (min(r["lr"] for r in done), max(r["lr"] for r in done)) \
          else ""
      done.sort(key=lambda r: r["lr"])
      cells = ", ".join(f"{_lr(r['lr'], opt)}: {r['val_loss']:.3f}" for r in done)
      lines.append(f"| {steps} | {start_name} | {opt} | {best['first_loss']:.3f} |"
                   f" {_lr(best['lr'], opt)}{edge} | **{best['val_loss']:.4f}** | {cells} |")
  return "\n".join(lines) + "\n"


def _lr(x: float, opt: str) -> str:
  return f"2^{math.log2(x):.0f}" if opt == "scion" else f"{x:.0e}"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="a UTF-8 text file (recorded: tinyshakespeare.txt)")
  p.add_argument("--steps", default="200,1000", help="horizons, comma-separated")
  p.add_argument("--resume", action="store_true")
  p.add_argument("--report", action="store_true")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "init_gpt2.json"))
  args = p.parse_args(argv)
  horizons = [int(s) for s in args.steps.split(",")]
  runs = {}
  if (args.resume or args.report) and os.path.exists(args.out):
    with open(args.out) as f:
      runs = {key(r["start"], r["optimizer"], r["lr"], r["steps"]): r for r in json.load(f)["runs"]}
  if not args.report:
    train_ids, val_ids, vocab = corpus(args.data)
    params, apply, rules = model_and_rules(vocab)
    setup = (params, apply, rules, train_ids, val_ids)
    import transformers

    while True:
      todo = [(s, o, lr, n) for n in horizons for s, o in arms() for lr in grid(runs, s, o, n)
              if key(s, o, lr, n) not in runs]
      if not todo:
        break
      s, o, lr, n = todo[0]
      r = train(setup, s, o, lr, n)
      runs[key(s, o, lr, n)] = r
      print(f"{n} steps, {s}, {o} lr {lr:.3g}: {r['val_loss']:.4f}", flush=True)
      _common.write_json(dict(
          benchmark="init_gpt2", command=_common.command("init_gpt2", argv), shape=SHAPE,
          data=args.data, date=datetime.datetime.now(datetime.UTC).isoformat(),
          machine=dict(device=_common.device_name(), jax=jax.__version__,
                       optax=optax.__version__, transformers=transformers.__version__),
          runs=list(runs.values())), args.out)
  table = markdown(runs, horizons)
  print(table)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(table)


if __name__ == "__main__":
  main()
