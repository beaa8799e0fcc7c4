"""What randomized layer updates buy: Drop-Muon's update cost, step time, and time to a target loss.

Three measurements in one process on one device, and one on a mesh:

* ``update``: ``ol.scion``'s update alone on the GPT trainer's parameter tree
  at ``keep_prob=0.5`` (each spectral matrix updated with probability 1/2, the
  skipped ones skip Newton–Schulz) against ``keep_prob=1``; medians of
  ``--reps`` interleaved rounds of ``--calls`` calls (the draws change every
  call), and their ratio.
* ``step``: the example's full training step (forward, backward, update) with
  ``--drop`` at each cutoff ``c = 0 .. depth-1``, and without; interleaved
  rounds. A ``--drop`` step costs on average the mean over the (uniform)
  cutoffs; ``c = 0`` is a full step through the ``lax.switch``.
* ``to_target``: two runs of the example (``REDUCED`` sizes, a few minutes on
  2 busy CPU cores), full updates and ``--drop``; the target is the full run's
  validation loss at 80% of its steps. Steps and training seconds (from the
  logged throughput, compiles, evaluations and saves left out; the first log
  interval, which holds the compile, counts as the median interval) at which
  each curve first reaches it, linear between evaluations.
* ``mesh_update``: ``update`` again on 8 simulated CPU devices (a subprocess:
  the device count is fixed when jax starts), the parameters laid out as the
  example's ``--mesh fsdp=8``, on an ``Auto`` and an ``Explicit`` mesh. The
  spectral matrices go to their owners, who skip the dropped ones. Measured
  in process CPU time (``time.process_time``: 8 simulated devices share the
  cores, so it counts the work, not how it overlaps), per update: medians of
  ``--reps`` interleaved rounds of ``--calls`` calls, and their ratio.

Writes ``benchmarks/results/drop.json`` (with ``--parts`` naming only some
parts, only where ``--out`` says).

Usage, from the repository root::

  python -m benchmarks.drop [--width 384] [--reps 5] [--steps 300] [--parts mesh_update]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
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

PARTS = ("update", "step", "to_target", "mesh_update")
MESH_DEVICES = 8
REDUCED = dict(width=128, depth=4, heads=4, batch=16, seq=64, eval_every=20, eval_batches=8,
               log_every=5, lr=_common.RECORDED_SCION_LR, init=_common.RECORDED_INIT,
               **_common.RECORDED_SETTINGS)
TARGET_AT = 0.8


def _timed(f) -> float:
  t = time.perf_counter()
  jax.block_until_ready(f())
  return time.perf_counter() - t


def _rounds(calls: dict, reps: int) -> dict[str, list[float]]:
  for f in calls.values():  # compile and warm up
    _timed(f)
    _timed(f)
  times = {k: [] for k in calls}
  for r in range(reps):
    for k, f in calls.items():
      times[k].append(_timed(f))
    print(f"  round {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
          file=sys.stderr, flush=True)
  return times


def update_cost(args, vocab: int) -> dict:
  gcfg = model_lib.GPTConfig(vocab_size=vocab, seq_len=args.seq, width=args.width,
                             depth=args.depth, heads=args.heads)
  params = nnx.state(model_lib.GPT(gcfg, rngs=nnx.Rngs(0)), nnx.Param)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  calls, states = {}, {}
  for keep in (1.0, 0.5):
    tx = ol.scion(0.01, rules=model_lib.rules(gcfg), keep_prob=keep)
    states[keep] = tx.init(params)
    update = jax.jit(tx.update)

    def call(keep=keep, update=update):  # the state advances: new draws every call
      for _ in range(args.calls):
        u, states[keep] = update(grads, states[keep], params)
      return u

    calls[f"keep_prob={keep:g}"] = call
  times = _rounds(calls, args.reps)
  med = {k: float(np.median(v)) / args.calls for k, v in times.items()}
  n_spectral = 4 * args.depth
  return dict(width=args.width, depth=args.depth, spectral_matrices=n_spectral,
              seconds_per_update=med, times_s=times, calls_per_round=args.calls,
              ratio=med["keep_prob=0.5"] / med["keep_prob=1"])


def _cpu_timed(f) -> tuple[float, float]:
  """``(process CPU seconds, wall seconds)`` of ``f()``."""
  c, t = time.process_time(), time.perf_counter()
  jax.block_until_ready(f())
  return time.process_time() - c, time.perf_counter() - t


def mesh_update_cost(args, vocab: int) -> dict:
  """``mesh_update``: :func:`mesh_worker` in a subprocess with 8 simulated CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={MESH_DEVICES}"
  ).strip())
  flags = ["--width", str(args.width), "--depth", str(args.depth), "--heads", str(args.heads),
           "--seq", str(args.seq), "--reps", str(args.reps), "--calls", str(args.calls)]
  proc = subprocess.run([sys.executable, "-m", "benchmarks.drop", "--mesh-worker", str(vocab),
                         *flags], env=env, cwd=_common.ROOT, stdout=subprocess.PIPE, text=True,
                        check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def mesh_worker(args, vocab: int) -> dict:
  """``scion`` updates at keep_prob 0.5 and 1 on an 8-device mesh, in process CPU time."""
  from jax.sharding import AxisType, NamedSharding

  from benchmarks.gpt import mesh as mesh_lib

  assert jax.device_count() == MESH_DEVICES, jax.devices()
  gcfg = model_lib.GPTConfig(vocab_size=vocab, seq_len=args.seq, width=args.width,
                             depth=args.depth, heads=args.heads)
  params = nnx.state(model_lib.GPT(gcfg, rngs=nnx.Rngs(0)), nnx.Param)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  out = dict(devices=MESH_DEVICES, mesh="fsdp=8", width=args.width, depth=args.depth,
             spectral_matrices=4 * args.depth, calls_per_round=args.calls, by_axis_type={})
  for at in ("Auto", "Explicit"):
    mesh = jax.make_mesh((MESH_DEVICES,), ("fsdp",), axis_types=(getattr(AxisType, at),))
    put = lambda t, mesh=mesh: jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, mesh_lib.leaf_spec(mesh, x.shape))), t)
    p, g = put(params), put(grads)
    calls, states = {}, {}
    with jax.set_mesh(mesh):
      for keep in (1.0, 0.5):
        tx = ol.scion(0.01, rules=model_lib.rules(gcfg), keep_prob=keep)
        states[keep] = jax.jit(tx.init)(p)
        update = jax.jit(tx.update)

        def call(keep=keep, update=update, p=p, g=g, states=states):  # new draws each call
          for _ in range(args.calls):
            u, states[keep] = update(g, states[keep], p)
          return u

        calls[f"keep_prob={keep:g}"] = call
      for f in calls.values():  # compile and warm up
        _cpu_timed(f)
        _cpu_timed(f)
      cpu, wall = {k: [] for k in calls}, {k: [] for k in calls}
      for r in range(args.reps):
        for k, f in calls.items():
          c, w = _cpu_timed(f)
          cpu[k].append(c)
          wall[k].append(w)
        print(f"  mesh {at} round {r + 1}/{args.reps}: "
              + ", ".join(f"{k} {v[-1]:.3f} cpu-s" for k, v in cpu.items()),
              file=sys.stderr, flush=True)
    med = {k: float(np.median(v)) / args.calls for k, v in cpu.items()}
    med_wall = {k: float(np.median(v)) / args.calls for k, v in wall.items()}
    out["by_axis_type"][at] = dict(
        cpu_s_per_update=med, wall_s_per_update=med_wall, cpu_s=cpu, wall_s=wall,
        ratio=med["keep_prob=0.5"] / med["keep_prob=1"],
        wall_ratio=med_wall["keep_prob=0.5"] / med_wall["keep_prob=1"])
  return out


