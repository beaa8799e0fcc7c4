"""Steps and wall-clock to tuned AdamW's validation loss: Scion, unconstrained Scion, two Muons.

The GPT trainer (``benchmarks.gpt.train``) on a character corpus, every optimizer
with the same tuning budget:

* a grid of ``--points`` (4) learning rates, powers of 2 around its center in
  :data:`GRID_CENTER` (``2^-2 .. 2^1`` times it), extended by up to ``--extend``
  points past an edge while the best run sits on it;
* for ``scion``, at its best learning rate: momentum ``beta`` 0.5 (against 0.9)
  and the hidden radius (3) halved and doubled (the scion init follows the
  radii); then, from its best run so far, the hidden radius doubled again, the
  output radius (10) doubled and halved, and the decay over 50% of the steps
  (against 30%); then the winning output radius and decay together, and from
  the best run the decay over all the steps and the learning rate doubled;
* ``scion@0.67``: the best Scion setting again with a schedule 0.67x as long, a
  direct check of the target (a curve read at an intermediate step has not had
  its learning-rate decay);
* ``muon standard init``: our Muon's grid again from Flax's init (extended past a
  winning edge as the grids are).

AdamW uses the standard init and ``b1 = 0.9``, ``optax_muon``
(``optax.contrib.muon``) the standard init and ``beta = 0.95``, the Scions the
scion init and ``beta = 0.9``, ``muon`` (``ol.muon``: Muon on the hidden
matrices, AdamW at 3e-3 on the embedding, head and gains, as optax's) the scion
init and ``beta = 0.95``. The schedule is warmup-free, constant then linear
decay to 0 over the last 30% of the steps; no weight decay; rotary positions.

``--tuned`` (with ``--no-variants``; the accelerator run of ``benchmarks/gpu.sh``)
sweeps instead the grids of :data:`TUNED`: AdamW, optax's Muon and Scion each at
the best setting the ``cpu`` preset found, its learning rate in the middle of a
3-point grid (``--points 3``); Scion from ``ol.init_params`` at radii 48 and 160
with the decay over 50% of the steps.

The target is AdamW's best final validation loss. For every run: the step at
which its curve first reaches the target (linear between evaluations) and its
ratio to the same step of AdamW's best run (its last, unless its curve dipped
below its final loss earlier). Wall-clock to the target is those steps times each
optimizer's median training-step time, measured once up front for all
optimizers in interleaved rounds in this process (so a busy machine slows them
alike; evaluation is left out); each run's own seconds are recorded too.
``--resume`` with more ``--optimizers`` than the recorded sweep keeps its runs
and times every optimizer again, together.

Goal (printed as met or missed): Scion reaches the target in at most 0.67x
AdamW's steps and at most 0.75x its wall-clock.

Presets: ``cpu`` (the default; 4 layers, width 128, 4 heads, context 128, batch
16, 1000 steps, about 4 minutes a run on 2 CPU cores, the whole sweep about 2
hours), ``shakespeare_char`` (nanoGPT's shape: 6 layers, width 384, 6 heads,
context 256, batch 64; for an accelerator) and ``toy`` (seconds; for tests).
``--resume`` keeps the runs already in ``--out`` when the configuration matches,
so an interrupted sweep picks up where it stopped. Without ``--data`` the
example's own corpus is used; the recorded results name the file they used.

Usage, from the repository root::

  python -m benchmarks.convergence [--preset cpu] [--data PATH] [--resume] [--report]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import tempfile
import time

import jax
import optax
from flax import nnx

from benchmarks import _common
from benchmarks.gpt import data as data_lib
from benchmarks.gpt import model as model_lib
from benchmarks.gpt import train as train_lib

PRESETS = {
    "cpu": dict(width=128, depth=4, heads=4, seq=128, batch=16, steps=1000, eval_every=50,
                eval_batches=16),
    "shakespeare_char": dict(width=384, depth=6, heads=6, seq=256, batch=64, steps=2000,
                             eval_every=100, eval_batches=16),
    "toy": dict(width=32, depth=2, heads=2, seq=16, batch=4, steps=12, eval_every=4,
                eval_batches=2),
}
INIT = {"adamw": "standard", "optax_muon": "standard", "scion": "scion",
        "unconstrained_scion": "scion", "muon": "scion"}
OPTIMIZERS = ("adamw", "scion", "optax_muon", "unconstrained_scion", "muon")  # in this order
STEP_RATIO, WALL_RATIO = 0.67, 0.75  # the goal, against AdamW


# Each grid's center: the example's default learning rates when the sweep was designed (the
# example now defaults to the best found here), kept so that recorded sweeps stay resumable.
GRID_CENTER = {"adamw": 3e-3, "scion": 2**-7, "optax_muon": 0.04, "unconstrained_scion": 2**-7,
               "muon": 0.04}


@dataclasses.dataclass(frozen=True)
class Grid:
  """An optimizer's learning-rate grid and the settings every run on it shares."""

  center: float  # the grid: powers of 2 times it, from 2^-2 up (``grid``)
  init: str | None = None  # None: INIT[optimizer]
  hidden_radius: float = 3.0
  output_radius: float = 10.0
  decay_frac: float = 0.3  # the share of the steps the learning rate decays over


