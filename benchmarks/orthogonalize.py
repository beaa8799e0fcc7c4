"""How fast and how accurate is our orthogonalization, against optax.contrib.muon's?

Runs in one process and writes ``benchmarks/results/orthogonalize.json``:

* ``trees``: GPT-shaped gradient trees (per layer, Flax layout: qkv ``(d, 3d)``,
  attention out ``(d, d)``, mlp in ``(d, 4d)``, mlp out ``(4d, d)``), Gaussian
  entries. For each width: median wall time per tree, executed FLOPs and FLOP/s
  of (a) ``optax.contrib``'s Newton–Schulz (its defaults, per leaf, jitted),
  (b) ours with the same coefficients (``jordan``, 5 steps, standard
  iteration) through ``scale_by_norm`` (same-shape leaves batched), (c) ours
  with the defaults; the polar error of each against SVD.
* ``matmul``: a jitted float32 matmul's FLOP/s, timed in the same loops.
* ``aspect_sweep``: standard against Gram iteration on one ``m x n`` matrix,
  the evidence for ``GRAM_MIN_ASPECT``.
* ``restart_study``: polar error of the Gram iteration per restart window
  against the standard iteration's, the evidence for the default windows.

FLOPs are those the method executes (``2 m n k`` per ``(m, k) @ (k, n)``
product; elementwise work is not counted). Timings are medians over
``--repeats`` rounds; in each round every method runs once, in turn, so load
from other processes hits all of them alike.

Usage::

  .venv/bin/python -m benchmarks.orthogonalize [--widths 256 512 768] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import _muon

import optax_lmo as ol
from benchmarks import _common  # run from the repository root: python -m benchmarks.orthogonalize

# -- inputs --------------------------------------------------------------------


def gpt_tree(d: int, layers: int, seed: int = 0) -> dict:
  """Gaussian gradients shaped like a GPT's hidden matrices, Flax ``(d_in, d_out)``."""
  shapes = {"qkv": (d, 3 * d), "attn_out": (d, d), "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d)}
  key = jax.random.key(seed)
  tree = {}
  for layer in range(layers):
    keys = jax.random.split(jax.random.fold_in(key, layer), len(shapes))
    tree[f"layer_{layer}"] = {
        name: jax.random.normal(k, shape, jnp.float32)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
  return tree


# -- the methods ---------------------------------------------------------------


def optax_fn():
  """optax.contrib.muon's orthogonalization with its defaults, per leaf, as its update does."""
  coeffs = jnp.asarray(_muon._DEFAULT_NS_COEFFS)
  dims = _muon.MuonDimensionNumbers()

  def f(tree):
    return jax.tree.map(
        lambda g: _muon.orthogonalize_via_newton_schulz(
          g, coeffs, ns_steps=5, eps=1e-8, dimension_numbers=dims
        ),
        tree,
    )

  return jax.jit(f)


def ours_fn(pol: ol.Polar):
  """``scale_by_norm`` with the unscaled spectral LMO: ``polar(g)``, same shapes batched."""
  tx = ol.scale_by_norm(ol.norms.Spectral(scaled=False, polar=pol))
  return jax.jit(lambda tree: tx.update(tree, tx.init(tree))[0])


OURS_JORDAN = ol.Polar(method="newton_schulz", coeffs="jordan", steps=5)
OURS_DEFAULT = ol.Polar()


# -- flop counts -----------------------------------------------------------------


def tree_flops(tree, pol: ol.Polar) -> int:
  return sum(_common.polar_flops(g.shape, pol) for g in jax.tree.leaves(tree))


# -- errors ----------------------------------------------------------------------


def polar_errors(out_tree, ref_tree) -> dict:
  """max |sigma - 1| over all matrices, relative Frobenius distance to U V^T, per shape."""
  num = den = 0.0
  worst = 0.0
  by_shape: dict[str, float] = {}
  for u, ref in zip(jax.tree.leaves(out_tree), jax.tree.leaves(ref_tree), strict=True):
    u64, r64 = np.asarray(u, np.float64), np.asarray(ref, np.float64)
    s = np.linalg.svd(u64, compute_uv=False)
    dev = float(np.abs(s - 1.0).max())
    worst = max(worst, dev)
    key = "x".join(map(str, u.shape))
    by_shape[key] = max(by_shape.get(key, 0.0), dev)
    num += float(np.sum((u64 - r64) ** 2))
    den += float(np.sum(r64**2))
  return {"max_abs_sigma_minus_1": worst, "rel_fro_to_UVt": math.sqrt(num / den),
          "max_abs_sigma_minus_1_by_shape": by_shape}


# -- timing ----------------------------------------------------------------------


def _time_once(f, *args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t


def matmul_probe(size: int):
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  inner = 10

  def probe() -> float:
    return min(_time_once(f, a) for _ in range(inner))

  return probe, 2 * size**3


def bench_trees(widths, layers, repeats, probe, probe_flops) -> tuple[list, list]:
  fns = {
      "optax_contrib_muon_ns": optax_fn(),
      "ours_jordan_ns": ours_fn(OURS_JORDAN),
      "ours_default": ours_fn(OURS_DEFAULT),
  }
  describe = {
      "optax_contrib_muon_ns": "optax.contrib._muon.orthogonalize_via_newton_schulz, jordan"
      " (3.4445, -4.7750, 2.0315) x 5, per leaf, jitted tree map",
      "ours_jordan_ns": "scale_by_norm(Spectral(scaled=False, polar=Polar(method='newton_schulz',"
      " coeffs='jordan', steps=5)))",
      "ours_default": "scale_by_norm(Spectral(scaled=False, polar=Polar()))  # auto, polar_express"
      " x 5, float32",
  }
  rows, mm_samples = [], []
  for d in widths:
    tree = gpt_tree(d, layers)
    ref = jax.tree.map(ol.Polar(method="svd").apply, tree)
    outs = {k: jax.block_until_ready(f(tree)) for k, f in fns.items()}  # compile + warm up
    times = {k: [] for k in fns}
    for _ in range(repeats):
      for k, f in fns.items():
        times[k].append(_time_once(f, tree))
      mm_samples.append(probe())
    flops = {
        "optax_contrib_muon_ns": tree_flops(tree, OURS_JORDAN),  # the same standard iteration
        "ours_jordan_ns": tree_flops(tree, OURS_JORDAN),
        "ours_default": tree_flops(tree, OURS_DEFAULT),
    }
    mm_rate = probe_flops / float(np.median(mm_samples[-repeats:]))
    base = float(np.median(times["optax_contrib_muon_ns"]))
    for k in fns:
      t = float(np.median(times[k]))
      rows.append({
          "width": d, "method": k, "what": describe[k], "median_s": t,
          "times_s": [float(v) for v in times[k]], "flops": flops[k],
          "flop_per_s": flops[k] / t, "fraction_of_matmul": flops[k] / t / mm_rate,
          "speedup_vs_optax": base / t, **polar_errors(outs[k], ref),
      })
    print(f"  width {d}: done", file=sys.stderr, flush=True)
  return rows, mm_samples


def bench_aspect(sizes, aspects, repeats, dtypes) -> list:
  rows = []
  for dtype in dtypes:
    std = jax.jit(lambda x, dt=dtype: ol.contrib.polar(x, method="newton_schulz", dtype=dt))
    gram = jax.jit(lambda x, dt=dtype: ol.contrib.polar(x, method="gram_newton_schulz", dtype=dt))
    for m in sizes:
      for aspect in aspects:
        n = int(round(m * aspect))
        x = jax.random.normal(jax.random.key(2), (m, n), jnp.float32)
        jax.block_until_ready((std(x), gram(x)))
        ts, tg = [], []
        for _ in range(repeats):
          ts.append(_time_once(std, x))
          tg.append(_time_once(gram, x))
        t_s, t_g = float(np.median(ts)), float(np.median(tg))
        pol_g = ol.Polar(method="gram_newton_schulz", dtype=dtype)
        rows.append({
            "dtype": jnp.dtype(dtype).name, "m": m, "n": n, "aspect": aspect,
            "standard_s": t_s, "gram_s": t_g, "gram_over_standard": t_g / t_s,
            "standard_flops": _common.polar_flops((m, n), ol.Polar(method="newton_schulz")),
            "gram_flops": _common.polar_flops((m, n), pol_g),
        })
  return rows


# -- the restart study ---------------------------------------------------------------


def _study_inputs(m, n, batch, seed=3):
  rng = np.random.default_rng(seed)

  def orth(a, b):
    return np.linalg.qr(rng.standard_normal((a, b)))[0]

  cases = {
      "gaussian": lambda: rng.standard_normal((m, n)),
      "cond_1e3": lambda: (orth(m, m) * np.logspace(0, -3, m)) @ orth(n, m).T,
      "rank_m/4": lambda: rng.standard_normal((m, m // 4)) @ rng.standard_normal((m // 4, n)),
  }
  return {k: jnp.asarray(np.stack([f() for _ in range(batch)]), jnp.float32)
          for k, f in cases.items()}


def _errors_vs(u, ref, sr) -> tuple[float, float]:
  """(max |sigma_i(u) - sigma_i(ref)|, relative Frobenius distance to ref = polar(x))."""
  u64 = np.asarray(u, np.float64)
  if not np.all(np.isfinite(u64)):
    return float("inf"), float("inf")
  su = np.linalg.svd(u64, compute_uv=False)
  return float(np.abs(su - sr).max()), float(np.linalg.norm(u64 - ref) / np.linalg.norm(ref))


def restart_study(m, n, batch, presets, dtypes) -> list:
  rows = []
  inputs = _study_inputs(m, n, batch)
  refs = {}
  for kind, x in inputs.items():
    ref = np.asarray(ol.Polar(method="svd").apply(x), np.float64)
    refs[kind] = (ref, np.linalg.svd(ref, compute_uv=False))
  for dtype in dtypes:
    for name, steps in presets:
      for kind, x in inputs.items():
        std = ol.contrib.polar(x, method="newton_schulz", coeffs=name, steps=steps, dtype=dtype)
        e_std = _errors_vs(std, *refs[kind])
        row = {"dtype": jnp.dtype(dtype).name, "coeffs": name, "steps": steps, "input": kind,
               "shape": [batch, m, n], "standard": e_std, "gram_window": {}}
        for window in range(1, steps + 1):
          u = ol.contrib.polar(x, method="gram_newton_schulz", coeffs=name, steps=steps,
                               dtype=dtype, restart_every=window)
          row["gram_window"][str(window)] = _errors_vs(u, *refs[kind])
        rows.append(row)
  return rows


# -- main ----------------------------------------------------------------------------


def print_tree_table(rows, mm_rate):
  print(f"\nplain float32 matmul: {mm_rate / 1e9:.0f} GFLOP/s (median over the run)")
  head = (f"{'width':>5} {'method':<22} {'median ms':>9} {'GFLOP':>7} {'GFLOP/s':>8} "
          f"{'% matmul':>8} {'vs optax':>8} {'max|s-1|':>8} {'rel fro':>8}")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['width']:>5} {r['method']:<22} {r['median_s'] * 1e3:>9.1f} {r['flops'] / 1e9:>7.1f}"
          f" {r['flop_per_s'] / 1e9:>8.1f} {100 * r['fraction_of_matmul']:>7.0f}%"
          f" {r['speedup_vs_optax']:>7.2f}x {r['max_abs_sigma_minus_1']:>8.3f}"
          f" {r['rel_fro_to_UVt']:>8.4f}")


def print_aspect_table(rows):
  print("\nstandard vs Gram (polar_express x 5), one m x n matrix: median ms, Gram/standard")
  for r in rows:
    print(f"  {r['dtype']:<8} m={r['m']:<4} aspect {r['aspect']:<4}"
          f" standard {r['standard_s'] * 1e3:7.1f}  gram {r['gram_s'] * 1e3:7.1f}"
          f"  ratio {r['gram_over_standard']:.2f}"
          f"  (flop ratio {r['gram_flops'] / r['standard_flops']:.2f})")


def print_study_table(rows):
  print("\nrestart study: max|sigma - sigma_ref| / rel Frobenius, standard vs Gram window w")
  for r in rows:
    cells = " | ".join(f"w{w} {e[0]:.3f}/{e[1]:.4f}" for w, e in r["gram_window"].items())
    s = r["standard"]
    print(f"  {r['dtype']:<8} {r['coeffs']:<13} {r['steps']} {r['input']:<8}"
          f" std {s[0]:.3f}/{s[1]:.4f} | {cells}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--widths", type=int, nargs="+", default=[256, 512, 768])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--repeats", type=int, default=7, help="timing rounds (median reported)")
  p.add_argument("--matmul-size", type=int, default=1024)
  p.add_argument("--aspect-sizes", type=int, nargs="*", default=[256, 512, 768])
  p.add_argument("--aspects", type=float, nargs="*", default=[1, 1.5, 2, 3, 4])
  p.add_argument("--aspect-dtypes", nargs="*", default=["float32", "bfloat16"])
  p.add_argument("--study-shape", type=int, nargs=3, default=[2, 256, 1024],
                 metavar=("BATCH", "M", "N"))
  p.add_argument("--skip", nargs="*", default=[], choices=["trees", "aspect", "study"])
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "orthogonalize.json"))
  args = p.parse_args(argv)

  probe, probe_flops = matmul_probe(args.matmul_size)
  result = {
      "device": _common.device_name(),
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "optax": optax.__version__,
      "optax_lmo": ol.__version__,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": _common.command("orthogonalize", argv),
      "auto_method": {f"{m}x{n}": ol.Polar().resolve((m, n)).method
                      for m, n in ((128, 128), (128, 256), (128, 512))},
      "gram_windows": {"full": ol.Polar(method="gram_newton_schulz").resolve((8, 16)).restart_every,
                       "reduced": ol.Polar(method="gram_newton_schulz", dtype=jnp.bfloat16)
                       .resolve((8, 16)).restart_every},
      "flop_convention": "2*m*n*k per (m,k)@(k,n) matmul actually executed; elementwise not"
      " counted. Standard step 4 m^2 n + 2 m^3; Gram: 4 m^2 n per window + 2 m^3 (4 steps -"
      " 3 windows).",
  }
  if "trees" not in args.skip:
    rows, mm_samples = bench_trees(args.widths, args.layers, args.repeats, probe, probe_flops)
    mm_rate = probe_flops / float(np.median(mm_samples))
    result["matmul"] = {"size": args.matmul_size, "dtype": "float32", "flop_per_s": mm_rate,
                        "samples_s": [float(v) for v in mm_samples]}
    result["trees"] = {"layers": args.layers, "rows": rows}
    print_tree_table(rows, mm_rate)
    widest = max(args.widths)
    by = {r["method"]: r for r in rows if r["width"] == widest}
    a, b, c = by["optax_contrib_muon_ns"], by["ours_jordan_ns"], by["ours_default"]
    result["targets"] = {
        "width": widest,
        "default_speedup_vs_optax": c["speedup_vs_optax"],
        "default_speedup_target": 3.0,
        "default_error_not_worse": bool(
            c["max_abs_sigma_minus_1"] <= a["max_abs_sigma_minus_1"] + 1e-6
            and c["rel_fro_to_UVt"] <= a["rel_fro_to_UVt"] + 1e-6),
        "standard_ns_fraction_of_matmul": b["fraction_of_matmul"],
        "standard_ns_fraction_target": 0.75,
    }
    t = result["targets"]
    print(f"\nwidth {widest}: default {t['default_speedup_vs_optax']:.2f}x optax (target 3.0x),"
          f" error not worse: {t['default_error_not_worse']};"
          f" standard NS at {100 * t['standard_ns_fraction_of_matmul']:.0f}% of matmul"
          " (target 75%)")
  if "aspect" not in args.skip:
    dtypes = [jnp.dtype(d) for d in args.aspect_dtypes]
    result["aspect_sweep"] = bench_aspect(args.aspect_sizes, args.aspects, args.repeats, dtypes)
    print_aspect_table(result["aspect_sweep"])
  if "study" not in args.skip:
    batch, m, n = args.study_shape
    presets = [("polar_express", 5), ("jordan", 5), ("polar_express", 8)]
    result["restart_study"] = restart_study(m, n, batch, presets,
                                            [jnp.dtype("float32"), jnp.dtype("bfloat16")])
    print_study_table(result["restart_study"])
  _common.write_json(result, args.out)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
