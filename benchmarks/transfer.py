"""Do the defaults hold off their tuning point? Learning-rate grids along four axes.

The GPT trainer (``benchmarks.gpt.train``) at the ``cpu`` base point of
``benchmarks/ablation.py`` (4 layers, width 128, 4 heads, context 128, batch
16, 1000 steps; tinyshakespeare in the recorded results), moved along one axis
at a time:

- ``horizon``: 250, 500, 1000 and 2000 steps (batch 16);
- ``batch``: 8, 16 and 64 sequences at the base's token budget (2000, 1000 and
  250 steps);
- ``width``: 64, 128 and 256, one head per 32 channels, 1000 steps;
- ``corpus``: tinyshakespeare and Python's own source code (the ASCII
  ``.py`` files at the top of the standard library, ``--data python-stdlib``).

At every point, constrained Scion at the library defaults (radii 1 / 48 / 160,
``ol.init_params``, the lr decaying over the last half) and AdamW (decay over
the last 30%); optax's Muon (``optax.contrib.muon``) at the base and at the
horizon's two ends. Before a point runs, its learning rate is predicted from
the base point's by the law in :data:`LAW` (``ol.contrib.transfer_lr``; the
width and the corpus do not enter it); the grid is that prediction x1/2, x1,
x2, extended past a winning edge (at most :data:`MAX_EXTEND` times). The base
point's runs are those of ``ablation.json`` (Scion) and ``convergence.json``
(AdamW, optax's Muon), the same trainer settings, marked with their source.

Validation: the same first 256 windows of 128 tokens at every point of a corpus
(``eval_batches = 256 / batch``), every ``steps / 20`` steps. Each run records
its final validation loss, its curve and the head's output norm
(``rms_to_inf`` of the output kernel, [NT]'s invariant) at the end.

Writes ``benchmarks/results/transfer.json``: ``{"base": {...}, "law": {...},
"points": [{"axis", "steps", "batch", "seq", "width", "depth", "heads",
"corpus", "optimizer", "predicted_lr", "grid": [{"lr", "seed", "val_loss",
"curve", "output_norm", ...}]}]}``, the base point under every axis;
``transfer.md`` (the tables the docs include) and ``transfer.png``.

Usage, from the repository root (one run at a time; ``--resume`` keeps what is done)::

  python -m benchmarks.transfer --data PATH [--resume] [--report] [--points h250,b64]

Two processes (one a core) can share the points: give each its own ``--out`` and
``--points`` (or ``--optimizers``), then ``--resume --merge OTHER.json --points ""``
writes the union to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile

import jax
import numpy as np
import optax

import optax_lmo as ol
from benchmarks import _common

BASE = dict(steps=1000, batch=16, seq=128, width=128, depth=4, heads=4, corpus="tinyshakespeare")
BASE_LR = {"scion": 2**-11, "adamw": 1.5e-3, "optax_muon": 0.01}  # the base point's optima
SETTINGS = {  # what each optimizer runs with, besides the lr (the trainer's defaults for it)
    "scion": dict(optimizer="scion", init="rms", hidden_radius=48.0, output_radius=160.0,
                  decay_frac=0.5),
    "adamw": dict(optimizer="adamw"),
    "optax_muon": dict(optimizer="optax_muon"),
}
PYTHON = "python"  # the corpus of Python's source code
# Every point off the base, in the order they run (the cheapest and most telling first).
POINTS = {
    "h250": ("horizon", dict(steps=250)),
    "h2000": ("horizon", dict(steps=2000)),
    "b64": ("batch", dict(batch=64, steps=250)),
    "b8": ("batch", dict(batch=8, steps=2000)),
    "python": ("corpus", dict(corpus=PYTHON)),
    "w64": ("width", dict(width=64, heads=2)),
    "h500": ("horizon", dict(steps=500)),
    "w256": ("width", dict(width=256, heads=8)),
}
AXES = ("horizon", "batch", "width", "corpus")
AXIS_FIELD = {"horizon": "steps", "batch": "batch", "width": "width"}  # what each axis moves
MUON_POINTS = ("base", "h250", "h2000")  # where optax's Muon runs too
# The law the predictions come from, fixed before any point ran: [NT]'s exponents, as
# ol.contrib.transfer_lr shipped them.
LAW = dict(name="[NT]", batch_exponent=0.62, tokens_exponent=-0.56)
MAX_EXTEND = 4  # points past a winning edge, at most
VAL_WINDOWS = 256  # validation windows of `seq` tokens at every point
EVALS = 20  # evaluations per run (and one at the end)


def shape(point: dict) -> dict:
  """The base with ``point``'s changes."""
  return {**BASE, **point}


