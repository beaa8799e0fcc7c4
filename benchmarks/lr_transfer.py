"""Does the best learning rate transfer across width? Scion against AdamW on a 2-layer char GPT.

Mirrors the shallow-nanoGPT width-transfer experiment of LIONS-EPFL/scion
(shakespeare_char, 122 iterations): the character GPT of ``examples/gpt`` with
2 blocks at widths 64, 128, 256 and 512 is trained on tinyshakespeare for a
fixed number of steps at every learning rate of a powers-of-2 grid, for

* ``scion`` and ``unconstrained_scion`` (the example's Scion rules, scion init),
* ``adamw`` with the standard parameterization and Flax's default init,

each grid centred on the power of 2 nearest the optimizer's default learning
rate in ``examples.gpt.train.DEFAULT_LR``, and extended by up to ``--extend``
points past an edge while the best run of a width sits on it. Everything else is the example's
default (linear decay over the last 30% of the steps, no warmup, momentum decay
``beta = 0.9``, AdamW's ``b1``, no weight decay, 4 heads, rotary positions).

Each run's final validation loss (the same fixed validation windows for all)
and output-layer norm ``||W_out||_{RMS->inf}`` (the [NT] metric) go to
``benchmarks/results/lr_transfer.json`` with the best learning rate per width;
``lr_transfer.png`` has a panel per optimizer and a curve per width. A run
whose training loss turns non-finite or exceeds twice its start is stopped and
counted as diverged.

Targets (printed as met or missed): Scion's best learning rate is the same grid
point, at most one power of 2 apart, at every width, while AdamW's moves; the
output norm at each width's optimum agrees within 0.5 in log2.

The default sizes are cut to fit ~30 minutes on two busy CPU cores (see
``REDUCED``); ``--full`` runs the bigger configuration (``FULL``: 122 steps of
32 x 128 tokens, as in the reference). Each (optimizer, width) compiles one
training step whose peak learning rate is an argument, so a grid costs one
compilation, not seven.

The recorded results used ``--data tinyshakespeare.txt`` (the 1.1 MB
tinyshakespeare text); without ``--data`` the example's own corpus is used.

Usage, from the repository root::

  python -m benchmarks.lr_transfer [--full] [--data PATH] [--widths 64 128 256 512]

References:
  Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs, ICML 2025.
  Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_lmo as ol
from benchmarks import _common
from examples.gpt import data as data_lib
from examples.gpt import model as model_lib
from examples.gpt import train as train_lib

OPTIMIZERS = {"scion": "scion", "unconstrained_scion": "scion", "adamw": "standard"}  # -> init
REDUCED = dict(steps=100, batch=8, seq=64, points=7, eval_batches=16)
FULL = dict(steps=122, batch=32, seq=128, points=7, eval_batches=32)


def lr_grid(optimizer: str, points: int) -> list[float]:
  """Powers of 2 centred on the one nearest ``DEFAULT_LR[optimizer]``."""
  centre = round(math.log2(train_lib.DEFAULT_LR[optimizer]))
  lo = centre - (points - 1) // 2
  return [2.0**k for k in range(lo, lo + points)]


def machine_info() -> dict:
  return dict(device=_common.device_name(), backend=jax.default_backend(), jax=jax.__version__,
              optax=optax.__version__, python=platform.python_version(),
              load_average_at_start=os.getloadavg())


class Sweep:
  """One (optimizer, width): a model, a compiled step taking the peak lr, fixed val windows."""

  def __init__(self, optimizer: str, width: int, args, data: data_lib.Dataset):
    self.cfg = train_lib.resolve(train_lib.make_config(
        optimizer=optimizer, init=OPTIMIZERS[optimizer], steps=args.steps, batch=args.batch,
        seq=args.seq, width=width, depth=args.depth, heads=args.heads, seed=args.seed))
    cfg = self.cfg
    self.gcfg = train_lib.model_config(cfg, data.vocab_size)
    self.data = data
    self.graphdef, _ = nnx.split(model_lib.GPT(self.gcfg, rngs=nnx.Rngs(params=cfg.seed)))
    self.val = [(jnp.asarray(x), jnp.asarray(y)) for x, y in data_lib.val_batches(
        data, batch=cfg.batch, seq=cfg.seq, max_batches=args.eval_batches)]

    def tx(peak):  # the example's optimizer, its schedule scaled by a traced peak lr
      return train_lib.make_optimizer(dataclasses.replace(cfg, lr=peak), self.gcfg)

    def loss_fn(params, x_BxL, y_BxL):
      return train_lib.loss_fn(nnx.merge(self.graphdef, params), x_BxL, y_BxL)

    @jax.jit
    def init(seed):
      del seed  # the model's own seed comes from cfg
      params = nnx.state(model_lib.GPT(self.gcfg, rngs=nnx.Rngs(params=cfg.seed)))
      return params, tx(1.0).init(params)

    @jax.jit
    def step(params, opt_state, x_BxL, y_BxL, peak):
      loss, grads = jax.value_and_grad(loss_fn)(params, x_BxL, y_BxL)
      updates, opt_state = tx(peak).update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self.init, self.step, self.eval_loss = init, step, jax.jit(loss_fn)

  def run(self, peak: float) -> dict:
    """Trains at peak learning rate ``peak``; the final validation loss and output norm."""
    cfg, t0 = self.cfg, time.perf_counter()
    params, opt_state = self.init(0)
    peak_ = jnp.float32(peak)
    first, train_loss, diverged, done = None, float("nan"), False, 0
    for s in range(cfg.steps):
      x, y = data_lib.train_batch(self.data, seed=cfg.seed, step=s, batch=cfg.batch, seq=cfg.seq)
      params, opt_state, loss = self.step(params, opt_state, jnp.asarray(x), jnp.asarray(y), peak_)
      done = s + 1
      if s % 10 == 0 or done == cfg.steps:
        train_loss = float(loss)
        first = train_loss if first is None else first
        if not math.isfinite(train_loss) or train_loss > 2 * first:
          diverged = True
          break
    out = dict(lr=peak, log2_lr=math.log2(peak), steps_done=done, train_loss=train_loss,
               diverged=diverged)
    if diverged:
      out.update(val_loss=float("nan"), output_norm=float("nan"))
    else:
      out["val_loss"] = float(np.mean([float(self.eval_loss(params, x, y)) for x, y in self.val]))
      head = nnx.merge(self.graphdef, params).head.kernel[...]
      out["output_norm"] = float(ol.norms.rms_to_inf(head))
    out["seconds"] = time.perf_counter() - t0
    return out


def best_points(runs: list[dict]) -> dict:
  """For each optimizer and width: the run with the lowest final validation loss."""
  best: dict = {}
  for r in runs:
    if r["diverged"] or not math.isfinite(r["val_loss"]):
      continue
    cur = best.setdefault(r["optimizer"], {}).get(str(r["width"]))
    if cur is None or r["val_loss"] < cur["val_loss"]:
      best[r["optimizer"]][str(r["width"])] = dict(
          lr=r["lr"], log2_lr=r["log2_lr"], val_loss=r["val_loss"],
          output_norm=r["output_norm"], log2_output_norm=math.log2(r["output_norm"]))
  return best


def tried(runs: list[dict], opt: str, width: int) -> list[float]:
  return sorted(r["lr"] for r in runs if r["optimizer"] == opt and r["width"] == width)


def extension(runs: list[dict], opt: str, width: int, grid: list[float], extend: int):
  """The next learning rate past the edge of the tried ones that holds the best run, if any."""
  b = best_points(runs).get(opt, {}).get(str(width))
  lrs = tried(runs, opt, width)
  if b is None:
    return None
  if b["lr"] == lrs[0] and lrs[0] > min(grid) / 2**extend:
    return lrs[0] / 2
  if b["lr"] == lrs[-1] and lrs[-1] < max(grid) * 2**extend:
    return lrs[-1] * 2
  return None


def targets(best: dict, runs: list[dict]) -> dict:
  """The two transfer targets, per optimizer, with the numbers behind them."""
  out = {}
  for opt, by_width in best.items():
    lrs = [b["log2_lr"] for b in by_width.values()]
    on = [b["log2_output_norm"] for b in by_width.values()]
    edge = [w for w, b in by_width.items()
            if b["lr"] in (tried(runs, opt, int(w))[0], tried(runs, opt, int(w))[-1])]
    out[opt] = dict(
        log2_best_lr=dict(zip(by_width, lrs, strict=True)),
        best_lr_spread_log2=max(lrs) - min(lrs),
        best_lr_transfers=max(lrs) - min(lrs) <= 1.0,
        log2_output_norm_at_best=dict(zip(by_width, on, strict=True)),
        output_norm_spread_log2=max(on) - min(on),
        output_norm_agrees=max(on) - min(on) <= 0.5,
        best_at_grid_edge=edge,
    )
  scion_ok = all(out[o]["best_lr_transfers"] for o in ("scion", "unconstrained_scion") if o in out)
  adam_moves = "adamw" in out and out["adamw"]["best_lr_spread_log2"] >= 1.0
  out["summary"] = dict(
      scion_best_lr_within_one_power_of_2=scion_ok,
      adamw_best_lr_moves=adam_moves,
      scion_output_norm_within_half_log2=all(
          out[o]["output_norm_agrees"] for o in ("scion", "unconstrained_scion") if o in out),
  )
  return out


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  opts = [o for o in OPTIMIZERS if any(r["optimizer"] == o for r in result["runs"])]
  fig, axes = plt.subplots(1, len(opts), figsize=(5 * len(opts), 4), sharey=True, squeeze=False)
  finite = [r["val_loss"] for r in result["runs"] if math.isfinite(r["val_loss"])]
  top = min(max(finite), min(finite) + 1.5) if finite else 4.0
  for ax, opt in zip(axes[0], opts, strict=True):
    for i, w in enumerate(result["config"]["widths"]):
      rs = sorted((r for r in result["runs"] if r["optimizer"] == opt and r["width"] == w),
                  key=lambda r: r["lr"])
      if not rs:
        continue
      color = plt.cm.viridis(i / max(1, len(result["config"]["widths"]) - 1))
      x = [r["log2_lr"] for r in rs]
      y = [r["val_loss"] if math.isfinite(r["val_loss"]) else np.nan for r in rs]
      ax.plot(x, y, "o-", color=color, label=f"width {w}")
      b = result["best"].get(opt, {}).get(str(w))
      if b:
        ax.plot([b["log2_lr"]], [b["val_loss"]], "*", ms=14, color=color, mec="k")
    init = "scion init" if OPTIMIZERS[opt] == "scion" else "standard init"
    ax.set(title=f"{opt} ({init})", xlabel="log2 learning rate", ylim=(None, top))
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("final validation loss (nats / char)")
  axes[0][-1].legend()
  c = result["config"]
  fig.suptitle(f"{c['depth']}-layer char GPT on {os.path.basename(c['data'])}: {c['steps']} steps"
               f" of {c['batch']}x{c['seq']} tokens (star: best lr; diverged runs not drawn)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def print_table(result: dict) -> None:
  widths = result["config"]["widths"]
  for opt in result["grid"]:
    grid = sorted({r["lr"] for r in result["runs"] if r["optimizer"] == opt})
    print(f"\n{opt}: final validation loss (x: diverged; *: best at that width)")
    print(f"{'log2 lr':>8} " + " ".join(f"{'w=' + str(w):>9}" for w in widths))
    for lr in grid:
      cells = []
      for w in widths:
        r = next((r for r in result["runs"] if r["optimizer"] == opt and r["width"] == w
                  and r["lr"] == lr), None)
        b = result["best"].get(opt, {}).get(str(w))
        if r is None:
          cells.append(f"{'-':>9}")
        elif r["diverged"]:
          cells.append(f"{'x':>9}")
        else:
          star = "*" if b and b["lr"] == lr else " "
          cells.append(f"{r['val_loss']:8.4f}{star}")
      print(f"{math.log2(lr):8.0f} " + " ".join(cells))
  print(f"\n{'optimizer':<20} {'width':>5} {'best log2 lr':>12} {'val loss':>8} "
        f"{'||W_out|| RMS->inf':>18} {'log2':>6}")
  for opt, by_width in result["best"].items():
    for w, b in by_width.items():
      print(f"{opt:<20} {w:>5} {b['log2_lr']:12.0f} {b['val_loss']:8.4f} "
            f"{b['output_norm']:18.3g} {b['log2_output_norm']:6.2f}")
  print()
  for opt, t in result["targets"].items():
    if opt == "summary":
      continue
    print(f"{opt:<20} best-lr spread {t['best_lr_spread_log2']:.0f} (log2; target <= 1 for"
          f" Scion)  output-norm spread {t['output_norm_spread_log2']:.2f} (log2; target <= 0.5)"
          + (f"  best at grid edge: {t['best_at_grid_edge']}" if t["best_at_grid_edge"] else ""))
  print("targets:", json.dumps(result["targets"]["summary"]))


def main(argv: list[str] | None = None) -> None:
  parser = _common.sweep_parser(__doc__, FULL, REDUCED, "lr_transfer.json")
  parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--points", type=int, help="grid points per optimizer (odd)")
  parser.add_argument("--skip", nargs="*", default=[], metavar="OPT@WIDTH",
                      help="sweeps to leave out, e.g. unconstrained_scion@512 (recorded)")
  parser.add_argument("--extend", type=int, default=2,
                      help="runs allowed past each edge of the grid while the best sits on it")
  args = _common.parse_sweep(parser, argv, FULL, REDUCED)
  if args.report:
    with open(args.out) as f:
      result = json.load(f)
    result["best"] = best_points(result["runs"])
    result["targets"] = targets(result["best"], result["runs"])
    plot(result, os.path.splitext(args.out)[0] + ".png")
    print_table(result)
    return

  t_start = time.perf_counter()
  data = data_lib.load(args.data)
  grids = {opt: lr_grid(opt, args.points) for opt in args.optimizers}
  config = dict(
      data=data.source, data_fingerprint=data.fingerprint, vocab_size=data.vocab_size,
      full=args.full, widths=args.widths, depth=args.depth, heads=args.heads, steps=args.steps,
      batch=args.batch, seq=args.seq, points=args.points, eval_batches=args.eval_batches,
      seed=args.seed, extend=args.extend, skipped=args.skip, init=OPTIMIZERS,
      schedule="linear_decay, decay_frac 0.3, no warmup",
      beta=0.9, weight_decay=0.0,
      reduced_from=None if args.full else dict(
          FULL, note="REDUCED sizes so the sweep fits ~30 min on 2 busy CPU cores"),
      reference="LIONS-EPFL/scion shallow nanoGPT width transfer (shakespeare_char, 122 iters)")
  result = dict(benchmark="lr_transfer", date=datetime.datetime.now(datetime.UTC).isoformat(),
                command=_common.command("lr_transfer", argv),
                config=config, grid=grids, machine=machine_info(), runs=[], complete=False)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  done = {}
  if args.resume and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    new = _common.portable(json.loads(json.dumps(config)))
    if all(old["config"].get(k) == v for k, v in new.items() if k not in ("extend", "skipped")):
      done = {(r["optimizer"], r["width"], r["lr"]): r for r in old["runs"]}
  for width in args.widths:  # the costliest width last: a cut-short sweep keeps the others
    for opt in args.optimizers:
      if f"{opt}@{width}" in args.skip:
        continue
      sweep, t0, lrs = None, time.perf_counter(), list(grids[opt])
      while lrs:
        lr = lrs.pop(0)
        r = done.get((opt, width, lr))
        if r is None:
          sweep = sweep or Sweep(opt, width, args, data)
          r = dict(optimizer=opt, width=width, extension=lr not in grids[opt], **sweep.run(lr))
          print(f"{opt:<20} width {width:4d} lr 2^{r['log2_lr']:<4.0f} val {r['val_loss']:.4f}"
                f" out-norm {r['output_norm']:8.3g} {'diverged ' if r['diverged'] else ''}"
                f"({r['seconds']:.0f} s)", flush=True)
        result["runs"].append(r)
        result["best"] = best_points(result["runs"])
        result["targets"] = targets(result["best"], result["runs"])
        result["wall_s"] = time.perf_counter() - t_start
        _common.write_json(result, args.out)  # after every run: a cut-short sweep keeps it
        if not lrs:  # the grid is done: go on past an edge while the best run sits on it
          nxt = extension(result["runs"], opt, width, grids[opt], args.extend)
          lrs += [] if nxt is None else [nxt]
      print(f"  {opt} width {width}: {time.perf_counter() - t0:.0f} s", flush=True)
      result["best"] = best_points(result["runs"])
      result["targets"] = targets(result["best"], result["runs"])
      result["wall_s"] = time.perf_counter() - t_start
      _common.write_json(result, args.out)
    plot(result, png)
  result["complete"] = True
  result["wall_s"] = time.perf_counter() - t_start
  _common.write_json(result, args.out)
  plot(result, png)
  print_table(result)
  print(f"\nwrote {args.out} and {png} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
