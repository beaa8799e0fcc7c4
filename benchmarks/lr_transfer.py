"""Does the best learning rate transfer across width and depth? Scion against AdamW on a char GPT.

Mirrors the shallow-nanoGPT width-transfer experiment of LIONS-EPFL/scion
(shakespeare_char, 122 iterations): the character GPT of ``benchmarks/gpt`` is
trained on tinyshakespeare for a fixed number of steps at every learning rate
of a powers-of-2 grid, in two sweeps,

* **width**: 2 blocks at widths 64, 128, 256 and 512 (``--widths``, ``--depth``),
* **depth**: width 64 at 2, 4 and 8 blocks, 300 steps (``--depths``,
  ``--depth-width``, ``--depth-steps``),

each for

* ``scion`` and ``unconstrained_scion`` (the example's Scion rules, scion init),
* ``adamw`` with the standard parameterization and Flax's default init,

each grid centred on :data:`LOG2_CENTRE` (the power of 2 nearest the example's
default learning rate when the sweeps were recorded), and extended by up to ``--extend``
points past an edge while the best run of a width (or depth) sits on it. The
radii are the library's (hidden 3, output 10: ``_common.RECORDED_SETTINGS``);
everything else is the example's default (linear decay over the last 30% of the steps, no
warmup, momentum decay ``beta = 0.9``, AdamW's ``b1``, no weight decay, 4 heads,
rotary positions; the residual branches are not scaled with depth).

Each run's final validation loss (the same fixed validation windows for all)
and output-layer norm ``||W_out||_{RMS->inf}`` (the [NT] metric) go to
``benchmarks/results/lr_transfer.json``, one section per sweep (``"width"``,
``"depth"``) with the best learning rate per width or depth; ``lr_transfer.png``
has a row of panels per sweep, a panel per optimizer and a curve per width or
depth. A run whose training loss turns non-finite or exceeds twice its start is
stopped and counted as diverged.

Targets (printed as met or missed), for each sweep: Scion's best learning rate
is the same grid point, at most one power of 2 apart, at every width (depth),
while AdamW's moves across width (across depth its spread is reported); the
output norm at each optimum agrees within 0.5 in log2.

The default sizes are cut to fit ~30 minutes per sweep on two busy CPU cores
(see ``REDUCED``); ``--full`` runs the bigger configuration (``FULL``: 122
steps of 32 x 128 tokens, as in the reference). Each (optimizer, width, depth)
compiles one training step whose peak learning rate is an argument, so a grid
costs one compilation, not seven. ``--only depth`` runs one sweep and keeps the
other's section of ``--out`` as it is (a file written before the depth sweep
existed is read as its width section).

The recorded results used ``--data tinyshakespeare.txt`` (the 1.1 MB
tinyshakespeare text); without ``--data`` the example's own corpus is used.

Usage, from the repository root::

  python -m benchmarks.lr_transfer [--full] [--data PATH] [--only width|depth]

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
from benchmarks.gpt import data as data_lib
from benchmarks.gpt import model as model_lib
from benchmarks.gpt import train as train_lib

OPTIMIZERS = {"scion": "scion", "unconstrained_scion": "scion", "adamw": "standard"}  # -> init
AXES = ("width", "depth")  # the two sweeps: the size that varies in each
REDUCED = dict(steps=100, batch=8, seq=64, points=7, eval_batches=16)
FULL = dict(steps=122, batch=32, seq=128, points=7, eval_batches=32)


# log2 of each grid's centre: the power of 2 nearest the example's default learning rate when
# the recorded sweeps were made (as the radii, _common.RECORDED_SETTINGS).
LOG2_CENTRE = {"scion": -7, "unconstrained_scion": -7, "adamw": -8}


def lr_grid(optimizer: str, points: int) -> list[float]:
  """Powers of 2 centred on ``2^LOG2_CENTRE[optimizer]``."""
  centre = LOG2_CENTRE[optimizer]
  lo = centre - (points - 1) // 2
  return [2.0**k for k in range(lo, lo + points)]


def machine_info() -> dict:
  return dict(device=_common.device_name(), backend=jax.default_backend(), jax=jax.__version__,
              optax=optax.__version__, python=platform.python_version(),
              load_average_at_start=os.getloadavg())


def load(path: str) -> dict:
  """The results at ``path`` as ``{"benchmark", "width": section, "depth": section}``.

  A file from before the depth sweep, one width sweep at its top level, comes
  back as its ``"width"`` section.
  """
  with open(path) as f:
    result = json.load(f)
  if "runs" in result:
    return dict(benchmark=result.pop("benchmark", "lr_transfer"), width=result)
  return result


class Sweep:
  """One (optimizer, width, depth): a model, a compiled step taking the peak lr, val windows."""

  def __init__(self, optimizer: str, width: int, depth: int, steps: int, args,
               data: data_lib.Dataset):
    self.cfg = train_lib.resolve(train_lib.make_config(
        **_common.RECORDED_SETTINGS,
        optimizer=optimizer, init=OPTIMIZERS[optimizer], steps=steps, batch=args.batch,
        seq=args.seq, width=width, depth=depth, heads=args.heads, seed=args.seed))
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
      out["output_norm"] = float(ol.norms.RowNorm().norm(head))
    out["seconds"] = time.perf_counter() - t0
    return out


def best_points(runs: list[dict], axis: str = "width") -> dict:
  """For each optimizer and size on ``axis``: the run with the lowest final validation loss."""
  best: dict = {}
  for r in runs:
    if r["diverged"] or not math.isfinite(r["val_loss"]):
      continue
    cur = best.setdefault(r["optimizer"], {}).get(str(r[axis]))
    if cur is None or r["val_loss"] < cur["val_loss"]:
      best[r["optimizer"]][str(r[axis])] = dict(
          lr=r["lr"], log2_lr=r["log2_lr"], val_loss=r["val_loss"],
          output_norm=r["output_norm"], log2_output_norm=math.log2(r["output_norm"]))
  return best


def tried(runs: list[dict], opt: str, axis: str, size: int) -> list[float]:
  return sorted(r["lr"] for r in runs if r["optimizer"] == opt and r[axis] == size)


def extension(runs: list[dict], opt: str, axis: str, size: int, grid: list[float], extend: int):
  """The next learning rate past the edge of the tried ones that holds the best run, if any."""
  b = best_points(runs, axis).get(opt, {}).get(str(size))
  lrs = tried(runs, opt, axis, size)
  if b is None:
    return None
  if b["lr"] == lrs[0] and lrs[0] > min(grid) / 2**extend:
    return lrs[0] / 2
  if b["lr"] == lrs[-1] and lrs[-1] < max(grid) * 2**extend:
    return lrs[-1] * 2
  return None


def targets(best: dict, runs: list[dict], axis: str = "width") -> dict:
  """The transfer targets along ``axis``, per optimizer, with the numbers behind them."""
  out = {}
  for opt, by_size in best.items():
    lrs = [b["log2_lr"] for b in by_size.values()]
    on = [b["log2_output_norm"] for b in by_size.values()]
    edge = [n for n, b in by_size.items()
            if b["lr"] in (tried(runs, opt, axis, int(n))[0], tried(runs, opt, axis, int(n))[-1])]
    out[opt] = dict(
        log2_best_lr=dict(zip(by_size, lrs, strict=True)),
        best_lr_spread_log2=max(lrs) - min(lrs),
        best_lr_transfers=max(lrs) - min(lrs) <= 1.0,
        log2_output_norm_at_best=dict(zip(by_size, on, strict=True)),
        output_norm_spread_log2=max(on) - min(on),
        output_norm_agrees=max(on) - min(on) <= 0.5,
        best_at_grid_edge=edge,
    )
  scions = [o for o in ("scion", "unconstrained_scion") if o in out]
  out["summary"] = dict(
      scion_best_lr_within_one_power_of_2=all(out[o]["best_lr_transfers"] for o in scions),
      adamw_best_lr_moves="adamw" in out and out["adamw"]["best_lr_spread_log2"] >= 1.0,
      scion_output_norm_within_half_log2=all(out[o]["output_norm_agrees"] for o in scions),
  )
  return out


def sizes(section: dict, axis: str) -> list[int]:
  return section["config"][axis + "s"]


def fixed(section: dict, axis: str) -> str:
  """What the sweep along ``axis`` holds fixed, e.g. ``"depth 2, 100 steps of 8x64"``."""
  c = section["config"]
  other = "depth" if axis == "width" else "width"
  return f"{other} {c[other]}, {c['steps']} steps of {c['batch']}x{c['seq']}"


def plot(result: dict, path: str) -> None:
  """A row of panels per sweep in ``result``, a panel per optimizer, a curve per size."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  axes_ = [a for a in AXES if a in result]
  opts = [o for o in OPTIMIZERS if any(r["optimizer"] == o for a in axes_
                                       for r in result[a]["runs"])]
  fig, axes = plt.subplots(len(axes_), len(opts), figsize=(5 * len(opts), 4 * len(axes_)),
                           sharey="row", squeeze=False)
  for row, axis in zip(axes, axes_, strict=True):
    sec = result[axis]
    finite = [r["val_loss"] for r in sec["runs"] if math.isfinite(r["val_loss"])]
    lo = min(finite, default=0.0)
    top = min(max(finite), lo + 1.5) if finite else 4.0
    drawn = []
    for ax, opt in zip(row, opts, strict=True):
      if not any(r["optimizer"] == opt for r in sec["runs"]):
        ax.set_visible(False)
        continue
      drawn.append(ax)
      for i, n in enumerate(sizes(sec, axis)):
        rs = sorted((r for r in sec["runs"] if r["optimizer"] == opt and r[axis] == n),
                    key=lambda r: r["lr"])
        if not rs:
          continue
        color = plt.cm.viridis(i / max(1, len(sizes(sec, axis)) - 1))
        x = [r["log2_lr"] for r in rs]
        y = [r["val_loss"] if math.isfinite(r["val_loss"]) else np.nan for r in rs]
        ax.plot(x, y, "o-", color=color, label=f"{axis} {n}")
        b = sec.get("best", {}).get(opt, {}).get(str(n))
        if b:
          ax.plot([b["log2_lr"]], [b["val_loss"]], "*", ms=14, color=color, mec="k")
      init = "scion init" if OPTIMIZERS[opt] == "scion" else "standard init"
      ax.set(title=f"{opt} ({init})\nby {axis}: {fixed(sec, axis)}", xlabel="log2 learning rate",
             ylim=(lo - 0.05 * (top - lo), top + 0.05 * (top - lo)))
      ax.title.set_fontsize(10)
      ax.grid(alpha=0.3)
    if drawn:
      drawn[0].set_ylabel("final validation loss (nats / char)")
      drawn[-1].legend()
  data = ", ".join(sorted({os.path.basename(result[a]["config"]["data"]) for a in axes_}))
  fig.suptitle(f"char GPT on {data} (star: best lr; diverged runs not drawn)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def print_table(section: dict, axis: str) -> None:
  ns = sizes(section, axis)
  print(f"\n== {axis} sweep: {fixed(section, axis)}")
  for opt in section["grid"]:
    grid = sorted({r["lr"] for r in section["runs"] if r["optimizer"] == opt})
    print(f"\n{opt}: final validation loss (x: diverged; *: best at that {axis})")
    print(f"{'log2 lr':>8} " + " ".join(f"{axis[0] + '=' + str(n):>9}" for n in ns))
    for lr in grid:
      cells = []
      for n in ns:
        r = next((r for r in section["runs"] if r["optimizer"] == opt and r[axis] == n
                  and r["lr"] == lr), None)
        b = section["best"].get(opt, {}).get(str(n))
        if r is None:
          cells.append(f"{'-':>9}")
        elif r["diverged"]:
          cells.append(f"{'x':>9}")
        else:
          star = "*" if b and b["lr"] == lr else " "
          cells.append(f"{r['val_loss']:8.4f}{star}")
      print(f"{math.log2(lr):8.0f} " + " ".join(cells))
  print(f"\n{'optimizer':<20} {axis:>5} {'best log2 lr':>12} {'val loss':>8} "
        f"{'||W_out|| RMS->inf':>18} {'log2':>6}")
  for opt, by_size in section["best"].items():
    for n, b in by_size.items():
      print(f"{opt:<20} {n:>5} {b['log2_lr']:12.0f} {b['val_loss']:8.4f} "
            f"{b['output_norm']:18.3g} {b['log2_output_norm']:6.2f}")
  print()
  for opt, t in section["targets"].items():
    if opt == "summary":
      continue
    print(f"{opt:<20} best-lr spread {t['best_lr_spread_log2']:.0f} (log2; target <= 1 for"
          f" Scion)  output-norm spread {t['output_norm_spread_log2']:.2f} (log2; target <= 0.5)"
          + (f"  best at grid edge: {t['best_at_grid_edge']}" if t["best_at_grid_edge"] else ""))
  print("targets:", json.dumps(section["targets"]["summary"]))


def sweep_config(axis: str, args, data: data_lib.Dataset) -> dict:
  """What a sweep's runs depend on: a resumed sweep reuses runs only when this matches."""
  common = dict(data=data.source, data_fingerprint=data.fingerprint, vocab_size=data.vocab_size,
                full=args.full)
  rest = dict(
      heads=args.heads, batch=args.batch, seq=args.seq, points=args.points,
      eval_batches=args.eval_batches, seed=args.seed, extend=args.extend, skipped=args.skip,
      init=OPTIMIZERS, schedule="linear_decay, decay_frac 0.3, no warmup", beta=0.9,
      weight_decay=0.0)
  note = "REDUCED sizes so the sweep fits ~30 min on 2 busy CPU cores"
  if axis == "width":
    return dict(
        common, widths=args.widths, depth=args.depth, steps=args.steps, **rest,
        reduced_from=None if args.full else dict(FULL, note=note),
        reference="LIONS-EPFL/scion shallow nanoGPT width transfer (shakespeare_char, 122 iters)")
  return dict(
      common, depths=args.depths, width=args.depth_width, steps=args.depth_steps, **rest,
      reduced_from=None if args.full else dict(
          batch=FULL["batch"], seq=FULL["seq"], eval_batches=FULL["eval_batches"], note=note),
      reference="the width sweep's model, grid and schedule at one width and several depths")


def run_sweep(axis: str, args, argv, data: data_lib.Dataset, result: dict) -> None:
  """Runs the sweep along ``axis`` into ``result[axis]``, writing ``--out`` after every run."""
  t_start = time.perf_counter()
  grids = {opt: lr_grid(opt, args.points) for opt in args.optimizers}
  config = sweep_config(axis, args, data)
  old = result.get(axis) if args.resume else None
  sec = result[axis] = dict(
      date=datetime.datetime.now(datetime.UTC).isoformat(),
      command=_common.command("lr_transfer", argv), config=config, grid=grids,
      machine=machine_info(), runs=[], complete=False)
  done = {}
  if old is not None:
    new = _common.portable(json.loads(json.dumps(config)))
    if all(old["config"].get(k) == v for k, v in new.items() if k not in ("extend", "skipped")):
      done = {(r["optimizer"], r[axis], r["lr"]): r for r in old["runs"]}

  def save():
    sec["best"] = best_points(sec["runs"], axis)
    sec["targets"] = targets(sec["best"], sec["runs"], axis)
    sec["wall_s"] = time.perf_counter() - t_start
    _common.write_json(result, args.out)  # after every run: a cut-short sweep keeps it

  png = os.path.splitext(args.out)[0] + ".png"
  for n in sizes(sec, axis):  # the costliest size last: a cut-short sweep keeps the others
    for opt in args.optimizers:
      if (f"{opt}@{n}" if axis == "width" else f"{opt}@depth{n}") in args.skip:
        continue
      width, depth = (n, args.depth) if axis == "width" else (args.depth_width, n)
      sweep, t0, lrs = None, time.perf_counter(), list(grids[opt])
      while lrs:
        lr = lrs.pop(0)
        r = done.get((opt, n, lr))
        if r is None:
          sweep = sweep or Sweep(opt, width, depth, config["steps"], args, data)
          r = dict(optimizer=opt, **{axis: n}, extension=lr not in grids[opt], **sweep.run(lr))
          print(f"{opt:<20} {axis} {n:4d} lr 2^{r['log2_lr']:<4.0f} val {r['val_loss']:.4f}"
                f" out-norm {r['output_norm']:8.3g} {'diverged ' if r['diverged'] else ''}"
                f"({r['seconds']:.0f} s)", flush=True)
        sec["runs"].append(r)
        save()
        if not lrs:  # the grid is done: go on past an edge while the best run sits on it
          nxt = extension(sec["runs"], opt, axis, n, grids[opt], args.extend)
          lrs += [] if nxt is None else [nxt]
      print(f"  {opt} {axis} {n}: {time.perf_counter() - t0:.0f} s", flush=True)
    plot(result, png)
  sec["complete"] = True
  save()
  plot(result, png)
  print_table(sec, axis)
  print(f"\n{axis} sweep: wrote {args.out} and {png} in {sec['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> None:
  parser = _common.sweep_parser(__doc__, FULL, REDUCED, "lr_transfer.json")
  parser.add_argument("--only", nargs="+", default=list(AXES), choices=AXES,
                      help="the sweeps to run; the other's section of --out is kept")
  parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
  parser.add_argument("--depth", type=int, default=2, help="blocks in the width sweep")
  parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
  parser.add_argument("--depth-width", type=int, default=64, dest="depth_width",
                      help="width in the depth sweep")
  parser.add_argument("--depth-steps", type=int, default=300, dest="depth_steps",
                      help="steps in the depth sweep (--steps sets the width sweep's)")
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
  parser.add_argument("--points", type=int, help="grid points per optimizer (odd)")
  parser.add_argument("--skip", nargs="*", default=[], metavar="OPT@SIZE",
                      help="sweeps to leave out, e.g. unconstrained_scion@512 (a width) or"
                      " adamw@depth8 (recorded)")
  parser.add_argument("--extend", type=int, default=2,
                      help="runs allowed past each edge of the grid while the best sits on it")
  args = _common.parse_sweep(parser, argv, FULL, REDUCED)
  png = os.path.splitext(args.out)[0] + ".png"
  if args.report:
    result = load(args.out)
    for axis in AXES:
      if axis in result:
        sec = result[axis]
        sec["best"] = best_points(sec["runs"], axis)
        sec["targets"] = targets(sec["best"], sec["runs"], axis)
        print_table(sec, axis)
    plot(result, png)
    return

  result = load(args.out) if os.path.exists(args.out) else dict(benchmark="lr_transfer")
  data = data_lib.load(args.data)
  for axis in AXES:
    if axis in args.only:
      run_sweep(axis, args, argv, data, result)


if __name__ == "__main__":
  main()