LIBRARY = {opt: Grid(center) for opt, center in GRID_CENTER.items()}  # the sweep's default
# ``--tuned``: the best setting found on the cpu preset (results/convergence.json and
# results/ablation.json) with ``--points 3`` putting its learning rate mid-grid: AdamW 7.5e-4,
# 1.5e-3, 3e-3; optax's Muon 0.005, 0.01, 0.02; Scion from ``ol.init_params`` at hidden
# radius 48 and output radius 160, the decay over 50% of the steps, 2^-12, 2^-11, 2^-10.
TUNED = {"adamw": Grid(3e-3), "optax_muon": Grid(0.02),
         "scion": Grid(2**-10, init="rms", hidden_radius=48.0, output_radius=160.0,
                       decay_frac=0.5)}


def grids(args) -> dict[str, Grid]:
  """The grids of this sweep: :data:`TUNED` with ``--tuned``, else :data:`LIBRARY`."""
  return TUNED if getattr(args, "tuned", False) else LIBRARY


def grid(optimizer: str, points: int, centers: dict | None = None) -> list[float]:
  """``points`` powers of 2 times the grid's center, from ``2^-2`` up."""
  center = (GRID_CENTER if centers is None else centers)[optimizer]
  return [center * 2.0**k for k in range(-2, points - 2)]


def grid_job(optimizer: str, lr: float, args) -> Job:
  """A run on ``optimizer``'s grid at ``lr``, with the grid's settings."""
  g = grids(args)[optimizer]
  return Job(optimizer, optimizer, lr, args.steps, init=g.init, hidden_radius=g.hidden_radius,
             output_radius=g.output_radius, decay_frac=g.decay_frac)


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run: what differs from the example's defaults."""

  label: str
  optimizer: str
  lr: float
  steps: int
  beta: float | None = None  # None: the example's default for the optimizer
  hidden_radius: float = 3.0
  output_radius: float = 10.0
  decay_frac: float = 0.3  # the share of the steps the learning rate decays over
  init: str | None = None  # None: INIT[optimizer]

  def key(self) -> list:
    key = [self.label, self.optimizer, self.lr, self.steps, self.beta, self.hidden_radius]
    extra = [self.output_radius, self.decay_frac]
    key = key + extra if extra != [10.0, 0.3] else key
    return key if self.init is None else key + ["init", self.init]


def train_config(job: Job, args, workdir: str):
  return train_lib.make_config(
      optimizer=job.optimizer, init=job.init or INIT[job.optimizer], lr=job.lr, beta=job.beta,
      hidden_radius=job.hidden_radius, output_radius=job.output_radius,
      decay_frac=job.decay_frac, steps=job.steps, batch=args.batch, seq=args.seq,
      width=args.width, depth=args.depth, heads=args.heads, eval_every=args.eval_every,
      eval_batches=args.eval_batches, ckpt_every=job.steps, keep_ckpts=1, data=args.data,
      workdir=workdir, seed=args.seed, resume=False, progress=False, plot=False)


def run_one(job: Job, args, root: str) -> dict:
  """Trains ``job``; its curve, final loss, output norm and seconds (a divergence: NaN loss)."""
  workdir = os.path.join(root, f"run{abs(hash(tuple(job.key())))}")
  out, records, seconds = _common.train_logged(train_config(job, args, workdir))
  evals = [r for r in records if r["kind"] == "eval"]
  val = out["val_loss"] if math.isfinite(out["val_loss"]) else float("nan")
  return dict(**dataclasses.asdict(job), key=job.key(), val_loss=val,
              output_norm=out["output_norm"], seconds=seconds,
              curve=[[r["step"], r["val_loss"]] for r in evals])


