"""The newest of the family at the cpu base point, in steps to AdamW's best: NorMuon's row
normalization, AOL-preconditioned Newton–Schulz and the hyperball, each on its own lr grid.

The GPT trainer (``benchmarks.gpt.train``) at the shape of ``benchmarks/ablation.py`` (4
layers, width 128, 4 heads, context 128, batch 16, 1000 steps, evaluations every 50 steps
on 16 batches), tinyshakespeare in the recorded results. One row per optimizer:

1. ``scion``: Scion at the trainer's defaults (radii 48 and 160 from ``ol.init_params``, the
   learning rate decaying over the last half);
2. ``scion_row_norm``: the same with NorMuon's row normalization (``--row-norm``);
3. ``normuon``: our Muon (``ablation.MUON``: Flax's init) with the row normalization, i.e.
   NorMuon;
4. ``scion_aol``: Scion with 4 AOL-preconditioned Newton–Schulz steps (``--ns-precondition
   aol --ns-coeffs aol``);
5. ``hyperball``: MuonH on the hidden matrices, AdamH on the head, AdamW (3e-3) on the
   embedding and gains (``--optimizer hyperball``, Flax's init).

Each row runs its learning rate x1/2, x1 and x2 around its centre (:data:`ROWS`), extended
past an edge that wins (at most ``ablation.MAX_EXTEND`` more), then its best again at seed
1; AdamW's best (``ablation.ADAMW_SEED1``) runs at seed 1 too. The target is AdamW's best
final validation loss in ``benchmarks/results/convergence.json`` (seed 1: AdamW's seed-1
run); the report also sets each row against today's best Scion recipe, the ``combined``
stage of ``benchmarks/results/ablation.json``, and says whether it beats it by more than
:data:`NOISE` on both seeds.

Usage, from the repository root::

  python -m benchmarks.newest --data PATH [--resume] [--report] [--rows scion,hyperball]
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
from benchmarks import ablation as ab
from benchmarks.gpt import optim

SHAPE = ab.SHAPE
# row -> (its settings without the learning rate, the centre of its learning-rate grid)
ROWS = {
    "scion": (dict(optimizer="scion"), 2**-11),
    "scion_row_norm": (dict(optimizer="scion", row_norm=True), 2**-11),
    "normuon": ({**{k: v for k, v in ab.MUON.items() if k != "lr"}, "row_norm": True},
                ab.MUON["lr"]),
    "scion_aol": (dict(optimizer="scion", ns_precondition="aol", ns_coeffs="aol"), 2**-11),
    "hyperball": (dict(optimizer="hyperball"), 2**-6),  # run before its default was measured
}
NOISE = 0.01  # seed-to-seed noise floor of the final loss at this shape (ablation.json)
RESOLVED = ("optimizer", "init", "lr", "adam_lr", "beta", "hidden_radius", "output_radius",
            "decay_frac", "steps", "seed", "nesterov", "row_norm", "polar", "ns_coeffs",
            "ns_steps", "ns_precondition")


def _lr_step(p: dict, s: int) -> dict:
  return {**p, "lr": p["lr"] * 2.0**s}


def plan(runs: dict) -> dict[str, list[dict]]:
  """Every row's runs given those done so far: its grid, then its best at seed 1."""
  stages = {}
  for name, (base, centre) in ROWS.items():
    grid = ab._grid(runs, [{**base, "lr": centre * f} for f in (0.5, 1.0, 2.0)], _lr_step)
    done = all(ab.key(p) in runs for p in grid)  # _grid adds an unrun point while it extends
    stages[name] = grid + ([{**ab._best(runs, grid), "seed": 1}] if done else [])
  stages["adamw_seed1"] = [ab.ADAMW_SEED1]
  return stages


def run_one(settings: dict, data: str | None, root: str) -> dict:
  """Trains one run; its resolved settings, curve, final loss (NaN: diverged) and seconds."""
  cfg, out, records, seconds = _common.train_settings(SHAPE, settings, data, root)
  resolved = {k: getattr(optim.resolve(cfg), k) for k in RESOLVED}
  if out is None:
    return dict(settings=settings, resolved=resolved, val_loss=math.nan, curve=[], seconds=None)
  evals = [[r["step"], r["val_loss"]] for r in records if r["kind"] == "eval"]
  val = out["val_loss"] if math.isfinite(out["val_loss"]) else math.nan
  return dict(settings=settings, resolved=resolved, val_loss=val, curve=evals,
              output_norm=out["output_norm"], seconds=seconds)


