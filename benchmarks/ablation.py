"""Scion's ablation: what each difference from the best Muon run costs, in steps to AdamW's best.

The GPT trainer (``benchmarks.gpt.train``) at the ``cpu`` shape of
``benchmarks/convergence.py`` (4 layers, width 128, 4 heads, context 128, batch
16, 1000 steps, evaluations every 50 steps on 16 batches), tinyshakespeare in
the recorded results. Each stage starts from the best run of the stages before
it and changes one thing:

1. ``diagonal``: constrained Scion from ``ol.init_params`` (the RMS-preserving init) along
   ``lr x radius = 2^-8 x 6`` (the step length fixed, the decay ``lr`` moving):
   hidden radius 6, 12, 24, 48 (head radius 10/3 of it), extended past an edge
   that wins;
2. ``lr``: at the best radius, the learning rate x1/4, x1/2 and x2 (the step and
   the decay together), extended past an edge that wins;
3. ``seed``: the best Scion, AdamW's and optax's Muon's best again at seed 1;
4. ``short``: the best run with a schedule 0.70x as long (the target, checked
   directly: a curve read mid-run has not had its decay);
5. ``init``: the best run from Flax's init and from the init on the ball's
   boundary (``--init scion``);
6. ``schedule``: the decay over 100% and 30% of the steps (against 50%);
7. ``hybrid``: Scion's constraint on the hidden matrices only, AdamW (3e-3) on
   the embedding, head and gains (from Flax's init), on a 4-point
   learning-rate grid around the best Scion rate;
8. ``head``: the head radius alone x1/2 and x2 (hidden radius and lr fixed),
   extended past an edge that wins;
9. ``beta``: momentum 0.8 and 0.95 (against 0.9);
10. ``warmup``: 50 steps of linear warmup (against none);
11. ``embed``: the embedding radius 1/2 and 2 (against 1);
12. ``views``: the fused qkv kernel seen as q, k and v (``--blocks split``)
    and per head (``per_head``) for the best Scion, and our Muon (``ol.muon``,
    :data:`MUON`: its best in ``convergence.json``, from Flax's init at lr 0.01)
    fused, split and per head;
13. ``nesterov``: Nesterov momentum (against none);
14. ``polar``: the polar factor from KellerJordan's 5-step coefficients
    (``--ns-coeffs jordan``), from Polar Express at 3 steps instead of 5, and
    exact (SVD);
15. ``head_init``: the head initialized at zero and at 1/10 of ``ol.init_params``'s
    (``--head-init-scale``);
16. ``decay_shape``: the decay along half a cosine and as ``1 - sqrt`` (against
    linear);
17. ``combined``: the best run with the head radius and the qkv view of the
    ``head`` and ``views`` stages' bests (and Nesterov momentum if it won), on its
    own learning-rate grid (x1/2,
    x1, x2, extended past an edge that wins), and its best again at seed 1.

AdamW's and optax's Muon's grids (seed 0) are those of
``benchmarks/results/convergence.json``: the same shape, data, evaluations and
trainer code, each optimum inside its grid. The target is AdamW's best final
validation loss (at seed 1: AdamW's seed-1 run). Every run records its settings
as the trainer resolved them and its whole validation curve.

Usage, from the repository root::

  python -m benchmarks.ablation --data PATH [--resume] [--report] [--stages diagonal,lr]
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
from benchmarks.gpt import model as model_lib
from benchmarks.gpt import optim

SHAPE = dict(width=128, depth=4, heads=4, seq=128, batch=16, steps=1000, eval_every=50,
             eval_batches=16)
START = dict(optimizer="scion", init="rms", hidden_radius=6.0, output_radius=20.0, lr=2**-8,
             decay_frac=0.5)
STAGES = ("diagonal", "lr", "seed", "short", "init", "schedule", "hybrid", "head", "beta",
          "warmup", "embed", "views", "nesterov", "polar", "head_init", "decay_shape", "combined")
# Our Muon's best run in convergence.json ("muon standard init"; from the scion init, "muon",
# its best ended 0.19 nats worse), at the trainer's defaults for it as the sweep ran it.
MUON = dict(optimizer="muon", init="standard", lr=0.01)
BLOCKS = model_lib.BLOCKS  # the trainer's --blocks; START's: the first, fused
ADAMW_SEED1 = {"optimizer": "adamw", "lr": 1.5e-3, "seed": 1}  # AdamW's best lr, at seed 1
HEAD_PER_HIDDEN = 10 / 3  # head radius / hidden radius along the diagonal
MAX_EXTEND = 2  # points past a grid's winning edge


def key(settings: dict) -> str:
  return json.dumps(settings, sort_keys=True)


def run_one(settings: dict, args, root: str) -> dict:
  """Trains one run; its resolved settings, curve, final loss (NaN: diverged) and seconds."""
  cfg, out, records, seconds = _common.train_settings(SHAPE, settings, args.data, root)
  if out is None:
    return dict(settings=settings, resolved=_resolved(cfg), val_loss=math.nan, curve=[],
                seconds=None)
  evals = [[r["step"], r["val_loss"]] for r in records if r["kind"] == "eval"]
  val = out["val_loss"] if math.isfinite(out["val_loss"]) else math.nan
  return dict(settings=settings, resolved=_resolved(cfg), val_loss=val, curve=evals,
              output_norm=out["output_norm"], seconds=seconds)


def _resolved(cfg) -> dict:
  r = optim.resolve(cfg)
  return {k: getattr(r, k) for k in ("optimizer", "init", "lr", "adam_lr", "beta",
                                      "hidden_radius", "output_radius", "decay_frac", "steps",
                                      "seed", "blocks", "nesterov", "polar", "ns_coeffs",
                                      "ns_steps", "schedule", "head_init_scale")}


def _loss(runs: dict, settings: dict) -> float:
  r = runs.get(key(settings))
  return math.inf if r is None or not math.isfinite(r["val_loss"]) else r["val_loss"]


def _best(runs: dict, candidates: list[dict]) -> dict | None:
  done = [c for c in candidates if key(c) in runs]
  return min(done, key=lambda c: _loss(runs, c)) if done else None


def _grid(runs, points: list[dict], step) -> list[dict]:
  """``points`` (ordered along one axis), extended past a winning edge by ``step(point, +-1)``."""
  return _common.extend_past_edges(
      points, lambda p: _loss(runs, p) if key(p) in runs else None, step, MAX_EXTEND)


def _diagonal_point(hidden: float) -> dict:
  return {**START, "hidden_radius": hidden, "output_radius": round(hidden * HEAD_PER_HIDDEN, 3),
          "lr": START["lr"] * START["hidden_radius"] / hidden}


def plan(runs: dict) -> dict[str, list[dict]]:
  """Every stage's runs given those done so far (a stage waits for the ones before it)."""
  stages: dict[str, list[dict]] = {}
  diag = _grid(runs, [_diagonal_point(h) for h in (6.0, 12.0, 24.0, 48.0)],
               lambda p, s: _diagonal_point(p["hidden_radius"] * 2.0**s))
  stages["diagonal"] = diag
  if any(key(p) not in runs for p in diag):
    return stages
  centre = _best(runs, diag)
  lrs = _grid(runs, [{**centre, "lr": centre["lr"] * f} for f in (0.25, 0.5, 1.0, 2.0)],
              lambda p, s: {**p, "lr": p["lr"] * 2.0**s})
  stages["lr"] = lrs
  if any(key(p) not in runs for p in lrs):
    return stages
  best = _best(runs, lrs)
  stages["seed"] = [{**best, "seed": 1}, ADAMW_SEED1,
                    {"optimizer": "optax_muon", "lr": 0.01, "seed": 1}]
  stages["short"] = [{**best, "steps": round(0.7 * SHAPE["steps"])}]
  stages["init"] = [{**best, "init": "standard"}, {**best, "init": "scion"}]
  stages["schedule"] = [{**best, "decay_frac": 1.0}, {**best, "decay_frac": 0.3}]
  hybrid = {**best, "optimizer": "scion_hybrid", "init": "standard"}
  stages["hybrid"] = _grid(runs, [{**hybrid, "lr": best["lr"] * f} for f in (0.5, 1.0, 2.0, 4.0)],
                           lambda p, s: {**p, "lr": p["lr"] * 2.0**s})
  stages["head"] = _grid(runs, [{**best, "output_radius": best["output_radius"] * f}
                                for f in (0.5, 1.0, 2.0)],
                         lambda p, s: {**p, "output_radius": p["output_radius"] * 2.0**s})
  stages["beta"] = [{**best, "beta": b} for b in (0.8, 0.95)]
  stages["warmup"] = [{**best, "warmup": 50}]
  stages["embed"] = [{**best, "embed_radius": r} for r in (0.5, 2.0)]
  stages["views"] = ([{**best, "blocks": v} for v in BLOCKS[1:]]
                     + [{**MUON, "blocks": v} for v in BLOCKS])
  stages["nesterov"] = [{**best, "nesterov": True}]
  stages["polar"] = [{**best, "ns_coeffs": "jordan"}, {**best, "ns_steps": 3},
                     {**best, "polar": "svd"}]
  stages["head_init"] = [{**best, "head_init_scale": f} for f in (0.0, 0.1)]
  stages["decay_shape"] = [{**best, "schedule": s} for s in ("cosine_decay", "sqrt_decay")]
  views = [best] + [p for p in stages["views"] if p["optimizer"] == best["optimizer"]]
  if any(key(p) not in runs for p in stages["head"] + views + stages["nesterov"]):
    return stages
  head, view = _best(runs, stages["head"]), _best(runs, views)
  both = {**best, "output_radius": head["output_radius"]}
  if "blocks" in view:
    both["blocks"] = view["blocks"]
  if _best(runs, [best] + stages["nesterov"]) is not best:
    both["nesterov"] = True
  combined = _grid(runs, [{**both, "lr": both["lr"] * f} for f in (0.5, 1.0, 2.0)],
                   lambda p, s: {**p, "lr": p["lr"] * 2.0**s})
  stages["combined"] = combined
  if all(key(p) in runs for p in combined):
    stages["combined"] = combined + [{**_best(runs, combined), "seed": 1}]
  return stages