def step_times(args, data: data_lib.Dataset, optimizers, rounds: int, per_round: int) -> dict:
  """Median seconds per training step of each optimizer, timed in interleaved rounds."""
  steps = {}
  x, y = data_lib.train_batch(data, seed=args.seed, step=0, batch=args.batch, seq=args.seq)
  x, y = jax.numpy.asarray(x), jax.numpy.asarray(y)
  for opt in optimizers:
    job = dataclasses.replace(grid_job(opt, grids(args)[opt].center, args), steps=10**6)
    cfg = train_lib.resolve(train_config(job, args, "unused"))
    gcfg = train_lib.model_config(cfg, data.vocab_size)
    model = model_lib.GPT(gcfg, rngs=nnx.Rngs(params=0))
    optimizer = nnx.Optimizer(model, train_lib.make_optimizer(cfg, gcfg), wrt=nnx.Param)
    float(train_lib.train_step(model, optimizer, x, y))  # compiles
    steps[opt] = (model, optimizer)
  times: dict[str, list[float]] = {opt: [] for opt in optimizers}
  for _ in range(rounds):
    for opt, (model, optimizer) in steps.items():
      t0 = time.perf_counter()
      for _ in range(per_round):
        loss = train_lib.train_step(model, optimizer, x, y)
      float(loss)
      times[opt].append((time.perf_counter() - t0) / per_round)
  return {opt: dict(median_s=statistics.median(t), rounds_s=t) for opt, t in times.items()}


def best(runs: list[dict], **match) -> dict | None:
  """The finite run of lowest final validation loss among those matching ``match``."""
  ok = [r for r in runs if all(r[k] == v for k, v in match.items())
        and math.isfinite(r["val_loss"])]
  return min(ok, key=lambda r: r["val_loss"]) if ok else None


def extension(runs: list[dict], optimizer: str, points: int, extend: int,
              centers: dict | None = None) -> float | None:
  """The next learning rate past the edge of the grid that holds ``optimizer``'s best run."""
  b = best(runs, label=optimizer)
  lrs = sorted(r["lr"] for r in runs if r["label"] == optimizer)
  if b is None or len(lrs) < points:
    return None
  g = grid(optimizer, points, centers)
  if b["lr"] == lrs[0] and lrs[0] > g[0] / 2**extend * 1.001:
    return lrs[0] / 2
  if b["lr"] == lrs[-1] and lrs[-1] < g[-1] * 2**extend / 1.001:
    return lrs[-1] * 2
  return None


def _top_scion(runs: list[dict], args) -> dict | None:
  """Scion's best full-length run with the default output radius and decay."""
  return best([r for r in runs if r["optimizer"] == "scion" and r["steps"] == args.steps
               and r["output_radius"] == 10.0 and r["decay_frac"] == 0.3])


def _winners(runs: list[dict], args) -> dict | None:
  """:func:`_top_scion` with the output radius and the decay of the best follow-ups from it."""
  top = _top_scion(runs, args)
  if top is None:
    return None
  base = {k: top[k] for k in ("optimizer", "lr", "steps", "beta", "hidden_radius")}
  mine = [r for r in runs if all(r[k] == v for k, v in base.items())]
  return dict(top, output_radius=(best(mine, decay_frac=0.3) or top)["output_radius"],
              decay_frac=(best(mine, output_radius=10.0) or top)["decay_frac"])


