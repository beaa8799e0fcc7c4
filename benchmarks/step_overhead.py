"""What an optimizer adds to a full training step of the GPT trainer: AdamW, Scion, Muon, optax's.

Builds the GPT trainer (``benchmarks/gpt``) once per optimizer, in one process,
compiles everything, then times in rounds; in each round every measurement runs
once, in turn, so load from other processes hits all of them alike. Medians
over ``--reps`` rounds after ``--warmup`` untimed calls. Per optimizer:

* ``step``: the example's ``train_step`` (one ``nnx.jit``: forward, backward,
  ``optimizer.update`` and the parameter write), on the same batch every time;
* ``update``: ``optimizer.update(model, grads)`` alone on fixed gradients:
  ``--chain`` updates chained in a ``lax.fori_loop`` inside one ``jax.jit``
  whose parameters and optimizer state are donated (updated in place), timed
  to the last result and divided by ``--chain``; so a call's dispatch and
  Python cost (tens of milliseconds for a large model, more than AdamW's whole
  update on a GPU) is shared by the chain instead of counted once per update.
  Each iteration passes the gradients through ``lax.optimization_barrier``
  with the state, so no gradient-only work is hoisted out of the loop;

and once, optimizer-free, ``fwd_bwd``: loss and gradients, the part every
step shares. ``step - fwd_bwd`` is then what the optimizer costs inside the
fused step, to compare with ``update``. Each call is timed in wall seconds and
in process CPU seconds (all threads); on a machine shared with other jobs the
CPU seconds move much less with their load.

The optimizers are those of ``benchmarks/gpt/train.py`` with its defaults:
``adamw``; ``scion`` (Scion: spectral LMO on the 4 x depth hidden matrices,
ColNorm embedding, RowNorm head, BiasRMS gains); ``muon`` (ours: spectral LMO
on the hidden matrices, AdamW on the rest); ``optax_muon``
(``optax.contrib.muon`` with the same routing).

The JSON, per optimizer (``optimizers.<name>``): ``step_s`` and ``update_s``
(median wall seconds of one step, of one update), ``step_minus_fwd_bwd_s``,
``step_over_adamw``, the same in process CPU seconds (``*_cpu_s``,
``step_cpu_over_adamw``), every round's figures (``*_times_s``) and
``compile_step_s``; ``config.chain`` is ``--chain``. Files written before the
chained timing (``config`` without ``chain``) have ``update_s`` from one
separately jitted call per update: on a GPU that is dispatch and transfer
more than the update. ``flops.matmul_flop_per_s``: a 1024^2 float32 matmul,
the best of rounds of 10 back-to-back calls.

FLOPs (``flops`` in the JSON): the forward and backward matmuls, ``6 N T``
(``N`` the matmul parameters, ``T`` tokens) plus causal-free attention
``12 B L^2 d`` per layer, against the Newton–Schulz matmuls of each optimizer
(``benchmarks._common.polar_flops``: per ``m x n`` matrix, ``m <= n``, standard
``4 m^2 n + 2 m^3`` a step, Gram as documented there). Their ratio is the floor
of the LMO's share of a step if both ran at the same FLOP rate.

Usage, from the repository root::

  python -m benchmarks.step_overhead                       # width 512, depth 4, ...
  python -m benchmarks.step_overhead --width 128 --seq 64 --batch 8 --reps 3  # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys
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

OPTIMIZERS = ("adamw", "scion", "muon", "optax_muon")
TARGETS = {"adamw": 1.15, "optax_muon": 0.85}  # scion step / peer step at most
OPTAX_NS = ol.Polar(method="newton_schulz", coeffs="jordan", steps=5)  # optax.contrib's iteration


# -- building ----------------------------------------------------------------------------------


@nnx.jit
def fwd_bwd(model, x_BxL, y_BxL):
  """Loss and gradients, no optimizer: the part of a step every optimizer shares."""
  return nnx.value_and_grad(train_lib.loss_fn)(model, x_BxL, y_BxL)


def update_chain(model, optimizer, grads, n: int):
  """``f(state) -> state``: ``n`` chained ``optimizer.update(model, grads)`` in one jit.

  ``state`` is ``nnx.split((model, optimizer))``'s, donated: pass each call the
  state the previous one returned. The first state is a copy, so ``model`` and
  ``optimizer`` keep their own arrays.
  """
  graphdef, state = nnx.split((model, optimizer))

  @functools.partial(jax.jit, donate_argnums=0)
  def chain(state):
    def body(_, state):
      state, g = jax.lax.optimization_barrier((state, grads))  # g: loop-variant to XLA
      m, o = nnx.merge(graphdef, state)
      o.update(m, g)
      return nnx.state((m, o))

    return jax.lax.fori_loop(0, n, body, state)

  return chain, jax.tree.map(jnp.copy, state)


def _params(model) -> list:
  """The parameter arrays: what to wait on after a call that only mutates ``model``."""
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def build(name: str, args, vocab_size: int):
  """``(model, optimizer, gcfg)`` for optimizer ``name``, built as the example's ``train`` does."""
  cfg = train_lib.make_config(optimizer=name, width=args.width, depth=args.depth, seq=args.seq,
                              batch=args.batch, heads=args.heads, steps=1000)
  gcfg = train_lib.model_config(train_lib.resolve(cfg), vocab_size)
  tx = train_lib.make_optimizer(cfg, gcfg)

  @nnx.jit
  def create():
    model = model_lib.GPT(gcfg, rngs=nnx.Rngs(params=0))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  model, optimizer = create()
  return model, optimizer, gcfg


