"""AOL-preconditioned Newton–Schulz at 4 steps against Polar Express and Jordan at 5, and optax's.

Each shape gets four float32 inputs: a Gaussian matrix, singular values log-spaced over
condition 1e2 and 1e3 (``U diag(s) V^T``, ``U``, ``V`` from QR of Gaussian matrices), and a
gradient-like spectrum ``s_k = 1/k``. Every method runs on each, jitted:

* ours, ``ol.Polar(method="newton_schulz", ...)``: ``polar_express`` x 5 (the default),
  ``coeffs="aol"`` x 4 with ``preconditioning="aol"``, ``polar_express`` x 5 with AOL,
  ``jordan`` x 5; on wide shapes (aspect >= 2) also the Gram iteration of the first two
  (what ``method="auto"`` takes there on CPU);
* optax's own function, ``optax.contrib._muon.orthogonalize_via_newton_schulz``, with its
  default coefficients (jordan) at 5 steps, with ``preconditioning="frobenius"`` and
  ``"aol"``, and ``"aol"`` at 4 steps.

Errors against the float64 SVD ``G = U S V^T`` of the input: ``rel_fro`` =
``||Q - U V^T||_F / ||U V^T||_F``; ``max_abs_sigma_minus_1`` over the singular values of
``Q`` (how far from orthogonal); ``dual`` = ``<G, Q> / ||G||_nuc`` (how much of the
steepest-descent gain the direction keeps; 1 for the polar factor). AOL's row scaling
makes the iteration converge to ``polar(diag(s) G)``: ``rel_fro`` sees that bias where
``max_abs_sigma_minus_1`` does not.

Time: per shape, on the Gaussian input, ``--reps`` rounds in which every method runs
``--inner`` back-to-back calls (one wait each), the methods interleaved within a round so
that load on a shared machine hits them alike; the median per call, and its ratio to
Polar Express x 5 (``newton_schulz``) measured in the same rounds.

Usage, from the repository root::

  python -m benchmarks.polar_aol [--shapes 128x128 768x3072] [--reps 9] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import _muon

import optax_lmo as ol
from benchmarks import _common

SHAPES = ("128x128", "128x512", "512x512", "768x3072")
INPUTS = ("gaussian", "cond 1e2", "cond 1e3", "1/k")
JORDAN = (3.4445, -4.7750, 2.0315)
NS = "newton_schulz"
BASE = "polar_express x5"


def methods(m: int, n: int) -> dict:
  """label -> a jitted function of one matrix."""
  ours = {
      BASE: ol.Polar(method=NS),
      "aol x4": ol.Polar(method=NS, coeffs="aol", preconditioning="aol"),
      "aol + polar_express x5": ol.Polar(method=NS, preconditioning="aol"),
      "jordan x5": ol.Polar(method=NS, coeffs="jordan", steps=5),
  }
  if max(m, n) >= 2 * min(m, n):  # where method="auto" takes the Gram iteration on CPU
    ours["polar_express x5 (gram)"] = ol.Polar(method="gram_newton_schulz")
    ours["aol x4 (gram)"] = ol.Polar(method="gram_newton_schulz", coeffs="aol",
                                     preconditioning="aol")
  out = {k: jax.jit(p.apply) for k, p in ours.items()}
  coeffs = jnp.asarray(JORDAN)
  for label, pre, steps in (("optax jordan x5", "frobenius", 5),
                            ("optax aol jordan x5", "aol", 5),
                            ("optax aol jordan x4", "aol", 4)):
    out[label] = jax.jit(lambda x, pre=pre, steps=steps: _muon.orthogonalize_via_newton_schulz(
        x, coeffs, steps, pre))
  return out


def make_input(kind: str, m: int, n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "gaussian":
    return rng.standard_normal((m, n)).astype(np.float32)
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal((m, k)))[0]
  v = np.linalg.qr(rng.standard_normal((n, k)))[0]
  s = 1.0 / np.arange(1, k + 1) if kind == "1/k" else np.logspace(0, -float(kind[-1]), k)
  return ((u * s) @ v.T).astype(np.float32)


def errors(q, g: np.ndarray, ref: dict) -> dict:
  q = np.asarray(q, np.float64)
  if not np.all(np.isfinite(q)):
    return {"finite": False, "rel_fro": None, "max_abs_sigma_minus_1": None, "dual": None}
  sigma = np.linalg.svd(q, compute_uv=False)
  return {"finite": True,
          "rel_fro": float(np.linalg.norm(q - ref["polar"]) / np.linalg.norm(ref["polar"])),
          "max_abs_sigma_minus_1": float(np.abs(sigma - 1).max()),
          "dual": float(np.sum(g.astype(np.float64) * q) / ref["nuclear"])}


def time_rounds(fns: dict, x, reps: int, inner: int) -> dict:
  """Seconds per call of each function: ``reps`` rounds, the functions interleaved."""
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, f in fns.items():
      t0 = time.perf_counter()
      for _ in range(inner):
        y = f(x)
      jax.block_until_ready(y)
      times[k].append((time.perf_counter() - t0) / inner)
  return times


def run(args) -> list[dict]:
  rows = []
  for shape in args.shapes:
    m, n = map(int, shape.lower().split("x"))
    fns = methods(m, n)
    xs = {kind: make_input(kind, m, n, args.seed + i) for i, kind in enumerate(INPUTS)}
    for x in xs.values():  # compile every method at this shape
      jax.block_until_ready([f(jnp.asarray(x)) for f in fns.values()])
      break
    times = time_rounds(fns, jnp.asarray(xs["gaussian"]), args.reps, args.inner)
    base = float(np.median(times[BASE]))
    for kind, x in xs.items():
      u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
      ref = {"polar": u @ vt, "nuclear": float(s.sum())}
      for label, f in fns.items():
        t = float(np.median(times[label]))
        rows.append({"shape": [m, n], "input": kind, "method": label,
                     **errors(f(jnp.asarray(x)), x, ref),
                     "median_s": t, "time_vs_base": t / base, "times_s": times[label]})
    print(f"  {shape}: done", flush=True)
  return rows


def markdown(rows: list[dict]) -> str:
  """One line per shape and method: the error on each input, the time and its ratio."""
  lines = ["| shape | method | " + " | ".join(f"rel. error, {k}" for k in INPUTS)
           + " | max abs(sigma - 1), gaussian | median ms | time / polar_express x5 |",
           "|---|---|" + "---|" * (len(INPUTS) + 3)]
  by = {(tuple(r["shape"]), r["method"], r["input"]): r for r in rows}
  seen = []
  for r in rows:
    key = (tuple(r["shape"]), r["method"])
    if key in seen:
      continue
    seen.append(key)
    cells = [f"{by[key + (k,)]['rel_fro']:.3f}" if by[key + (k,)]["finite"] else "NaN"
             for k in INPUTS]
    g = by[key + ("gaussian",)]
    sig = f"{g['max_abs_sigma_minus_1']:.3f}" if g["finite"] else "NaN"
    lines.append(f"| {key[0][0]}x{key[0][1]} | {key[1]} | " + " | ".join(cells)
                 + f" | {sig} | {g['median_s'] * 1e3:.2f} | {g['time_vs_base']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", nargs="+", default=list(SHAPES), help="MxN, e.g. 128x512")
  p.add_argument("--reps", type=int, default=9, help="timing rounds (median reported)")
  p.add_argument("--inner", type=int, default=3, help="back-to-back calls per round")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "polar_aol.json"))
  args = p.parse_args(argv)
  rows = run(args)
  res = {"benchmark": "polar_aol", "device": _common.device_name(), "jax": jax.__version__,
         "optax": optax.__version__, "optax_lmo": ol.__version__,
         "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
         "command": _common.command("polar_aol", argv),
         "timing": f"median over {args.reps} interleaved rounds of {args.inner} back-to-back"
                   " jitted calls on the Gaussian input",
         "rows": rows}
  table = markdown(rows)
  print(f"\n{res['device']}\n\n{table}")
  _common.write_json(res, args.out)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(table)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