def tokens(p: dict) -> int:
  return p["steps"] * p["batch"] * p["seq"]


def predicted_lr(optimizer: str, point: dict, law: dict = LAW) -> float:
  """The learning rate the law moves the base optimum to at ``point``."""
  p = shape(point)  # ol.contrib.transfer_lr's formula, in float64 (the grid's keys)
  return (BASE_LR[optimizer] * (p["batch"] / BASE["batch"]) ** law["batch_exponent"]
          * (tokens(p) / tokens(BASE)) ** law["tokens_exponent"])


def trainer_shape(point: dict) -> dict:
  """The trainer's flags for ``point`` (without the data)."""
  p = shape(point)
  return dict(width=p["width"], depth=p["depth"], heads=p["heads"], seq=p["seq"],
              batch=p["batch"], steps=p["steps"], eval_every=max(1, p["steps"] // EVALS),
              eval_batches=max(1, VAL_WINDOWS // p["batch"]))


def run_key(point: dict, optimizer: str, lr: float, seed: int = 0) -> str:
  return json.dumps(dict(shape(point), optimizer=optimizer, lr=lr, seed=seed), sort_keys=True)


def grid(runs: dict, point: dict, optimizer: str) -> list[float]:
  """The learning rates to run: the prediction x1/2, x1, x2, extended past a winning edge."""
  centre = predicted_lr(optimizer, point)
  return _common.extend_past_edges([centre * 2.0**k for k in (-1, 0, 1)],
                                   lambda lr: _loss(runs, point, optimizer, lr),
                                   lambda lr, s: lr * 2.0**s, MAX_EXTEND)


def _loss(runs: dict, point: dict, optimizer: str, lr: float) -> float | None:
  """A run's final loss (``inf`` for a diverged one), ``None`` if it has not run."""
  r = runs.get(run_key(point, optimizer, lr))
  if r is None:
    return None
  return r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf


def optimizers_at(name: str) -> tuple[str, ...]:
  return ("scion", "adamw", "optax_muon") if name in MUON_POINTS else ("scion", "adamw")


def todo(runs: dict, names: list[str], optimizers: tuple[str, ...] = tuple(SETTINGS)
         ) -> list[tuple[str, dict, str, float]]:
  """The runs still to do at the points ``names`` for ``optimizers``:
  ``(name, point, optimizer, lr)``."""
  out = []
  for name in names:
    point = POINTS[name][1] if name != "base" else {}
    for opt in (o for o in optimizers_at(name) if o in optimizers):
      out += [(name, point, opt, lr) for lr in grid(runs, point, opt)
              if run_key(point, opt, lr) not in runs]
  return out


def run_one(point: dict, optimizer: str, lr: float, data: str | None, root: str) -> dict:
  """Trains one run; its grid entry (a diverged run: ``val_loss`` NaN, no curve)."""
  p = shape(point)
  corpus = ol_data(p["corpus"], data)
  settings = dict(SETTINGS[optimizer], lr=lr, seed=0)
  cfg, out, records, seconds = _common.train_settings(trainer_shape(point), settings, corpus, root)
  entry = dict(lr=lr, seed=0, val_loss=math.nan, curve=[], output_norm=None, seconds=seconds)
  if out is not None:
    entry.update(val_loss=out["val_loss"] if math.isfinite(out["val_loss"]) else math.nan,
                 curve=[[r["step"], r["val_loss"]] for r in records if r["kind"] == "eval"],
                 output_norm=out["output_norm"])
  return entry


def ol_data(corpus: str, data: str | None) -> str | None:
  """The trainer's ``--data`` for a corpus: ``data`` for the base's, Python's sources."""
  from benchmarks.gpt import data as data_lib  # the GPT benchmarks only

  return data_lib.PYTHON_SOURCE if corpus == PYTHON else data


def base_runs(ablation: str, convergence: str) -> dict:
  """The base point's recorded runs: Scion's from ``ablation.json``, the others' from
  ``convergence.json`` (the same shape, data and evaluations), keyed as :func:`run_key`."""
  runs = {}
  with open(ablation) as f:
    abl = json.load(f)
  for r in abl["runs"]:
    if {k: v for k, v in r["settings"].items() if k != "lr"} == SETTINGS["scion"]:
      runs[run_key({}, "scion", r["settings"]["lr"])] = dict(
          lr=r["settings"]["lr"], seed=0, val_loss=r["val_loss"], curve=r["curve"],
          output_norm=r["output_norm"], seconds=r["seconds"], source="ablation.json")
  with open(convergence) as f:
    conv = json.load(f)
  for r in conv["runs"]:
    if r["label"] in ("adamw", "optax_muon"):
      runs[run_key({}, r["optimizer"], r["lr"])] = dict(
          lr=r["lr"], seed=0, val_loss=r["val_loss"], curve=r["curve"],
          output_norm=r["output_norm"], seconds=r["seconds"], source="convergence.json")
  return runs


def points(runs: dict) -> list[dict]:
  """The JSON contract's ``points``: one per (axis, point, optimizer), the base under each axis."""
  out = []
  for axis in AXES:
    names = ["base"] + [n for n, (a, _) in POINTS.items() if a == axis]
    for name in names:
      point = POINTS[name][1] if name != "base" else {}
      for opt in optimizers_at(name):
        entries = [runs[k] for k in (run_key(point, opt, lr) for lr in grid(runs, point, opt))
                   if k in runs]
        entries += [r for k, r in runs.items()  # further seeds, if any
                    if r.get("seed", 0) and _same_point(k, point, opt)]
        if not entries:
          continue
        out.append(dict(axis=axis, name=name, **shape(point), optimizer=opt,
                        predicted_lr=predicted_lr(opt, point),
                        grid=sorted(entries, key=lambda e: (e["seed"], e["lr"]))))
  return out


def _same_point(k: str, point: dict, optimizer: str) -> bool:
  d = json.loads(k)
  return d["optimizer"] == optimizer and all(d[f] == v for f, v in shape(point).items())


def optimum(entries: list[dict]) -> dict | None:
  """The seed-0 grid's lowest final loss."""
  done = [e for e in entries if e["seed"] == 0 and math.isfinite(e["val_loss"])]
  return min(done, key=lambda e: e["val_loss"]) if done else None


def refined_optimum(entries: list[dict]) -> float | None:
  """The optimum between grid points: the vertex of the parabola in ``log2 lr`` through the
  grid's best and its two neighbours (the best itself at an edge)."""
  done = sorted((e for e in entries if e["seed"] == 0 and math.isfinite(e["val_loss"])),
                key=lambda e: e["lr"])
  if not done:
    return None
  i = min(range(len(done)), key=lambda j: done[j]["val_loss"])
  if i in (0, len(done) - 1):
    return done[i]["lr"]
  x = np.log2([done[j]["lr"] for j in (i - 1, i, i + 1)])
  y = np.array([done[j]["val_loss"] for j in (i - 1, i, i + 1)])
  a, b, _ = np.polyfit(x, y, 2)
  return float(2.0 ** np.clip(-b / (2 * a), x[0], x[2]))


def summary(result: dict) -> list[dict]:
  """One row per (axis, point): the optima, the prediction's error, the targets."""
  by = {(p["axis"], p["name"], p["optimizer"]): p for p in result["points"]}
  rows = []
  for (axis, name, opt), p in by.items():
    if opt != "scion":
      continue
    best = optimum(p["grid"])
    adam = by.get((axis, name, "adamw"))
    muon = by.get((axis, name, "optax_muon"))
    at_pred = next((e for e in p["grid"] if e["seed"] == 0
                    and math.isclose(e["lr"], p["predicted_lr"], rel_tol=1e-9)), None)
    row = dict(axis=axis, name=name, steps=p["steps"], batch=p["batch"], width=p["width"],
               corpus=p["corpus"], predicted=p["predicted_lr"],
               best_lr=None if best is None else best["lr"],
               refined_lr=refined_optimum(p["grid"]),
               best_loss=None if best is None else best["val_loss"],
               edge=_on_edge(p["grid"], best),
               output_norm=None if best is None else best["output_norm"],
               at_predicted=None if at_pred is None else at_pred["val_loss"])
    if best is not None:
      row["octaves_off"] = math.log2(p["predicted_lr"] / best["lr"])
    a = None if adam is None else optimum(adam["grid"])
    if a is not None:
      row.update(adamw_lr=a["lr"], adamw_loss=a["val_loss"], adamw_edge=_on_edge(adam["grid"], a))
      goal, own = a["val_loss"], _common.crossing(a["curve"], a["val_loss"])
      if at_pred is not None and own:
        hit = _common.crossing(at_pred["curve"], goal)
        row["steps_ratio"] = None if hit is None else hit / own
    m = None if muon is None else optimum(muon["grid"])
    if m is not None:
      row.update(muon_lr=m["lr"], muon_loss=m["val_loss"], muon_edge=_on_edge(muon["grid"], m))
    rows.append(row)
  return rows


def _on_edge(entries: list[dict], best: dict | None) -> bool:
  lrs = sorted(e["lr"] for e in entries if e["seed"] == 0)
  return best is not None and best["lr"] in (lrs[0], lrs[-1])


def fit(result: dict, refined: bool = False) -> dict | None:
  """``fit_transfer_exponents`` on Scion's optima of the horizon and batch axes (with the
  base); the exponents left out one point at a time give their spread."""
  rows = {r["name"]: r for r in summary(result) if r["axis"] in ("horizon", "batch")}
  data = [(r["batch"], tokens(dict(BASE, steps=r["steps"], batch=r["batch"])),
           r["refined_lr" if refined else "best_lr"]) for r in rows.values()
          if r["best_lr"] is not None and not r["edge"]]
  if len({(b, d) for b, d, _ in data}) < 3 or len({b for b, _, _ in data}) < 2:
    return None
  full = ol.contrib.fit_transfer_exponents(data)
  loo = []
  for i in range(len(data)):
    rest = data[:i] + data[i + 1:]
    if len({b for b, _, _ in rest}) >= 2 and len({(b, d) for b, d, _ in rest}) >= 3:
      loo.append(ol.contrib.fit_transfer_exponents(rest))
  spread = lambda f: [min(getattr(x, f) for x in loo), max(getattr(x, f) for x in loo)] if loo \
      else None
  return dict(points=len(data), batch_exponent=full.batch_exponent,
              tokens_exponent=full.tokens_exponent, log2_constant=full.log2_constant,
              rms_residual=full.rms_residual, batch_exponent_spread=spread("batch_exponent"),
              tokens_exponent_spread=spread("tokens_exponent"))


def _lr(x: float | None) -> str:
  return "-" if x is None else f"2^{math.log2(x):.1f}" if x < 0.1 else f"{x:.3g}"


def _f(x, fmt="{:.4f}") -> str:
  return "-" if x is None else fmt.format(x)


def markdown(result: dict) -> str:
  """The tables the docs include: Scion's optimum per point against the prediction and the
  peers, then the fitted law."""
  lines = ["| axis | point | Scion: predicted lr | best lr | octaves off | final loss |"
           " loss at predicted | output norm | AdamW: best lr, loss | steps to AdamW's best |"
           " optax Muon: best lr, loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  rows = sorted(summary(result),  # along each axis in order (the base among them)
                key=lambda r: (AXES.index(r["axis"]), r.get(AXIS_FIELD.get(r["axis"]), 0)))
  for r in rows:
    point = (f"{r['steps']} steps, batch {r['batch']}, width {r['width']}"
             + ("" if r["corpus"] == BASE["corpus"] else f", {r['corpus']}"))
    edge = lambda e: " (edge)" if e else ""
    adam = ("-" if "adamw_loss" not in r else
            f"{_lr(r['adamw_lr'])}{edge(r['adamw_edge'])}, {r['adamw_loss']:.4f}")
    muon = ("-" if "muon_loss" not in r else
            f"{_lr(r['muon_lr'])}{edge(r['muon_edge'])}, {r['muon_loss']:.4f}")
    ratio = r.get("steps_ratio")
    ratio = "-" if "steps_ratio" not in r else "not reached" if ratio is None else f"{ratio:.2f}x"
    lines.append(
        f"| {r['axis']} | {point} | {_lr(r['predicted'])} | {_lr(r['best_lr'])}{edge(r['edge'])}"
        f" | {_f(r.get('octaves_off'), '{:+.1f}')} | {_f(r['best_loss'])} |"
        f" {_f(r['at_predicted'])} | {_f(r['output_norm'], '{:.1f}')} | {adam} | {ratio} |"
        f" {muon} |")
  out = "\n".join(lines) + "\n"
  fits = [("grid optima", fit(result)), ("between grid points", fit(result, refined=True))]
  if any(f for _, f in fits):
    out += ("\n| law | batch exponent | tokens exponent | residual (octaves) |\n"
            "|---|---|---|---|\n"
            f"| [NT] | {LAW['batch_exponent']:.2f} | {LAW['tokens_exponent']:.2f} | - |\n")
    for what, f in fits:
      if f is None:
        continue
      sb, st = f["batch_exponent_spread"], f["tokens_exponent_spread"]
      rng = lambda s: "" if s is None else f" ({s[0]:.2f} to {s[1]:.2f})"
      out += (f"| fitted, {what}, {f['points']} points | {f['batch_exponent']:.2f}{rng(sb)} |"
              f" {f['tokens_exponent']:.2f}{rng(st)} | {f['rms_residual']:.2f} |\n")
  return out


def plot(result: dict, path: str) -> None:
  """Final loss against the learning rate, one panel per axis, the predictions marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(AXES), figsize=(5 * len(AXES), 4.2))
  styles = {"scion": "-", "adamw": "--", "optax_muon": ":"}
  for ax, axis in zip(axes, AXES, strict=True):
    pts = [p for p in result["points"] if p["axis"] == axis]
    value = AXIS_FIELD.get(axis)
    names = list(dict.fromkeys(p["name"] for p in sorted(  # colours in the axis's order
        pts, key=lambda p: p[value] if value else p["name"] != "base")))
    colors = dict(zip(names, plt.cm.viridis(np.linspace(0, 0.9, max(1, len(names)))),
                      strict=True))
    for p in pts:
      grid_ = [e for e in p["grid"] if e["seed"] == 0 and math.isfinite(e["val_loss"])]
      if not grid_:
        continue
      label = {"horizon": f"{p['steps']} steps", "batch": f"batch {p['batch']}",
               "width": f"width {p['width']}", "corpus": p["corpus"]}[axis]
      ax.plot([e["lr"] for e in grid_], [e["val_loss"] for e in grid_], styles[p["optimizer"]],
              marker="o", ms=3, color=colors[p["name"]],
              label=f"{p['optimizer']}, {label}")
      if p["optimizer"] == "scion":
        ax.axvline(p["predicted_lr"], color=colors[p["name"]], lw=0.8, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_title(f"{axis} (vertical lines: Scion's predicted lr)")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss")
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="the base corpus, a UTF-8 text file (recorded:"
                 " tinyshakespeare.txt)")
  p.add_argument("--points", default=",".join(POINTS),
                 help=f"which points to run, comma-separated, from {tuple(POINTS)}")
  p.add_argument("--optimizers", default=",".join(SETTINGS),
                 help="run only these (comma-separated), e.g. to share a point between two "
                      "processes writing two --out files")
  p.add_argument("--merge", default="",
                 help="also keep the runs of these transfer.json files (comma-separated), "
                      "e.g. those of another process's --out; the merged result is written")
  p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
  p.add_argument("--report", action="store_true",
                 help="no training: print the tables, write them (.md) and the plot (.png)")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "transfer.json"))
  p.add_argument("--ablation", default=os.path.join(_common.RESULTS, "ablation.json"))
  p.add_argument("--convergence", default=os.path.join(_common.RESULTS, "convergence.json"))
  return p.parse_args(argv)


def load_runs(path: str) -> dict:
  """The runs of a ``transfer.json``, keyed as :func:`run_key`."""
  with open(path) as f:
    old = json.load(f)
  runs = {}
  for p in old["points"]:
    point = {k: p[k] for k in BASE if p[k] != BASE[k]}
    for e in p["grid"]:
      runs[run_key(point, p["optimizer"], e["lr"], e["seed"])] = e
  return runs


def _write(result: dict, runs: dict, path: str) -> None:
  result.update(points=points(runs), date=datetime.datetime.now(datetime.UTC).isoformat())
  _common.write_json(result, path)


def main(argv: list[str] | None = None) -> None:
  args = parse(argv)
  names = [n for n in args.points.split(",") if n]
  unknown = [n for n in names if n not in POINTS]
  if unknown:
    raise SystemExit(f"error: --points {','.join(unknown)}: choose from {tuple(POINTS)}")
  optimizers = tuple(o for o in args.optimizers.split(",") if o)
  if not optimizers or set(optimizers) - set(SETTINGS):
    raise SystemExit(f"error: --optimizers {args.optimizers!r}: choose from {tuple(SETTINGS)}")
  runs = base_runs(args.ablation, args.convergence)
  kept = [args.out] if (args.resume or args.report) and os.path.exists(args.out) else []
  for path in kept + [p for p in args.merge.split(",") if p]:
    runs.update({k: v for k, v in load_runs(path).items() if "source" not in v})
  result = dict(benchmark="transfer", command=_common.command("transfer", argv),
                base=dict(BASE, data=args.data, lr=BASE_LR, settings=SETTINGS), law=LAW,
                machine=dict(device=_common.device_name(), jax=jax.__version__,
                             optax=optax.__version__), points=points(runs))
  with tempfile.TemporaryDirectory() as root:
    while not args.report:
      left = todo(runs, names, optimizers)
      if not left:
        break
      name, point, opt, lr = left[0]
      print(f"[{name}] {opt} lr {lr:.3g}", flush=True)
      runs[run_key(point, opt, lr)] = run_one(point, opt, lr, args.data, root)
      print(f"  val {runs[run_key(point, opt, lr)]['val_loss']:.4f}", flush=True)
      _write(result, runs, args.out)
    if args.merge and not args.report:
      _write(result, runs, args.out)
  table = markdown(result)
  print(table)
  stem = os.path.splitext(args.out)[0]
  with open(stem + ".md", "w") as f:
    f.write(table)
  plot(result, stem + ".png")


if __name__ == "__main__":
  main()