def step_cost(args, data) -> dict:
  x, y = map(jnp.asarray, data_lib.train_batch(data, seed=0, step=0, batch=args.batch,
                                               seq=args.seq))

  def build(drop):
    cfg = train_lib.make_config(width=args.width, depth=args.depth, heads=args.heads,
                                batch=args.batch, seq=args.seq, drop=drop)
    gcfg = train_lib.model_config(train_lib.resolve(cfg), data.vocab_size)
    model = model_lib.GPT(gcfg, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, train_lib.make_optimizer(cfg, gcfg), wrt=nnx.Param)

  (m0, o0), (m1, o1) = build(False), build(True)
  calls = {"full": lambda: train_lib.train_step(m0, o0, x, y)}
  for c in range(args.depth):
    calls[f"cut={c}"] = lambda c=c: train_lib.train_step(m1, o1, x, y, np.int32(c))
  times = _rounds(calls, args.reps)
  med = {k: float(np.median(v)) for k, v in times.items()}
  mean_drop = float(np.mean([med[f"cut={c}"] for c in range(args.depth)]))
  return dict(width=args.width, depth=args.depth, batch=args.batch, seq=args.seq,
              median_s=med, times_s=times, drop_mean_s=mean_drop,
              ratio=mean_drop / med["full"],
              ratio_by_cut={c: med[f"cut={c}"] / med["full"] for c in range(args.depth)})


