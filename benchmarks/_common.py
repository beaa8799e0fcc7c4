"""What the benchmark scripts share: result files, the machine's name, sweep flags, FLOP counts.

Every benchmark runs from the repository root as a module, ``python -m
benchmarks.<name>``, and writes its JSON with :func:`write_json`, which records
paths relative to the repository (and only the file name of anything outside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

import jax

import optax_lmo as ol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
# What the GPT trainer defaulted to when the recorded GPT runs of drop, adaptive_batch and
# lr_transfer were made (the library's radii then, decay over 30%, the init on the norm sphere);
# for scion it now defaults to the best of benchmarks/ablation.py (radii 48 and 160, decay over
# 50%, lr 2^-11, ol.init_params). Pinned so that those reproduce.
RECORDED_SETTINGS = dict(hidden_radius=3.0, output_radius=10.0, decay_frac=0.3)
RECORDED_SCION_LR = 2**-7
RECORDED_INIT = "scion"


def device_name(cores: bool = True) -> str:
  """``"CPU: <model>, <n> cores"`` (the core count only with ``cores``), else the accelerator."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    model = platform.processor() or "cpu"
    try:
      with open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"CPU: {model}, {os.cpu_count()} cores" if cores else f"CPU: {model}"
  return f"{dev.platform.upper()}: {dev.device_kind}"


def command(name: str, argv: list[str] | None) -> str:
  """The command that reproduces this run: ``python -m benchmarks.<name> <flags>``.

  A flag that names an existing file, or any absolute path, is written relative
  to the repository (a path outside it by its name alone).
  """
  args = sys.argv[1:] if argv is None else argv
  args = [portable(os.path.abspath(a)) if os.path.isabs(a) or os.path.exists(a) else a
          for a in args]
  return " ".join(["python -m benchmarks." + name, *args])


def sweep_parser(doc: str, full: dict, reduced: dict, out: str) -> argparse.ArgumentParser:
  """The flags of the GPT sweeps (``lr_transfer``, ``convergence``); callers add their own."""
  parser = argparse.ArgumentParser(
      description=doc.split("\n\n")[0],
      epilog=f"Run from the repository root: python -m benchmarks.{os.path.splitext(out)[0]}")
  parser.add_argument("--full", action="store_true",
                      help=f"the bigger configuration {full} instead of {reduced}")
  parser.add_argument("--data", default=None,
                      help="a UTF-8 text file (default: the example's pydoc_data corpus; the"
                      " recorded results used tinyshakespeare.txt)")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--steps", type=int, help="override the configuration's steps")
  parser.add_argument("--batch", type=int, help="override the configuration's batch")
  parser.add_argument("--seq", type=int, help="override the configuration's sequence length")
  parser.add_argument("--eval-batches", type=int, dest="eval_batches")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--report", action="store_true",
                      help="no training: print the table and redraw the PNG from --out")
  parser.add_argument("--resume", action="store_true",
                      help="keep the runs already in --out when its config matches this one")
  parser.add_argument("--out", default=os.path.join(RESULTS, out))
  return parser


def parse_sweep(parser: argparse.ArgumentParser, argv, full: dict, reduced: dict):
  """Parses ``argv``, then fills each size flag left unset from ``full`` or ``reduced``."""
  args = parser.parse_args(argv)
  for k, v in (full if args.full else reduced).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  return args


def portable(obj):
  """``obj`` with every absolute path made relative to the repository (outside it: its name).

  Goes through dicts, lists and tuples (tuples come back as lists, as JSON has them).
  """
  if isinstance(obj, dict):
    return {k: portable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [portable(v) for v in obj]
  if isinstance(obj, str) and os.path.isabs(obj):
    path = os.path.normpath(obj)
    inside = os.path.commonpath([path, ROOT]) == ROOT
    return os.path.relpath(path, ROOT) if inside else os.path.basename(path)
  return obj


def write_json(result: dict, path: str) -> None:
  """Writes :func:`portable` ``result`` to ``path`` (creating its folder), indented by one."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(portable(result), f, indent=1)


def crossing(curve, target: float) -> float | None:
  """The first step at which ``curve`` (``(step, loss)`` pairs) reaches ``target``.

  Linear between evaluations; ``None`` if it never does.
  """
  for (s0, v0), (s1, v1) in zip(curve, curve[1:], strict=False):
    if v1 <= target:
      return s1 if v0 == v1 else s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
  return None


def extend_past_edges(points: list, loss, step, most: int) -> list:
  """``points`` (ordered along one axis), extended past a winning edge by ``step(point, +-1)``,
  at most ``most`` times. ``loss(point)``: the final loss (``inf`` diverged), ``None`` while
  the point has not run; the list stops growing at the first such point."""
  points = list(points)
  for _ in range(most):
    losses = [loss(p) for p in points]
    if any(v is None for v in losses):
      return points
    best = min(range(len(points)), key=lambda i: losses[i])
    if best == 0:
      points.insert(0, step(points[0], -1))
    elif best == len(points) - 1:
      points.append(step(points[-1], +1))
    else:
      return points
  return points


def train_logged(cfg) -> tuple[dict, list[dict], float]:
  """Trains the GPT trainer run ``cfg``; its summary, ``log.jsonl`` records and seconds.

  The run's workdir is deleted afterwards.
  """
  from benchmarks.gpt import train as train_lib  # the GPT benchmarks only

  t0 = time.perf_counter()
  out = train_lib.train(cfg)
  seconds = time.perf_counter() - t0
  with open(os.path.join(cfg.workdir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  shutil.rmtree(cfg.workdir, ignore_errors=True)
  return out, records, seconds


def train_settings(shape: dict, settings: dict, data: str | None, root: str):
  """The GPT trainer at ``shape`` and ``settings``, in a workdir under ``root``.

  Returns ``(cfg, out, records, seconds)``; ``out`` is ``None`` when the run diverged (it
  stops itself with an error, printed here in one line).
  """
  from benchmarks.gpt import train as train_lib  # the GPT benchmarks only

  name = f"run{abs(hash(json.dumps(settings, sort_keys=True)))}"
  cfg = train_lib.make_config(**{**shape, **settings}, data=data, ckpt_every=10**6, keep_ckpts=1,
                              resume=False, progress=False, plot=False,
                              workdir=os.path.join(root, name))
  try:
    return cfg, *train_logged(cfg)
  except (FloatingPointError, ValueError, RuntimeError) as e:  # a diverged run stops itself
    print(f"  diverged: {e}".splitlines()[0], flush=True)
    return cfg, None, [], None


def polar_flops(shape, pol: ol.Polar) -> int:
  """FLOPs of the matmuls ``polar`` runs on one matrix of ``shape`` with options ``pol``.

  ``2 m n k`` per ``(m, k) @ (k, n)``; for ``m <= n`` the standard iteration
  costs ``4 m^2 n + 2 m^3`` a step, the Gram iteration ``4 m^2 n`` per restart
  window plus ``2 m^3`` for a window's first step and ``8 m^3`` for each later one.
  """
  m, n = sorted(shape[-2:])
  r = pol.resolve(shape)  # the method, steps and Gram window these options run at this shape
  steps = r.steps
  if r.method == "newton_schulz":
    return steps * (4 * m * m * n + 2 * m**3)
  windows = math.ceil(steps / r.restart_every)
  return windows * 4 * m * m * n + 2 * m**3 * (4 * steps - 3 * windows)
