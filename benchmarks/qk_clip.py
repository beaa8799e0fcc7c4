"""QK-clip under a too-large learning rate: the largest attention logit, loss spikes, final loss.

The GPT trainer at the ``cpu`` shape of ``benchmarks/ablation.py`` (4 layers,
width 128, 4 heads, context 128, batch 16, 1000 steps, evaluations every 50
steps on 16 batches). For each optimizer at its best settings found there,
:data:`ARMS` (our Muon, ``ol.muon`` from Flax's init at lr 0.01; constrained
Scion from ``ol.init_params`` at radii 48/160 and lr ``2^-11``):

1. ``reference``: the best learning rate, without QK-clip;
2. ``4x``: four times that learning rate, without QK-clip;
3. ``4x + clip``: four times it with ``--qk-clip TAU``, ``TAU`` the largest
   attention logit the reference run reached at any evaluation (what a healthy
   run needs, rounded up to an integer; seed 0's reference for a seed run
   without its own, ``--variants "4x,4x + clip"``).

Every evaluation logs the largest pre-softmax attention logit of any head on
the first validation batch (``max_logit`` in the trainer's ``log.jsonl``). A
loss spike is a logged training loss (every 10 steps) more than
:data:`SPIKE` nats above the lowest of the :data:`WINDOW` logged before it.

Prints a table, writes ``benchmarks/results/qk_clip.json``, ``qk_clip.md`` (the
table ``docs/qk_clip.md`` includes) and ``qk_clip.png`` (the max-logit and
validation-loss traces).

Usage, from the repository root::

  python -m benchmarks.qk_clip --data PATH [--arms muon,scion] [--seed 0] [--variants ...]
                               [--resume] [--report]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile

import jax
import optax

from benchmarks import _common
from benchmarks.ablation import MUON, SHAPE

ARMS = {  # each optimizer's best run of benchmarks/results/ablation.json
    "muon": MUON,
    "scion": dict(optimizer="scion", init="rms", hidden_radius=48.0, output_radius=160.0,
                  lr=2**-11, decay_frac=0.5),
}
FACTOR = 4.0  # the learning rate of the stressed runs, over the best
SPIKE = 0.2  # nats above the recent lowest logged training loss
WINDOW = 5  # logged training losses (every 10 steps) that "recent" covers
VARIANTS = ("reference", "4x", "4x + clip")


def spikes(losses: list[float], spike: float = SPIKE, window: int = WINDOW) -> int:
  """How many of ``losses`` exceed the lowest of the ``window`` before them by more than ``spike``.

  A non-finite loss counts as a spike.
  """
  n = 0
  for i, v in enumerate(losses):
    before = losses[max(0, i - window):i]
    if not math.isfinite(v) or (before and v > min(before) + spike):
      n += 1
  return n


def settings_for(arm: str, variant: str, tau: float | None, seed: int) -> dict:
  base = {**ARMS[arm], "seed": seed}
  if variant == "reference":
    return base
  out = {**base, "lr": base["lr"] * FACTOR}
  return out if variant == "4x" else {**out, "qk_clip": tau}


def tau_from(reference: dict) -> float:
  """The clip threshold: the reference run's largest logged logit, rounded up."""
  return float(math.ceil(max(m for _, m in reference["max_logit"])))


def run_one(settings: dict, data: str | None, root: str) -> dict:
  _, out, records, seconds = _common.train_settings(SHAPE, settings, data, root)
  if out is None:
    return dict(settings=settings, val_loss=math.nan, curve=[], max_logit=[], train=[],
                spikes=None, seconds=None)
  evals = [r for r in records if r["kind"] == "eval"]
  train = [[r["step"], r["loss"]] for r in records if r["kind"] == "train"]
  return dict(settings=settings, val_loss=out["val_loss"],
              curve=[[r["step"], r["val_loss"]] for r in evals],
              max_logit=[[r["step"], r["max_logit"]] for r in evals], train=train,
              spikes=spikes([v for _, v in train]), seconds=seconds)


def rows(result: dict) -> list[dict]:
  """One row per run: arm, variant, lr, tau, final loss, peak logit, spikes, worst jump."""
  out = []
  for r in result["runs"]:
    s, train = r["settings"], [v for _, v in r["train"]]
    jumps = [v - min(train[max(0, i - WINDOW):i]) for i, v in enumerate(train) if i]
    out.append(dict(arm=r["arm"], variant=r["variant"], seed=s["seed"], lr=s["lr"],
                    tau=s.get("qk_clip"), val_loss=r["val_loss"],
                    peak=max((m for _, m in r["max_logit"]), default=math.nan),
                    final_logit=r["max_logit"][-1][1] if r["max_logit"] else math.nan,
                    spikes=r["spikes"], worst=max(jumps, default=math.nan)))
  return out


