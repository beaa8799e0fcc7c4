"""How many steps do Scion and Muon need to reach tuned AdamW's validation loss?

The GPT example (``examples.gpt.train``, width 256, depth 4, character-level
tinyshakespeare) trained with

* ``adamw`` (standard init) at 5 learning rates, ``DEFAULT_LR["adamw"]`` times
  ``2^-2 .. 2^2``, then up to ``--extend`` more past the edge if the best sits on
  it (run after Scion's): the target is the best final validation loss among them;
* ``scion`` and ``unconstrained_scion`` (scion init), our ``muon`` and
  ``optax_muon`` (``optax.contrib.muon``; both standard init) at their default
  learning rates from ``examples.gpt.train.DEFAULT_LR`` (one run each: AdamW
  gets 5 times the tuning budget);
* ``scion`` once more with a schedule ``0.67x`` as long (``scion@0.67``): a
  direct check of the target, since a curve read at an intermediate step has
  not had its learning-rate decay yet.

Each run evaluates every ``--eval-every`` steps; the step at which a curve first
reaches the target is interpolated linearly between evaluations. Everything
else is the example's default (linear decay over the last 30% of the steps, no
warmup, momentum decay beta 0.9 (0.95 for the Muons), no weight decay, 4 heads,
rotary).

Writes ``benchmarks/results/convergence.json`` (config, every curve, the
target, steps to reach it and their ratio to AdamW's, machine info, wall
time) and ``convergence.png`` (validation loss against step).

Target (printed as met or missed): Scion reaches AdamW's best final validation
loss in at most 0.67x AdamW's steps.

The default sizes are cut to fit ~30 minutes on two busy CPU cores (``REDUCED``);
``--full`` runs ``FULL``. The recorded results used ``--data tinyshakespeare.txt``
(the 1.1 MB tinyshakespeare text); without ``--data`` the example's own corpus
is used.

Usage, from the repository root::

  python -m benchmarks.convergence [--full] [--data PATH] [--steps N]
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
import time

import jax
import optax

from benchmarks import _common
from examples.gpt import data as data_lib
from examples.gpt import train as train_lib

REDUCED = dict(steps=200, batch=8, seq=64, eval_every=20, eval_batches=8)
FULL = dict(steps=600, batch=32, seq=128, eval_every=25, eval_batches=16)
ADAMW_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
PEERS = (  # (label, optimizer, init, fraction of the steps), in the order they run
    ("scion", "scion", "scion", 1.0),
    ("muon", "muon", "standard", 1.0),
    ("optax_muon", "optax_muon", "standard", 1.0),
    ("unconstrained_scion", "unconstrained_scion", "scion", 1.0),
    ("scion@0.67", "scion", "scion", 0.67),
)
TARGET_RATIO = 0.67


def crossing(curve: list[tuple[int, float]], target: float) -> float | None:
  """The first step at which ``curve`` reaches ``target``, linear between evaluations."""
  for (s0, v0), (s1, v1) in zip(curve, curve[1:], strict=False):
    if v1 <= target:
      return s1 if v0 == v1 else s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
  return None


def run_one(label, optimizer, init, lr, steps, args, root) -> dict:
  workdir = os.path.join(root, label.replace("@", "_") + f"_lr{lr:g}")
  cfg = train_lib.make_config(
      optimizer=optimizer, init=init, lr=lr, steps=steps, batch=args.batch, seq=args.seq,
      width=args.width, depth=args.depth, heads=args.heads, eval_every=args.eval_every,
      eval_batches=args.eval_batches, ckpt_every=steps, keep_ckpts=1, data=args.data,
      workdir=workdir, seed=args.seed, resume=False, progress=False, plot=False)
  t0 = time.perf_counter()
  out = train_lib.train(cfg)
  seconds = time.perf_counter() - t0
  with open(os.path.join(workdir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in records if r["kind"] == "eval"]
  tps = [r["tokens_per_s"] for r in records if r["kind"] == "train"][1:]  # past the compile
  shutil.rmtree(workdir, ignore_errors=True)
  return dict(label=label, optimizer=optimizer, init=init, lr=lr, steps=steps,
              val_loss=out["val_loss"], output_norm=out["output_norm"],
              curve=[(r["step"], r["val_loss"]) for r in evals],
              output_norm_curve=[(r["step"], r["output_norm"]) for r in evals],
              seconds=seconds, tokens_per_s=sum(tps) / len(tps) if tps else None)


def adamw_extension(runs: list[dict]) -> float | None:
  """The next AdamW learning rate past the edge of those tried that holds the best run."""
  adam = [r for r in runs if r["optimizer"] == "adamw"]
  finite = [r for r in adam if math.isfinite(r["val_loss"])]
  if not finite:
    return None
  best, lrs = min(finite, key=lambda r: r["val_loss"])["lr"], sorted(r["lr"] for r in adam)
  if best == lrs[0]:
    return lrs[0] / 2
  if best == lrs[-1]:
    return lrs[-1] * 2
  return None


def summarize(result: dict) -> None:
  adam = [r for r in result["runs"] if r["optimizer"] == "adamw" and math.isfinite(r["val_loss"])]
  if not adam:
    return
  best = min(adam, key=lambda r: r["val_loss"])
  target, n = best["val_loss"], best["steps"]
  result["adamw_best"] = dict(lr=best["lr"], val_loss=target, steps=n,
                              lrs_tried=[r["lr"] for r in result["runs"]
                                         if r["optimizer"] == "adamw"])
  result["adamw_best_at_grid_edge"] = best["lr"] in (min(result["adamw_best"]["lrs_tried"]),
                                                     max(result["adamw_best"]["lrs_tried"]))
  rows = {}
  for r in result["runs"]:
    if r["optimizer"] == "adamw":
      continue
    s = crossing(r["curve"], target)
    rows[r["label"]] = dict(lr=r["lr"], steps=r["steps"], final_val_loss=r["val_loss"],
                            steps_to_target=s, ratio_to_adamw=None if s is None else s / n,
                            final_below_target=r["val_loss"] <= target)
  result["to_target"] = rows
  sc, short = rows.get("scion"), rows.get("scion@0.67")
  result["targets"] = dict(
      scion_curve_reaches_target_within_0_67x=(
          None if sc is None else sc["ratio_to_adamw"] is not None
          and sc["ratio_to_adamw"] <= TARGET_RATIO),
      scion_0_67x_schedule_beats_target=None if short is None else short["final_below_target"],
  )
  tuned = {k: v for k, v in rows.items() if k.startswith("scion lr")}  # --scion-lrs runs
  if tuned:
    full = [v["ratio_to_adamw"] for k, v in tuned.items() if "@" not in k]
    result["targets"].update(
        scion_any_lr_curve_within_0_67x=any(x is not None and x <= TARGET_RATIO for x in full),
        scion_any_lr_0_67x_schedule_beats_target=any(
            v["final_below_target"] for k, v in tuned.items() if "@" in k),
    )


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
  best_lr = result.get("adamw_best", {}).get("lr")
  colors = {"scion": "C3", "scion@0.67": "C3", "unconstrained_scion": "C1", "muon": "C0",
            "optax_muon": "C2"}
  for r in result["runs"]:
    steps, vals = zip(*r["curve"], strict=True)
    _, norms = zip(*r["output_norm_curve"], strict=True)
    if r["optimizer"] == "adamw":
      best = r["lr"] == best_lr
      kw = dict(color="k", lw=2.0 if best else 0.8, alpha=1.0 if best else 0.4,
                label=f"adamw lr {r['lr']:.2g}" + (" (best)" if best else ""))
    else:
      extra = sorted({x["lr"] for x in result["runs"] if x["label"].startswith(("scion lr",
                                                                               "scion@0.67 lr"))})
      color = colors.get(r["label"]) or ("C5", "C8", "C9", "C7")[min(3, extra.index(r["lr"]))]
      kw = dict(color=color, lw=1.6, ls="--" if "@" in r["label"] else "-",
                label=f"{r['label']} lr {r['lr']:.3g}")
    ax0.plot(steps, vals, marker="o", ms=2.5, **kw)
    ax1.plot(steps, norms, marker="o", ms=2.5, **kw)
  if "adamw_best" in result:
    t = result["adamw_best"]["val_loss"]
    ax0.axhline(t, color="gray", ls=":", label=f"AdamW best final ({t:.3f})")
    ax0.axvline(TARGET_RATIO * result["adamw_best"]["steps"], color="gray", ls="-.", lw=0.8,
                label=f"{TARGET_RATIO}x AdamW's steps")
    finals = [r["val_loss"] for r in result["runs"] if math.isfinite(r["val_loss"])]
    ax0.set_ylim(min(finals) - 0.05, t + 0.8)
  c = result["config"]
  ax0.set(xlabel="step", ylabel="validation loss (nats / char)",
          title=f"GPT width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} tokens/step")
  ax0.legend(fontsize=7)
  ax1.set(xlabel="step", ylabel=r"$\|W_{out}\|_{RMS\to\infty}$", yscale="log",
          title="output-layer norm")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def print_table(result: dict) -> None:
  print(f"\n{'run':<22} {'lr':>9} {'steps':>5} {'final val':>9} {'output norm':>11} {'tok/s':>7}"
        f" {'s':>6}")
  for r in result["runs"]:
    tps = f"{r['tokens_per_s']:7.0f}" if r["tokens_per_s"] else f"{'-':>7}"
    print(f"{r['label']:<22} {r['lr']:9.3g} {r['steps']:5d} {r['val_loss']:9.4f}"
          f" {r['output_norm']:11.3g} {tps} {r['seconds']:6.0f}")
  if "adamw_best" not in result:
    return
  b = result["adamw_best"]
  print(f"\ntarget: AdamW's best final validation loss {b['val_loss']:.4f} (lr {b['lr']:.3g},"
        f" {b['steps']} steps)")
  print(f"{'optimizer':<22} {'steps to target':>15} {'x AdamW':>8} {'final val':>9}")
  for label, row in result["to_target"].items():
    s = "not reached" if row["steps_to_target"] is None else f"{row['steps_to_target']:.0f}"
    x = "-" if row["ratio_to_adamw"] is None else f"{row['ratio_to_adamw']:.2f}"
    print(f"{label:<22} {s:>15} {x:>8} {row['final_val_loss']:9.4f}")
  print("targets:", json.dumps(result["targets"]))


def main(argv: list[str] | None = None) -> None:
  parser = _common.sweep_parser(__doc__, FULL, REDUCED, "convergence.json")
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--eval-every", type=int, dest="eval_every")
  parser.add_argument("--skip", nargs="*", default=[], help="labels of peer runs to leave out")
  parser.add_argument("--scion-lrs", type=float, nargs="*", default=[], dest="scion_lrs",
                      help="more Scion learning rates, each run at 1x and 0.67x the steps")
  parser.add_argument("--extend", type=int, default=1,
                      help="AdamW runs allowed past the edge of its grid while the best sits on it")
  args = _common.parse_sweep(parser, argv, FULL, REDUCED)
  if args.report:
    with open(args.out) as f:
      result = json.load(f)
    plot(result, os.path.splitext(args.out)[0] + ".png")
    print_table(result)
    return

  t_start = time.perf_counter()
  data = data_lib.load(args.data)
  adamw_lrs = [train_lib.DEFAULT_LR["adamw"] * m for m in ADAMW_MULTIPLIERS]
  config = dict(
      data=data.source, data_fingerprint=data.fingerprint, vocab_size=data.vocab_size,
      full=args.full, width=args.width, depth=args.depth, heads=args.heads, steps=args.steps,
      batch=args.batch, seq=args.seq, eval_every=args.eval_every, eval_batches=args.eval_batches,
      seed=args.seed, extend=args.extend, scion_lrs=args.scion_lrs, adamw_lrs=adamw_lrs,
      default_lr=train_lib.DEFAULT_LR,
      peers=[dict(label=p[0], optimizer=p[1], init=p[2], steps=round(p[3] * args.steps))
             for p in PEERS if p[0] not in args.skip],
      schedule="linear_decay, decay_frac 0.3, no warmup", weight_decay=0.0,
      tuning_budget="AdamW: 5 learning rates; every other optimizer: 1 (its default)",
      reduced_from=None if args.full else dict(
          FULL, note="REDUCED sizes so the benchmark fits ~30 min on 2 busy CPU cores"))
  dev = _common.device_name()
  result = dict(benchmark="convergence", date=datetime.datetime.now(datetime.UTC).isoformat(),
                command=_common.command("convergence", argv),
                config=config, machine=dict(device=dev, backend=jax.default_backend(),
                                            jax=jax.__version__, optax=optax.__version__,
                                            load_average_at_start=os.getloadavg()),
                runs=[], complete=False)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  peers = [(label, opt, init, train_lib.DEFAULT_LR[opt], round(frac * args.steps))
           for label, opt, init, frac in PEERS if label not in args.skip]
  # None: extend AdamW's grid past an edge that holds its best run (after Scion's run).
  jobs = [("adamw", "adamw", "standard", lr, args.steps) for lr in adamw_lrs]
  jobs += peers[:1] + [None] + peers[1:]
  for lr in args.scion_lrs:  # a small Scion sweep, labelled by its learning rate
    k = f"{math.log2(lr):g}"
    jobs += [(f"scion lr 2^{k}", "scion", "scion", lr, args.steps),
             (f"scion@0.67 lr 2^{k}", "scion", "scion", lr, round(TARGET_RATIO * args.steps))]
  done, extended = {}, 0
  if args.resume and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    new = _common.portable(json.loads(json.dumps(config)))
    if all(old["config"].get(k) == v for k, v in new.items() if k not in ("extend", "scion_lrs")):
      done = {(r["label"], r["lr"], r["steps"]): r for r in old["runs"]}
  with tempfile.TemporaryDirectory(prefix="convergence_") as root:
    while jobs:
      job = jobs.pop(0)
      if job is None:
        nxt = adamw_extension(result["runs"])
        if nxt is None or extended >= args.extend:
          continue
        extended += 1
        jobs.insert(0, None)
        job = ("adamw", "adamw", "standard", nxt, args.steps)
      label, opt, init, lr, steps = job
      r = done.get((label, lr, steps)) or run_one(label, opt, init, lr, steps, args, root)
      result["runs"].append(r)
      print(f"{label:<22} lr {lr:<9.3g} {steps:4d} steps: val {r['val_loss']:.4f}"
            f" ({r['seconds']:.0f} s)", flush=True)
      summarize(result)
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