def recipe(path: str) -> dict | None:
  """Today's best Scion recipe: the ``combined`` stage's best run of ``ablation.json`` at seeds
  0 and 1 (final losses), or ``None`` without that file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    runs = [r for r in json.load(f)["runs"] if r.get("stage") == "combined"]
  seed0 = [r for r in runs if r["settings"].get("seed", 0) == 0]
  seed1 = [r for r in runs if r["settings"].get("seed", 0) == 1]
  if not seed0:
    return None
  best = min(seed0, key=lambda r: ab._loss({ab.key(r["settings"]): r}, r["settings"]))
  return {"settings": best["settings"], "val_loss": best["val_loss"],
          "val_loss_seed1": seed1[0]["val_loss"] if seed1 else None}


def summary(result: dict) -> list[dict]:
  """One row per run: its row, settings, final loss, steps to AdamW's best (seed 0: the
  convergence sweep's best AdamW; seed 1: AdamW's seed-1 run); ``best`` marks a grid's best."""
  runs = {ab.key(r["settings"]): r for r in result["runs"]}
  adam = min((b for b in result["baselines"] if b["optimizer"] == "adamw"),
             key=lambda b: b["val_loss"])
  goals = {0: (adam["val_loss"], ab.steps_to(adam["curve"], adam["val_loss"]))}
  adam1 = runs.get(ab.key(ab.ADAMW_SEED1))
  if adam1 is not None:
    goals[1] = (adam1["val_loss"], ab.steps_to(adam1["curve"], adam1["val_loss"]))
  rows = []
  for name, points in plan(runs).items():
    grid = [p for p in points if p.get("seed", 0) == 0]
    top = ab._best(runs, grid)
    for p in points:
      if ab.key(p) not in runs:
        continue
      r = runs[ab.key(p)]
      goal, base_steps = goals.get(p.get("seed", 0), (None, None))
      ratio = None if goal is None else ab._ratio(ab.steps_to(r["curve"], goal), base_steps)
      best = name != "adamw_seed1" and p is top
      rows.append(dict(row=name, what={k: v for k, v in p.items() if k != "lr"}, lr=p["lr"],
                       seed=p.get("seed", 0), val_loss=r["val_loss"], best=best,
                       edge=best and p in (grid[0], grid[-1]), ratio=ratio))
  return rows


def verdicts(result: dict) -> dict[str, str]:
  """Per row: whether its best beats today's Scion recipe by more than NOISE on both seeds."""
  best = result.get("recipe")
  rows = summary(result)
  out = {}
  for name in ROWS:
    mine = {r["seed"]: r["val_loss"] for r in rows if r["row"] == name and
            (r["best"] or r["seed"] == 1)}
    if best is None or best["val_loss_seed1"] is None or set(mine) != {0, 1}:
      out[name] = "not run yet"
      continue
    margins = (best["val_loss"] - mine[0], best["val_loss_seed1"] - mine[1])
    won = all(m > NOISE for m in margins)
    out[name] = (f"{'beats' if won else 'does not beat'} it by more than {NOISE} on both seeds"
                 f" (by {margins[0]:+.4f} at seed 0, {margins[1]:+.4f} at seed 1)")
  return out


def markdown(result: dict) -> str:
  """The table (what ``--report`` prints and writes next to the JSON), then the verdicts."""
  lines = ["| row | settings | lr | seed | final val loss | steps to AdamW's best |",
           "|---|---|---|---|---|---|"]
  for r in summary(result):
    desc = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in r["what"].items() if k != "seed")
    ratio = "not reached" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    loss = f"{r['val_loss']:.4f}" + (" (grid edge)" if r["edge"] else "")
    if r["best"]:
      loss, ratio = f"**{loss}**", f"**{ratio}**"
    e = math.log2(r["lr"])
    lr = f"2^{e:.0f}" if e == round(e) else f"{r['lr']:.3g}"
    lines.append(f"| {r['row']} | {desc} | {lr} | {r['seed']} | {loss} | {ratio} |")
  best = result.get("recipe")
  if best is not None:
    lines += ["", f"Today's best Scion recipe (ablation.json, combined): {best['val_loss']:.4f}"
              + ("" if best["val_loss_seed1"] is None else
                 f" at seed 0, {best['val_loss_seed1']:.4f} at seed 1") + "."]
    lines += [f"- {name}: {v}" for name, v in verdicts(result).items()]
  return "\n".join(lines) + "\n"


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="a UTF-8 text file (recorded: tinyshakespeare.txt)")
  p.add_argument("--rows", default=",".join(ROWS),
                 help=f"which rows to run, comma-separated, from {tuple(ROWS)} (AdamW's seed-1"
                      " run comes with any)")
  p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
  p.add_argument("--report", action="store_true",
                 help="no training: print the table and write it next to --out (.md)")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "newest.json"))
  p.add_argument("--baselines", default=os.path.join(_common.RESULTS, "convergence.json"))
  p.add_argument("--ablation", default=os.path.join(_common.RESULTS, "ablation.json"),
                 help="where today's best Scion recipe is read from")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse(argv)
  wanted = set(args.rows.split(",")) | {"adamw_seed1"}
  unknown = wanted - set(ROWS) - {"adamw_seed1"}
  if unknown:
    raise SystemExit(f"error: --rows {','.join(sorted(unknown))}: choose from {tuple(ROWS)}")
  result = dict(benchmark="newest", command=_common.command("newest", argv),
                config=dict(**SHAPE, data=args.data,
                            rows={k: dict(settings=b, lr_centre=c) for k, (b, c) in ROWS.items()}),
                runs=[], machine=dict(device=_common.device_name(), jax=jax.__version__,
                                      optax=optax.__version__))
  if (args.resume or args.report) and os.path.exists(args.out):
    with open(args.out) as f:
      result["runs"] = json.load(f)["runs"]
  result["baselines"] = ab.baselines(args.baselines)
  result["recipe"] = recipe(args.ablation)
  with tempfile.TemporaryDirectory() as root:
    while not args.report:
      runs = {ab.key(r["settings"]): r for r in result["runs"]}
      todo = [(s, p) for s, pts in plan(runs).items() if s in wanted for p in pts
              if ab.key(p) not in runs]
      if not todo:
        break
      row, settings = todo[0]
      print(f"[{row}] {settings}", flush=True)
      result["runs"].append(dict(row=row, **run_one(settings, args.data, root)))
      print(f"  val {result['runs'][-1]['val_loss']:.4f}", flush=True)
      result["date"] = datetime.datetime.now(datetime.UTC).isoformat()
      _common.write_json(result, args.out)
  table = markdown(result)
  print(table)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:  # what the docs include
    f.write(table)


if __name__ == "__main__":
  main()