# The runs each variant starts from (None: not there yet).
STARTS = {
    "grid": lambda runs, args: best(runs, label="scion"),  # the best of Scion's grid
    "top": _top_scion,
    "winners": _winners,
    "best": lambda runs, args: best([r for r in runs if r["optimizer"] == "scion"
                                     and r["steps"] == args.steps]),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One Scion run: a start run (:data:`STARTS`) with some settings changed."""

  label: str  # formatted with the start run's fields, e.g. "{hidden_radius:g}"
  start: str  # a key of STARTS
  keep: tuple[str, ...] = ()  # the start's settings it keeps; the others: Job's defaults
  change: tuple = ()  # (field, value) pairs; a callable value maps the start's value
  once: bool = False  # run once by its label, whatever its start becomes
  new_setting: bool = False  # skipped where a run already has its settings (any label)

  def job(self, start: dict, args) -> Job:
    fields = {k: start[k] for k in ("lr", *self.keep)}
    for k, v in self.change:
      fields[k] = v(start[k]) if callable(v) else v
    job = Job("", "scion", steps=fields.pop("steps", args.steps), **fields)
    return dataclasses.replace(job, label=self.label.format(**dataclasses.asdict(job)))


def _x(factor: float):
  """A change that multiplies the start's value by ``factor``."""
  return lambda v: factor * v


_SCION_SETTINGS = ("beta", "hidden_radius")
_ALL_SETTINGS = ("beta", "hidden_radius", "output_radius", "decay_frac")
# Scion's variants: each stage runs once the one before it is done. The first two stages come
# right after the AdamW and Scion grids, the rest after every grid.
SCION_STAGES: tuple[tuple[bool, tuple[Variant, ...]], ...] = (  # (after the other grids, ...)
    (False, (Variant("scion beta 0.5", "grid", change=(("beta", 0.5),)),
             Variant("scion hidden radius x0.5", "grid", change=(("hidden_radius", 1.5),)),
             Variant("scion hidden radius x2", "grid", change=(("hidden_radius", 6.0),)))),
    (False, (Variant("scion@0.67", "top", keep=_SCION_SETTINGS, once=True,
                     change=(("steps", lambda n: round(STEP_RATIO * n)),)),)),
    (True, (Variant("scion hidden radius {hidden_radius:g}", "top", keep=("beta",),
                    change=(("hidden_radius", _x(2)),), new_setting=True),
            Variant("scion hidden radius {hidden_radius:g}, output radius 20", "top",
                    keep=_SCION_SETTINGS, change=(("output_radius", 20.0),)),
            Variant("scion hidden radius {hidden_radius:g}, output radius 5", "top",
                    keep=_SCION_SETTINGS, change=(("output_radius", 5.0),)),
            Variant("scion hidden radius {hidden_radius:g}, decay over 50%", "top",
                    keep=_SCION_SETTINGS, change=(("decay_frac", 0.5),)))),
    (True, (Variant("scion combined", "winners", keep=_ALL_SETTINGS, once=True),)),
    (True, (Variant("scion decay over 100%", "best", keep=_ALL_SETTINGS, once=True,
                    change=(("decay_frac", 1.0),)),
            Variant("scion lr x2", "best", keep=_ALL_SETTINGS, once=True,
                    change=(("lr", _x(2)),)))),
)


def _setting(run) -> tuple:
  """What a run trains, its label aside."""
  get = run.get if isinstance(run, dict) else lambda k: getattr(run, k)
  return tuple(get(k) for k in ("optimizer", "lr", "steps", "beta", "hidden_radius",
                                "output_radius", "decay_frac", "init"))


def scion_stage(runs: list[dict], args, after_grids: bool) -> list[Job]:
  """The runs of Scion's first stage (:data:`SCION_STAGES`) not done, if it is one of those
  ``after_grids`` (or not); none while a start run is missing."""
  if not args.variants:
    return []
  labels, keys = {r["label"] for r in runs}, {json.dumps(r["key"]) for r in runs}
  settings = {_setting(r) for r in runs}
  for after, stage in SCION_STAGES:
    jobs = []
    for v in stage:
      start = STARTS[v.start](runs, args)
      if start is None:
        return []
      job = v.job(start, args)
      if not ((v.once and job.label in labels) or (v.new_setting and _setting(job) in settings)):
        jobs.append(job)
    if any(json.dumps(j.key()) not in keys for j in jobs):
      return jobs if after == after_grids else []
  return []


def next_job(runs: list[dict], args) -> Job | None:
  """The next run of the sweep given those done, or ``None`` when it is complete.

  AdamW's grid and Scion's first, then Scion's variants (the answer to the goal
  and its diagnosis), then the other optimizers' grids, then follow-ups from
  Scion's best run so far (:data:`SCION_STAGES`), then our Muon from Flax's init.
  """
  done = {json.dumps(r["key"]) for r in runs}

  def todo(job: Job) -> bool:
    return json.dumps(job.key()) not in done

  centers = {o: g.center for o, g in grids(args).items()}

  def next_on_grid(opt: str) -> Job | None:
    for lr in grid(opt, args.points, centers):
      if todo(job := grid_job(opt, lr, args)):
        return job
    lr = extension(runs, opt, args.points, args.extend, centers)
    return None if lr is None else grid_job(opt, lr, args)

  first = [o for o in ("adamw", "scion") if o in args.optimizers]
  rest = [o for o in args.optimizers if o not in first]
  for opt in first:
    if job := next_on_grid(opt):
      return job
  for job in scion_stage(runs, args, after_grids=False):
    if todo(job):
      return job
  for opt in rest:
    if job := next_on_grid(opt):
      return job
  for job in scion_stage(runs, args, after_grids=True) + muon_inits(runs, args):
    if todo(job):
      return job
  return None


def muon_inits(runs: list[dict], args) -> list[Job]:
  """Our Muon's grid again from Flax's init (optax's Muon starts there), once its grid is done,
  extended past a winning edge as the grids are."""
  if "muon" not in args.optimizers or not args.variants:
    return []
  lrs = sorted(r["lr"] for r in runs if r["label"] == "muon")
  if len(lrs) < args.points or extension(runs, "muon", args.points, args.extend) is not None:
    return []
  jobs = [Job("muon standard init", "muon", lr, args.steps, init="standard") for lr in lrs]
  mine = [r for r in runs if r["label"] == "muon standard init"]
  if len(mine) < len(jobs):
    return jobs
  b, lo, hi = best(mine), min(r["lr"] for r in mine), max(r["lr"] for r in mine)
  edge = {lo: lo / 2, hi: hi * 2}.get(b["lr"]) if b else None  # past a winning edge
  if edge is None or len(mine) - len(jobs) >= args.extend:
    return jobs
  return jobs + [dataclasses.replace(jobs[0], lr=edge)]


def summarize(result: dict) -> None:
  """Fills ``target``, ``to_target`` (per run) and ``goal`` from the runs and step times."""
  runs, times = result["runs"], result["step_time"]
  adam = best(runs, label="adamw")
  if adam is None:
    return
  target = adam["val_loss"]
  n = _common.crossing(adam["curve"], target) or adam["steps"]  # its own curve, by the same rule
  t_adam = times["adamw"]["median_s"]
  result["target"] = dict(val_loss=target, lr=adam["lr"], steps=n, wall_s=n * t_adam)
  rows = []
  for r in runs:
    s = _common.crossing(r["curve"], target)
    t = times[r["optimizer"]]["median_s"]
    rows.append(dict(label=r["label"], lr=r["lr"], steps=r["steps"], val_loss=r["val_loss"],
                     steps_to_target=s, step_ratio=None if s is None else s / n,
                     wall_ratio=None if s is None else s * t / (n * t_adam),
                     final_below_target=r["val_loss"] <= target))
  result["to_target"] = rows
  goal = {}
  for opt in result["config"]["optimizers"]:
    if opt == "adamw":
      continue
    def family(lab, opt=opt):
      return lab == opt or lab.startswith((opt + " ", opt + "@"))

    reached = [x for x in rows if family(x["label"]) and x["step_ratio"] is not None]
    b = best(runs, label=opt)
    fastest = min(reached, key=lambda x: x["step_ratio"]) if reached else None
    goal[opt] = dict(best_lr=None if b is None else b["lr"],
                     best_lr_at_grid_edge=None if b is None else b["lr"] in (
                         min(r["lr"] for r in runs if r["label"] == opt),
                         max(r["lr"] for r in runs if r["label"] == opt)),
                     fastest=fastest)
  sc = goal.get("scion", {}).get("fastest")
  short = next((x for x in rows if x["label"] == "scion@0.67"), None)
  result["goal"] = dict(
      per_optimizer=goal,
      scion_steps_ratio=None if sc is None else sc["step_ratio"],
      scion_wall_ratio=None if sc is None else sc["wall_ratio"],
      scion_steps_met=sc is not None and sc["step_ratio"] <= STEP_RATIO,
      scion_wall_met=sc is not None and sc["wall_ratio"] <= WALL_RATIO,
      scion_0_67x_schedule_reaches_target=None if short is None else short["final_below_target"],
      adamw_best_lr_at_grid_edge=adam["lr"] in (min(r["lr"] for r in runs
                                                    if r["label"] == "adamw"),
                                                max(r["lr"] for r in runs
                                                    if r["label"] == "adamw")))


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = {"adamw": "k", "scion": "C3", "optax_muon": "C2", "unconstrained_scion": "C1",
            "muon": "C0"}
  for opt in result["config"]["optimizers"]:
    mine = [r for r in result["runs"] if r["optimizer"] == opt and r["steps"] ==
            result["config"]["steps"]]
    top = best(mine)
    t = result["step_time"][opt]["median_s"]
    for r in mine:
      if not r["curve"] or not all(math.isfinite(v) for _, v in r["curve"]):
        continue
      steps, vals = zip(*r["curve"], strict=True)
      is_top = r is top
      kw = dict(color=colors[opt], lw=2.0 if is_top else 0.7, alpha=1.0 if is_top else 0.35,
                label=f"{r['label']} lr {r['lr']:.3g}" if is_top else None)
      ax0.plot(steps, vals, **kw)
      if is_top:
        ax1.plot([s * t / 60 for s in steps], vals, **kw)
  if "target" in result:
    for ax in (ax0, ax1):
      ax.axhline(result["target"]["val_loss"], color="gray", ls=":", lw=1,
                 label="AdamW's best final loss")
    ax0.axvline(STEP_RATIO * result["target"]["steps"], color="gray", ls="-.", lw=0.8,
                label=f"{STEP_RATIO}x AdamW's steps")
    finals = [r["val_loss"] for r in result["runs"] if math.isfinite(r["val_loss"])]
    for ax in (ax0, ax1):
      ax.set_ylim(min(finals) - 0.05, result["target"]["val_loss"] + 0.6)
  c = result["config"]
  ax0.set(xlabel="step", ylabel="validation loss (nats / char)",
          title=f"GPT width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} tokens/step"
                " (faint: other lrs)")
  ax1.set(xlabel="minutes (steps x median step time)", ylabel="validation loss",
          title="best run of each optimizer against wall-clock")
  ax0.legend(fontsize=7)
  ax1.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def print_table(result: dict) -> None:
  print(f"\n{'run':<26} {'lr':>9} {'steps':>5} {'final val':>9} {'to target':>9} {'x steps':>7}"
        f" {'x wall':>7}")
  for x in result.get("to_target", []):
    s = "-" if x["steps_to_target"] is None else f"{x['steps_to_target']:.0f}"
    r1 = "-" if x["step_ratio"] is None else f"{x['step_ratio']:.2f}"
    r2 = "-" if x["wall_ratio"] is None else f"{x['wall_ratio']:.2f}"
    print(f"{x['label']:<26} {x['lr']:9.3g} {x['steps']:5d} {x['val_loss']:9.4f} {s:>9} {r1:>7}"
          f" {r2:>7}")
  print("step times (s):", {k: round(v["median_s"], 4) for k, v in result["step_time"].items()})
  if "goal" in result:
    g = result["goal"]
    print(f"goal: scion <= {STEP_RATIO}x AdamW's steps: {g['scion_steps_ratio']} "
          f"({'met' if g['scion_steps_met'] else 'missed'}); <= {WALL_RATIO}x wall-clock: "
          f"{g['scion_wall_ratio']} ({'met' if g['scion_wall_met'] else 'missed'})")


def parse(argv):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Run from the repository root: python -m benchmarks.convergence")
  p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  for k in PRESETS["cpu"]:
    p.add_argument("--" + k.replace("_", "-"), dest=k, type=int, help="override the preset's")
  p.add_argument("--data", default=None,
                 help="a UTF-8 text file (default: the example's pydoc_data corpus)")
  p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
  p.add_argument("--points", type=int, default=4, help="learning rates per grid (>= 2)")
  p.add_argument("--extend", type=int, default=2, help="grid points allowed past each edge")
  p.add_argument("--no-variants", dest="variants", action="store_false",
                 help="skip Scion's beta, hidden-radius and 0.67x-schedule runs")
  p.add_argument("--tuned", action="store_true",
                 help="each optimizer at the best setting found on the cpu preset (TUNED):"
                 " adamw, optax_muon, scion only; with --points 3 the best lr is mid-grid;"
                 " needs --no-variants")
  p.add_argument("--timing-rounds", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--resume", action="store_true",
                 help="keep the runs already in --out when its configuration matches")
  p.add_argument("--report", action="store_true",
                 help="no training: summarize --out again, print its table, redraw its PNG")
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "convergence.json"))
  args = p.parse_args(argv)
  for k, v in PRESETS[args.preset].items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  if args.points < 2 or "adamw" not in args.optimizers:
    p.error("--points must be >= 2 and --optimizers must include adamw (it sets the target)")
  if args.tuned and (args.variants or not set(args.optimizers) <= set(TUNED)):
    p.error(f"--tuned runs the grids only (add --no-variants) of {', '.join(TUNED)}")
  return args