def markdown(result: dict) -> str:
  lines = ["| optimizer | run | seed | lr | tau | final val loss | largest logit (peak / end)"
           " | loss spikes | worst jump (nats) |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows(result):
    e = math.log2(r["lr"])
    lr = f"2^{e:.0f}" if e == round(e) else f"{r['lr']:.3g}"
    tau = "" if r["tau"] is None else f"{r['tau']:g}"
    loss = "diverged" if not math.isfinite(r["val_loss"]) else f"{r['val_loss']:.4f}"
    lines.append(f"| {r['arm']} | {r['variant']} | {r['seed']} | {lr} | {tau} | {loss} |"
                 f" {r['peak']:.1f} / {r['final_logit']:.1f} | {r['spikes']} |"
                 f" {r['worst']:.3f} |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arms = sorted({r["arm"] for r in result["runs"]})
  fig, axes = plt.subplots(2, len(arms), figsize=(5 * len(arms), 7), squeeze=False)
  for j, arm in enumerate(arms):
    for r in (r for r in result["runs"] if r["arm"] == arm and r["max_logit"]):
      seed = r["settings"]["seed"]
      style = dict(color=f"C{VARIANTS.index(r['variant'])}", linestyle=("-", "--", ":")[seed % 3],
                   label=f"{r['variant']} (seed {seed})")
      axes[0, j].plot(*zip(*r["max_logit"], strict=True), **style)
      axes[1, j].plot(*zip(*r["curve"], strict=True), **style)
    axes[0, j].set(title=arm, ylabel="largest attention logit", yscale="log")
    axes[1, j].set(xlabel="step", ylabel="validation loss", ylim=(1.4, 2.6))
    axes[0, j].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="a UTF-8 text file (recorded: tinyshakespeare.txt)")
  p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {tuple(ARMS)}")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated, from {VARIANTS}; without this seed's reference, tau"
                      " comes from seed 0's")
  p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
  p.add_argument("--report", action="store_true", help="no training: the table and plot only")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "qk_clip.json"))
  args = p.parse_args(argv)
  for name, allowed in (("arms", tuple(ARMS)), ("variants", VARIANTS)):
    bad = [v for v in getattr(args, name).split(",") if v not in allowed]
    if bad:
      p.error(f"--{name}: {bad} not among {allowed}")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse(argv)
  result = dict(benchmark="qk_clip", command=_common.command("qk_clip", argv),
                config=dict(**SHAPE, data=args.data, arms=ARMS, factor=FACTOR, spike=SPIKE,
                            window=WINDOW), runs=[],
                machine=dict(device=_common.device_name(), jax=jax.__version__,
                             optax=optax.__version__))
  if (args.resume or args.report) and os.path.exists(args.out):
    with open(args.out) as f:
      result["runs"] = json.load(f)["runs"]
  with tempfile.TemporaryDirectory() as root:
    for arm in [] if args.report else args.arms.split(","):
      for variant in args.variants.split(","):
        done = {(r["arm"], r["variant"], r["settings"]["seed"]): r for r in result["runs"]}
        ref = done.get((arm, "reference", args.seed)) or done.get((arm, "reference", 0))
        tau = None if ref is None or not ref["max_logit"] else tau_from(ref)
        if (arm, variant, args.seed) in done:
          continue
        if variant == "4x + clip" and tau is None:
          print(f"[{arm} {variant}] skipped: no finite reference run gives tau", flush=True)
          continue
        settings = settings_for(arm, variant, tau, args.seed)
        print(f"[{arm} {variant}] {settings}", flush=True)
        run = run_one(settings, args.data, root)
        result["runs"].append(dict(arm=arm, variant=variant, **run))
        print(f"  val {run['val_loss']:.4f}, spikes {run['spikes']}", flush=True)
        result["date"] = datetime.datetime.now(datetime.UTC).isoformat()
        _common.write_json(result, args.out)
  table = markdown(result)
  print(table)
  base = os.path.splitext(args.out)[0]
  with open(base + ".md", "w") as f:
    f.write(table)
  plot(result, base + ".png")


if __name__ == "__main__":
  main()