# -- flops -------------------------------------------------------------------------------------


def hidden_shapes(width: int, depth: int) -> list[tuple[int, int]]:
  d = width
  return [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * depth


def flop_counts(args, vocab_size: int) -> dict:
  d, tokens = args.width, args.batch * args.seq
  n_matmul = 12 * d * d * args.depth + d * vocab_size  # hidden kernels + head (embed: a gather)
  dense = 6 * n_matmul * tokens
  attention = 12 * args.batch * args.seq**2 * d * args.depth  # QK^T and AV, fwd + bwd, full L^2
  shapes = hidden_shapes(args.width, args.depth)
  ours = ol.Polar()
  methods = {"x".join(map(str, s)): ours.resolve(s).method for s in shapes}
  lmo_ours = sum(_common.polar_flops(s, ours) for s in shapes)
  lmo_optax = sum(_common.polar_flops(s, OPTAX_NS) for s in shapes)
  fb = dense + attention
  return {
      "matmul_params": n_matmul, "tokens": tokens, "fwd_bwd": fb, "fwd_bwd_dense": dense,
      "fwd_bwd_attention": attention, "lmo_ours": lmo_ours, "lmo_optax": lmo_optax,
      "lmo_ours_over_fwd_bwd": lmo_ours / fb, "lmo_optax_over_fwd_bwd": lmo_optax / fb,
      "polar_method_by_shape": methods,
      "convention": "2 m n k per (m,k)@(k,n); fwd+bwd = 6 N T + 12 B L^2 d per layer;"
      " LMO: ours polar_express x 5 (auto method), optax jordan x 5 standard iteration",
  }


# -- timing ------------------------------------------------------------------------------------


def _timed(f, *args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t


def _advance(chain, box: list):
  """Runs ``chain`` on the state in ``box`` (donated) and keeps the state it returns."""
  box[0] = chain(box[0])
  return box[0]


def matmul_rate(size: int = 1024, reps: int = 5, inner: int = 10) -> float:
  """FLOP/s of a ``size``^2 float32 matmul: the best of ``reps`` rounds of ``inner`` calls."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))

  def round_s():
    t = time.perf_counter()
    for _ in range(inner):
      y = f(a)
    jax.block_until_ready(y)
    return (time.perf_counter() - t) / inner

  return 2 * size**3 / min(round_s() for _ in range(reps))


def run(args) -> dict:
  data = data_lib.load(None)
  x_np, y_np = data_lib.train_batch(data, seed=0, step=0, batch=args.batch, seq=args.seq)
  x_BxL, y_BxL = jnp.asarray(x_np), jnp.asarray(y_np)
  names = args.optimizers
  built = {n: build(n, args, data.vocab_size) for n in names}

  # Fixed gradients for the update-only timing: those of the first model (all
  # optimizers see the same parameter tree, and the update's cost does not
  # depend on the values).
  _, grads = fwd_bwd(built[names[0]][0], x_BxL, y_BxL)
  jax.block_until_ready(grads)

  calls = {"fwd_bwd": lambda m=built[names[0]][0]: fwd_bwd(m, x_BxL, y_BxL)}
  for n in names:
    model, opt, _ = built[n]
    calls[f"step/{n}"] = lambda m=model, o=opt: (train_lib.train_step(m, o, x_BxL, y_BxL),
                                                 _params(m))
    chain, carry = update_chain(model, opt, grads, args.chain)
    calls[f"update/{n}"] = functools.partial(_advance, chain, [carry])
  per_call = {k: args.chain if k.startswith("update/") else 1 for k in calls}  # updates a call
  compile_s = {}
  for k, f in calls.items():  # compile, then warm up
    compile_s[k] = _timed(f)
    for _ in range(args.warmup):
      _timed(f)
    print(f"  compiled {k} ({compile_s[k]:.1f} s)", file=sys.stderr, flush=True)

  times = {k: [] for k in calls}
  cpu = {k: [] for k in calls}  # process CPU seconds (all threads): robust to other processes
  mm = []
  for r in range(args.reps):
    for k, f in calls.items():
      c = time.process_time()
      times[k].append(_timed(f) / per_call[k])
      cpu[k].append((time.process_time() - c) / per_call[k])
    mm.append(matmul_rate())
    print(f"  round {r + 1}/{args.reps}: " + ", ".join(
        f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr, flush=True)
  med = {k: float(np.median(v)) for k, v in times.items()}
  med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}

  def paired(a, b):  # median over rounds of the within-round ratio
    return float(np.median(np.array(times[a]) / np.array(times[b])))

  per_opt = {
      n: {"step_s": med[f"step/{n}"], "update_s": med[f"update/{n}"],
          "step_minus_fwd_bwd_s": med[f"step/{n}"] - med["fwd_bwd"],
          "step_over_adamw": med[f"step/{n}"] / med["step/adamw"] if "adamw" in names else None,
          "step_cpu_s": med_cpu[f"step/{n}"], "update_cpu_s": med_cpu[f"update/{n}"],
          "step_cpu_over_adamw": (med_cpu[f"step/{n}"] / med_cpu["step/adamw"]
                                  if "adamw" in names else None),
          "step_times_s": times[f"step/{n}"], "update_times_s": times[f"update/{n}"],
          "step_cpu_times_s": cpu[f"step/{n}"], "update_cpu_times_s": cpu[f"update/{n}"],
          "compile_step_s": compile_s[f"step/{n}"]}
      for n in names
  }
  ratios, targets = {}, {}
  for peer, target in TARGETS.items():  # scion's step over each peer's
    if "scion" not in names or peer not in names:
      continue
    key = f"scion_over_{peer}"
    ratios[key] = med["step/scion"] / med[f"step/{peer}"]
    ratios[f"{key}_paired"] = paired("step/scion", f"step/{peer}")
    ratios[f"{key}_cpu"] = med_cpu["step/scion"] / med_cpu[f"step/{peer}"]
    targets[key] = {"value": ratios[key], "target": target, "met": ratios[key] <= target}
  flops = flop_counts(args, data.vocab_size)
  rate = float(np.median(mm))
  flops["matmul_flop_per_s"] = rate
  flops["fwd_bwd_flop_per_s"] = flops["fwd_bwd"] / med["fwd_bwd"]
  flops["fwd_bwd_fraction_of_matmul"] = flops["fwd_bwd_flop_per_s"] / rate
  bounds = {}
  if {"scion", "optax_muon", "adamw"} <= set(names):
    u_s, u_o = med["update/scion"], med["update/optax_muon"]
    # With step = fwd_bwd + update, scion/optax_muon <= 0.85 needs
    # fwd_bwd <= (0.85 u_optax - u_scion) / 0.15; with a free Scion update the
    # best ratio is adamw's step over optax_muon's.
    bounds = {
        "scion_over_optax_muon_if_scion_cost_as_adamw": med["step/adamw"] / med["step/optax_muon"],
        "fwd_bwd_s_at_most_for_0.85": (0.85 * u_o - u_s) / 0.15,
        "fwd_bwd_s_measured": med["fwd_bwd"],
        "scion_lmo_flop_per_s_in_update": flops["lmo_ours"] / u_s,
        "optax_lmo_flop_per_s_in_update": flops["lmo_optax"] / u_o,
    }
  return {
      "config": {"width": args.width, "depth": args.depth, "heads": args.heads,
                 "seq": args.seq, "batch": args.batch, "vocab": data.vocab_size,
                 "reps": args.reps, "warmup": args.warmup, "chain": args.chain,
                 "dtype": "float32",
                 "n_params": int(sum(x.size for x in jax.tree.leaves(
                     nnx.state(built[names[0]][0], nnx.Param))))},
      "fwd_bwd_s": med["fwd_bwd"], "fwd_bwd_cpu_s": med_cpu["fwd_bwd"],
      "fwd_bwd_times_s": times["fwd_bwd"], "fwd_bwd_cpu_times_s": cpu["fwd_bwd"],
      "load_average_1m": os.getloadavg()[0],
      "optimizers": per_opt, "ratios": ratios, "targets": targets, "flops": flops,
      "bounds": bounds,
      "matmul_samples_flop_per_s": mm,
  }


def print_table(res: dict) -> None:
  c, fl = res["config"], res["flops"]
  print(f"\nGPT width {c['width']}, depth {c['depth']}, heads {c['heads']}, seq {c['seq']},"
        f" batch {c['batch']}, vocab {c['vocab']}: {c['n_params'] / 1e6:.1f}M params;"
        f" medians of {c['reps']} interleaved rounds")
  print(f"fwd+bwd alone: {res['fwd_bwd_s']:.3f} s ({fl['fwd_bwd'] / 1e12:.2f} TFLOP,"
        f" {fl['fwd_bwd_flop_per_s'] / 1e9:.0f} GFLOP/s; plain 1024^3 matmul"
        f" {fl['matmul_flop_per_s'] / 1e9:.0f} GFLOP/s)")
  print(f"(wall seconds; 'cpu' columns: process CPU seconds, less sensitive to other processes;"
        f" 1-minute load average at the end {res['load_average_1m']:.1f} on"
        f" {res['cpu_count']} CPUs)")
  head = (f"{'optimizer':<11} {'step s':>8} {'vs adamw':>8} {'step-fb s':>9} {'update s':>9}"
          f" {'update/step':>11} {'step cpu':>9} {'vs adamw':>8} {'update cpu':>10}")
  print(head)
  print("-" * len(head))
  for n, r in res["optimizers"].items():
    vs = f"{r['step_over_adamw']:.3f}" if r["step_over_adamw"] is not None else "-"
    print(f"{n:<11} {r['step_s']:>8.3f} {vs:>8} {r['step_minus_fwd_bwd_s']:>9.3f}"
          f" {r['update_s']:>9.3f} {r['update_s'] / r['step_s']:>10.1%}"
          f" {r['step_cpu_s']:>9.2f} {r['step_cpu_over_adamw'] or 0:>8.3f}"
          f" {r['update_cpu_s']:>10.3f}")
  print(f"\nNewton–Schulz FLOPs / fwd+bwd FLOPs: ours {fl['lmo_ours_over_fwd_bwd']:.1%}"
        f" ({fl['lmo_ours'] / 1e9:.0f} GFLOP), optax {fl['lmo_optax_over_fwd_bwd']:.1%}"
        f" ({fl['lmo_optax'] / 1e9:.0f} GFLOP); polar methods: {fl['polar_method_by_shape']}")
  b = res["bounds"]
  if b:
    print(f"fwd+bwd at {fl['fwd_bwd_fraction_of_matmul']:.0%} of the matmul rate; Newton–Schulz in"
          f" the update: ours {b['scion_lmo_flop_per_s_in_update'] / 1e9:.0f}, optax"
          f" {b['optax_lmo_flop_per_s_in_update'] / 1e9:.0f} GFLOP/s")
    print(f"scion/optax_muon if Scion cost what AdamW does:"
          f" {b['scion_over_optax_muon_if_scion_cost_as_adamw']:.3f}; 0.85 needs fwd+bwd <="
          f" {b['fwd_bwd_s_at_most_for_0.85']:.2f} s (measured {b['fwd_bwd_s_measured']:.2f} s)")
  for k, t in res["targets"].items():
    paired, cpu = res["ratios"][k + "_paired"], res["ratios"][k + "_cpu"]
    print(f"{k}: {t['value']:.3f} (paired {paired:.3f}, cpu {cpu:.3f}), target <= {t['target']}:"
          f" {'met' if t['met'] else 'MISSED'}")


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      epilog="Run from the repository root: python -m benchmarks.step_overhead")
  p.add_argument("--width", type=int, default=512)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--reps", type=int, default=5, help="timed rounds (medians reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  p.add_argument("--chain", type=int, default=5,
                 help="updates chained in one jitted call for the update-alone time")
  p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "step_overhead.json"))
  args = p.parse_args(argv)

  res = {
      "device": _common.device_name(cores=False),
      "cpu_count": os.cpu_count(),
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
      "optax": optax.__version__,
      "flax": __import__("flax").__version__,
      "optax_lmo": ol.__version__,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": _common.command("step_overhead", argv),
      **run(args),
  }
  print_table(res)
  _common.write_json(res, args.out)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