def same_sweep(old: dict, new: dict) -> bool:
  """Whether ``old``'s runs belong to the sweep ``new``: the same configuration, with
  ``new`` adding optimizers at most."""
  def strip(c):
    return {k: v for k, v in c.items() if k not in ("optimizers", "grid_center", "init")}

  return (strip(old) == strip(new) and set(old["optimizers"]) <= set(new["optimizers"])
          and all(old[k][o] == new[k][o] for k in ("grid_center", "init")
                  for o in old["optimizers"]))


def main(argv: list[str] | None = None) -> None:
  args = parse(argv)
  png = os.path.splitext(args.out)[0] + ".png"
  if args.report:
    with open(args.out) as f:
      result = json.load(f)
    summarize(result)  # with this version's rules
    _common.write_json(result, args.out)
    plot(result, png)
    print_table(result)
    return
  t_start = time.perf_counter()
  data = data_lib.load(args.data)
  config = dict(preset=args.preset, data=_common.portable(os.path.abspath(data.source))
                if args.data else data.source, data_fingerprint=data.fingerprint,
                vocab_size=data.vocab_size, **{k: getattr(args, k) for k in PRESETS["cpu"]},
                optimizers=args.optimizers, points=args.points, extend=args.extend,
                variants=args.variants, seed=args.seed, grid_center=GRID_CENTER,
                init=INIT, schedule="constant, then linear decay to 0 over the last 30%, "
                "no warmup", weight_decay=0.0)
  if args.tuned:  # recorded only then, so that the default sweep's config reads as before
    config.update(grid_center={o: g.center for o, g in TUNED.items()},
                  init={o: g.init or INIT[o] for o, g in TUNED.items()},
                  schedule="constant, then linear decay to 0 over the last decay_frac of the"
                  " steps (tuned), no warmup",
                  tuned={o: dataclasses.asdict(g) for o, g in TUNED.items()})
  config = _common.portable(config)
  result = dict(benchmark="convergence", date=datetime.datetime.now(datetime.UTC).isoformat(),
                command=_common.command("convergence", argv), config=config,
                machine=dict(device=_common.device_name(), backend=jax.default_backend(),
                             jax=jax.__version__, optax=optax.__version__,
                             load_average_at_start=os.getloadavg()),
                runs=[], complete=False)
  if args.resume and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    if same_sweep(old["config"], config):
      result["runs"] = old["runs"]
      if old["config"]["optimizers"] == config["optimizers"]:
        result["step_time"] = old.get("step_time")  # else all are timed again, together
      print(f"resuming: {len(old['runs'])} runs done", flush=True)
  if not result.get("step_time"):
    result["step_time"] = step_times(args, data, args.optimizers, args.timing_rounds,
                                     per_round=5 if args.preset == "toy" else 10)
    print("step times (s):", {k: round(v["median_s"], 4)
                              for k, v in result["step_time"].items()}, flush=True)
  with tempfile.TemporaryDirectory(prefix="convergence_") as root:
    while (job := next_job(result["runs"], args)) is not None:
      r = run_one(job, args, root)
      result["runs"].append(r)
      print(f"{job.label:<26} lr {job.lr:<9.3g} {job.steps:5d} steps: val {r['val_loss']:.4f}"
            f" ({r['seconds']:.0f} s)", flush=True)
      summarize(result)
      result["wall_s"] = time.perf_counter() - t_start
      _common.write_json(result, args.out)
      plot(result, png)
  result["complete"] = True
  summarize(result)
  result["wall_s"] = time.perf_counter() - t_start
  _common.write_json(result, args.out)
  plot(result, png)
  print_table(result)
  print(f"\nwrote {args.out} and {png} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