def training_seconds(records: list[dict], batch: int, seq: int) -> list[tuple[int, float]]:
  """``(step, seconds of training so far)`` at each train record (see the module docstring)."""
  train = [r for r in records if r["kind"] == "train"]
  steps = [0] + [r["step"] for r in train]
  dt = [(b - a) * batch * seq / r["tokens_per_s"] for a, b, r in zip(steps[:-1], steps[1:], train,
                                                                        strict=True)]
  dt[0] = float(np.median(dt[1:]))
  return list(zip(steps, np.concatenate([[0.0], np.cumsum(dt)]).tolist(), strict=True))


def run_one(args, root: str, drop: bool) -> dict:
  workdir = os.path.join(root, "drop" if drop else "full")
  cfg = train_lib.make_config(**REDUCED, steps=args.steps, drop=drop, seed=args.seed,
                              ckpt_every=args.steps, keep_ckpts=1, workdir=workdir,
                              resume=False, progress=False, plot=False)
  out, records, seconds = _common.train_logged(cfg)
  return dict(drop=drop, steps=args.steps, val_loss=out["val_loss"], wall_s=seconds,
              curve=[(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"],
              train_seconds=training_seconds(records, cfg.batch, cfg.seq))


def to_target(args) -> dict:
  with tempfile.TemporaryDirectory(prefix="drop_") as root:
    runs = {name: run_one(args, root, drop) for name, drop in (("full", False), ("drop", True))}
  at = round(TARGET_AT * args.steps)
  target = float(np.interp(at, *zip(*runs["full"]["curve"], strict=True)))  # between evals
  for r in runs.values():
    s = _common.crossing(r["curve"], target)
    st, sec = zip(*r["train_seconds"], strict=True)
    r["steps_to_target"] = s
    r["train_s_to_target"] = None if s is None else float(np.interp(s, st, sec))
    r["train_s_total"] = sec[-1]
  f, d = runs["full"], runs["drop"]
  return dict(config=dict(REDUCED, steps=args.steps, seed=args.seed, optimizer="scion"),
              target=dict(val_loss=target, full_run_step=at), runs=runs,
              steps_ratio=None if d["steps_to_target"] is None
              else d["steps_to_target"] / f["steps_to_target"],
              time_ratio=None if d["train_s_to_target"] is None
              else d["train_s_to_target"] / f["train_s_to_target"])


def print_table(res: dict) -> None:
  if "update" in res:
    u = res["update"]
    print(f"\n(a) scion update, width {u['width']} depth {u['depth']}"
          f" ({u['spectral_matrices']} spectral matrices), s per update:")
    for k, v in u["seconds_per_update"].items():
      print(f"  {k:<14} {v:.4f}")
    print(f"  ratio keep_prob=0.5 / 1: {u['ratio']:.3f}")
  if "step" in res:
    s = res["step"]
    print(f"\n(b) example step, width {s['width']} depth {s['depth']}"
          f" batch {s['batch']}x{s['seq']}:")
    for k, v in s["median_s"].items():
      print(f"  {k:<8} {v:.4f} s  ({v / s['median_s']['full']:.3f}x full)")
    print(f"  --drop, mean over uniform cutoffs: {s['drop_mean_s']:.4f} s"
          f" = {s['ratio']:.3f}x full")
  if "mesh_update" in res:
    m = res["mesh_update"]
    print(f"\n(d) scion update on {m['devices']} simulated devices ({m['mesh']}), width"
          f" {m['width']} depth {m['depth']}, process CPU s per update:")
    for at, r in m["by_axis_type"].items():
      c = r["cpu_s_per_update"]
      print(f"  {at:<8} keep_prob=1 {c['keep_prob=1']:.4f}, 0.5 {c['keep_prob=0.5']:.4f}:"
            f" ratio {r['ratio']:.3f} (wall {r['wall_ratio']:.3f})")
  if "to_target" not in res:
    return
  t = res["to_target"]
  print(f"\n(c) to the full run's val loss at step {t['target']['full_run_step']}"
        f" ({t['target']['val_loss']:.4f}):")
  print(f"  {'run':<5} {'steps':>7} {'train s':>8} {'final val':>9} {'total train s':>13}")
  for name, r in t["runs"].items():
    st = "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
    sec = "-" if r["train_s_to_target"] is None else f"{r['train_s_to_target']:.1f}"
    print(f"  {name:<5} {st:>7} {sec:>8} {r['val_loss']:9.4f} {r['train_s_total']:13.1f}")
  if t["steps_ratio"] is not None:
    print(f"  drop / full: steps {t['steps_ratio']:.2f}x, training time {t['time_ratio']:.2f}x")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              epilog="Run from the repository root: python -m benchmarks.drop")
  p.add_argument("--width", type=int, default=384, help="model width of (a) and (b)")
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--batch", type=int, default=16, help="batch of (b)")
  p.add_argument("--seq", type=int, default=128, help="sequence length of (b)")
  p.add_argument("--reps", type=int, default=5, help="timed rounds (medians)")
  p.add_argument("--calls", type=int, default=4, help="updates per round in (a) and (d)")
  p.add_argument("--steps", type=int, default=300, help="steps of the runs of (c)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                 help="the measurements to run (default: all)")
  p.add_argument("--out", default=None, help="the JSON to write (default, with every part:"
                 " benchmarks/results/drop.json; with some: none)")
  p.add_argument("--mesh-worker", type=int, default=None, metavar="VOCAB",
                 help=argparse.SUPPRESS)  # run by mesh_update in its own process
  args = p.parse_args(argv)
  if args.mesh_worker is not None:
    print(json.dumps(mesh_worker(args, args.mesh_worker)))
    return
  if args.out is None and set(args.parts) == set(PARTS):
    args.out = os.path.join(_common.RESULTS, "drop.json")
  t0 = time.perf_counter()
  data = data_lib.load(None)
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  res = dict(benchmark="drop", date=now,
             command=_common.command("drop", argv), device=_common.device_name(),
             jax=jax.__version__, optax=optax.__version__,
             load_average_at_start=os.getloadavg())
  if "update" in args.parts:
    res["update"] = update_cost(args, data.vocab_size)
  if "step" in args.parts:
    res["step"] = step_cost(args, data)
  if "to_target" in args.parts:
    res["to_target"] = to_target(args)
  if "mesh_update" in args.parts:
    res["mesh_update"] = mesh_update_cost(args, data.vocab_size)
  res["wall_s"] = time.perf_counter() - t0
  print_table(res)
  if args.out is not None:
    _common.write_json(res, args.out)
    print(f"\nwrote {args.out} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
