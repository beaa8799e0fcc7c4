"""Adaptive batch size by the norm test against fixed batches: tokens and optimizer steps to a loss.

Runs of the GPT trainer (``benchmarks.gpt.train``, ``scion``, ``REDUCED`` sizes,
a few minutes on 2 busy CPU cores), all on the same token budget
(``--micro-batches`` micro-batches of ``--micro`` sequences):

* fixed batches of 1x, 2x and 4x the micro-batch (``--batch k*micro``,
  ``--steps micro_batches/k``);
* ``--adaptive-batch ETA`` for each ``--etas`` (``--batch micro``,
  ``--steps micro_batches``: the run counts micro-batches, and each optimizer
  step takes as many as the norm test asks, 2 to ``--max-micro-batches``).

Every run has the example's schedule over its whole budget (constant, then a
linear decay over the last 30%), evaluated at the data seen. The target is the
highest final validation loss among the runs (so every run reaches it); for
each run, the tokens and the optimizer steps at which its validation curve
first reaches it (linear between evaluations), its final loss, and its mean
effective batch.

Writes ``benchmarks/results/adaptive_batch.json``.

Usage, from the repository root::

  python -m benchmarks.adaptive_batch [--etas 0.25 0.5] [--micro-batches 480]
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import jax
import numpy as np
import optax

from benchmarks import _common
from benchmarks.gpt import train as train_lib

REDUCED = dict(width=128, depth=4, heads=4, seq=64, eval_batches=8, optimizer="scion",
               lr=_common.RECORDED_SCION_LR, init=_common.RECORDED_INIT,
               **_common.RECORDED_SETTINGS)


def run_one(args, root: str, label: str, batch: int, steps: int, eta: float | None) -> dict:
  workdir = os.path.join(root, label.replace(" ", "_"))
  cfg = train_lib.make_config(
      **REDUCED, batch=batch, steps=steps, adaptive_batch=eta,
      max_micro_batches=args.max_micro_batches, eval_every=max(1, steps // args.evals),
      log_every=max(1, steps // args.evals), ckpt_every=steps, keep_ckpts=1, seed=args.seed,
      workdir=workdir, resume=False, progress=False, plot=False)
  out, records, seconds = _common.train_logged(cfg)
  tokens_per_step = batch * cfg.seq
  train = {r["step"]: r for r in records if r["kind"] == "train"}
  opt_steps = ([0] + [train[s]["opt_steps"] for s in sorted(train)]) if eta else None
  curve = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
  return dict(label=label, batch=batch, steps=steps, eta=eta, val_loss=out["val_loss"],
              wall_s=seconds, curve=curve, tokens_per_step=tokens_per_step,
              opt_steps_at=None if eta is None else list(zip([0] + sorted(train), opt_steps,
                                                             strict=True)))


def summarize(runs: list[dict]) -> dict:
  target = max(r["val_loss"] for r in runs)
  rows = {}
  for r in runs:
    s = _common.crossing(r["curve"], target)
    if r["eta"] is None:
      opt = s
      total_opt = r["steps"]
    else:  # optimizer steps taken by micro-batch s: linear between the logged points
      xs, ys = zip(*r["opt_steps_at"], strict=True)
      opt = None if s is None else float(np.interp(s, xs, ys))
      total_opt = ys[-1]
    rows[r["label"]] = dict(
        tokens_to_target=None if s is None else s * r["tokens_per_step"],
        opt_steps_to_target=opt, final_val_loss=r["val_loss"], opt_steps_total=total_opt,
        mean_batch_micro=r["steps"] * r["tokens_per_step"] / total_opt / runs[0]["tokens_per_step"],
        wall_s=r["wall_s"])
  return dict(target=target, rows=rows)


def print_table(res: dict) -> None:
  c = res["config"]
  print(f"\nGPT width {c['width']}, depth {c['depth']}, micro-batch {c['micro']}x{c['seq']} tokens,"
        f" budget {c['micro_batches']} micro-batches; target val loss {res['target']:.4f}")
  print(f"{'run':<16} {'tokens to target':>16} {'opt steps to target':>19} {'final val':>9}"
        f" {'opt steps':>9} {'mean batch':>10}")
  for label, r in res["rows"].items():
    tok = "-" if r["tokens_to_target"] is None else f"{r['tokens_to_target']:,.0f}"
    opt = "-" if r["opt_steps_to_target"] is None else f"{r['opt_steps_to_target']:.0f}"
    print(f"{label:<16} {tok:>16} {opt:>19} {r['final_val_loss']:9.4f} {r['opt_steps_total']:9d}"
          f" {r['mean_batch_micro']:9.2f}x")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      epilog="Run from the repository root: python -m benchmarks.adaptive_batch")
  p.add_argument("--micro", type=int, default=8, help="sequences per micro-batch")
  p.add_argument("--micro-batches", type=int, default=480, dest="micro_batches",
                 help="the token budget, in micro-batches")
  p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4],
                 help="fixed batches, in micro-batches")
  p.add_argument("--etas", type=float, nargs="+", default=[0.25, 0.5])
  p.add_argument("--max-micro-batches", type=int, default=16, dest="max_micro_batches")
  p.add_argument("--evals", type=int, default=12, help="evaluations per run")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "adaptive_batch.json"))
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  jobs = [(f"fixed {k}x", k * args.micro, args.micro_batches // k, None) for k in args.multiples]
  jobs += [(f"adaptive eta {e:g}", args.micro, args.micro_batches, e) for e in args.etas]
  with tempfile.TemporaryDirectory(prefix="adaptive_batch_") as root:
    runs = []
    for label, batch, steps, eta in jobs:
      runs.append(run_one(args, root, label, batch, steps, eta))
      print(f"{label:<16} val {runs[-1]['val_loss']:.4f} ({runs[-1]['wall_s']:.0f} s)", flush=True)
  res = dict(benchmark="adaptive_batch",
             date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             command=_common.command("adaptive_batch", argv), device=_common.device_name(),
             jax=jax.__version__, optax=optax.__version__,
             config=dict(REDUCED, micro=args.micro, micro_batches=args.micro_batches,
                         max_micro_batches=args.max_micro_batches, seed=args.seed,
                         schedule="linear_decay, decay_frac 0.3, over micro-batches"),
             runs=runs, **summarize(runs))
  res["wall_s"] = time.perf_counter() - t0
  print_table(res)
  _common.write_json(res, args.out)
  print(f"\nwrote {args.out} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