def baselines(path: str) -> list[dict]:
  """AdamW's and optax's Muon's seed-0 grids from the convergence sweep (same shape)."""
  with open(path) as f:
    conv = json.load(f)
  assert all(conv["config"][k] == v for k, v in SHAPE.items()), "convergence.json: other shape"
  return [dict(optimizer=r["optimizer"], lr=r["lr"], val_loss=r["val_loss"], curve=r["curve"])
          for r in conv["runs"] if r["label"] in ("adamw", "optax_muon")]


def steps_to(curve, target: float) -> float | None:
  return _common.crossing(curve, target) if curve else None


def summary(result: dict) -> list[dict]:
  """One row per run, stage by stage: its settings, final loss and steps to AdamW's best.

  ``best`` marks a grid's lowest final loss (the baselines', the diagonal's, the
  learning rate's, the hybrid's); ``edge`` such a best on its grid's edge.
  """
  runs = {key(r["settings"]): r for r in result["runs"]}
  base = result["baselines"]
  adam = min((b for b in base if b["optimizer"] == "adamw"), key=lambda b: b["val_loss"])
  target, adam_steps = adam["val_loss"], steps_to(adam["curve"], adam["val_loss"])
  rows = []
  for opt, label in (("adamw", "AdamW"), ("optax_muon", "optax Muon")):
    grid = sorted((b for b in base if b["optimizer"] == opt), key=lambda b: b["lr"])
    top = min(grid, key=lambda b: b["val_loss"])
    for b in grid:
      rows.append(dict(stage=f"{label} (convergence.json)", what={}, lr=b["lr"],
                       val_loss=b["val_loss"], best=b is top,
                       edge=b is top and b in (grid[0], grid[-1]),
                       ratio=_ratio(steps_to(b["curve"], target), adam_steps)))
  adam1 = runs.get(key(ADAMW_SEED1))
  goals = {0: (target, adam_steps)}
  if adam1 is not None:  # a seed-1 run against AdamW's seed-1 run
    goals[1] = (adam1["val_loss"], steps_to(adam1["curve"], adam1["val_loss"]))
  for stage, points in plan(runs).items():
    done = [p for p in points if key(p) in runs]
    if not done:
      continue
    grid = stage in ("diagonal", "lr", "hybrid", "head", "combined")
    on_grid = [p for p in points if p.get("seed", 0) == 0]
    top = _best(runs, [p for p in done if p in on_grid])
    for p in done:
      r = runs[key(p)]
      goal, base_steps = goals.get(p.get("seed", 0), (None, None))
      ratio = None if goal is None else _ratio(steps_to(r["curve"], goal), base_steps)
      best = grid and p is top
      rows.append(dict(stage=stage, what={k: v for k, v in p.items() if k != "lr"}, lr=p["lr"],
                       val_loss=r["val_loss"], best=best,
                       edge=best and p in (on_grid[0], on_grid[-1]), ratio=ratio))
  return rows


def _ratio(steps, adam_steps):
  return None if steps is None else steps / adam_steps


def markdown(result: dict) -> str:
  """The ablation table in Markdown (what ``--report`` prints and writes next to the JSON).

  Settings are those that differ from :data:`START` (radii always; its ``blocks``:
  fused); bold: a grid's best.
  """
  start = {**START, "blocks": BLOCKS[0]}
  lines = ["| stage | settings | lr | final val loss | steps to AdamW's best |",
           "|---|---|---|---|---|"]
  for r in summary(result):
    desc = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in r["what"].items()
                     if start.get(k) != v or k in ("hidden_radius", "output_radius"))
    ratio = "not reached" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    loss = f"{r['val_loss']:.4f}" + (" (grid edge)" if r["edge"] else "")
    if r["best"]:
      loss, ratio = f"**{loss}**", f"**{ratio}**"
    e = math.log2(r["lr"])
    lr = f"2^{e:.0f}" if e == round(e) else f"{r['lr']:.3g}"
    lines.append(f"| {r['stage']} | {desc} | {lr} | {loss} | {ratio} |")
  return "\n".join(lines) + "\n"


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="a UTF-8 text file (recorded: tinyshakespeare.txt)")
  p.add_argument("--stages", default=",".join(STAGES),
                 help=f"which stages to run, comma-separated, from {STAGES}")
  p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
  p.add_argument("--report", action="store_true",
                 help="no training: print the table and write it next to --out (.md)")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "ablation.json"))
  p.add_argument("--baselines", default=os.path.join(_common.RESULTS, "convergence.json"))
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse(argv)
  wanted = set(args.stages.split(","))
  result = dict(benchmark="ablation", command=_common.command("ablation", argv),
                config=dict(**SHAPE, data=args.data, start=START), runs=[],
                machine=dict(device=_common.device_name(), jax=jax.__version__,
                             optax=optax.__version__))
  if (args.resume or args.report) and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    result["runs"] = old["runs"]
  result["baselines"] = baselines(args.baselines)
  with tempfile.TemporaryDirectory() as root:
    while not args.report:
      runs = {key(r["settings"]): r for r in result["runs"]}
      todo = [(s, p) for s, pts in plan(runs).items() if s in wanted for p in pts
              if key(p) not in runs]
      if not todo:
        break
      stage, settings = todo[0]
      print(f"[{stage}] {settings}", flush=True)
      result["runs"].append(dict(stage=stage, **run_one(settings, args, root)))
      print(f"  val {result['runs'][-1]['val_loss']:.4f}", flush=True)
      result["date"] = datetime.datetime.now(datetime.UTC).isoformat()
      _common.write_json(result, args.out)
  table = markdown(result)
  print(table)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:  # what the docs include
    f.write(table)


if __name__ == "__main__":
  main()

