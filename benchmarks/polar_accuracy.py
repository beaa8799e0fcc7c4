"""Polar-factor accuracy and speed per matmul precision: float32, TF32 and bfloat16, both methods.

For each shape and condition number, one float32 input ``X = U diag(s) V^T``
(``U``, ``V`` orthonormal from QR of Gaussian matrices, ``s`` log-spaced from 1
down to ``1 / cond``, full rank) goes through:

* ours, ``ol.contrib.polar`` with ``method="newton_schulz"`` and
  ``"gram_newton_schulz"`` (default coefficients, polar_express x 5), at three
  settings: ``float32`` (float32 iterate, ``precision="highest"``), ``tf32``
  (float32 iterate, ``precision=None``: the backend's default, TF32 on recent
  NVIDIA GPUs; exact float32 on CPU, where these rows repeat ``float32``) and
  ``bfloat16`` (bfloat16 iterate, ``precision=None``);
* ``optax.contrib._muon.orthogonalize_via_newton_schulz`` (its defaults: jordan
  coefficients x 5, Frobenius normalization), under
  ``jax.default_matmul_precision("highest")`` (``float32``) and the default
  (``tf32``).

Errors are measured in float64 NumPy against the float64 SVD of the float32
input ``X = U_r S_r V_r^T`` (``k = min(m, n)`` singular triples, all nonzero, so
every direction matters):

* ``rel_fro``: ``||Q - U_r V_r^T||_F / ||U_r V_r^T||_F`` for the result ``Q``;
* ``sigma_min``, ``sigma_max``, ``max_abs_sigma_minus_1``: the ``k`` singular
  values of ``Q`` (square roots of the eigenvalues of its ``k x k`` Gram matrix);
* ``max_abs_gain_minus_1``: ``max_i |u_i^T Q v_i - 1|`` over the input's
  singular pairs (what the iteration mapped each input singular value to);
* ``exact_arith_rel_fro``: ``rel_fro`` of the same polynomial in exact
  arithmetic (``U_r p(S_r) V_r^T``): the iteration's own error, which no
  precision removes (polar_express x 5 leaves small singular values short of 1);
* ``rounding_rel_fro``: ``||Q - U_r p(S_r) V_r^T||_F / ||U_r V_r^T||_F``: what
  rounding adds on top of it;
* ``finite``: no NaN or Inf in ``Q`` (when false the error fields are ``null``).

Time: median over ``--reps`` rounds of ``--inner`` back-to-back jitted calls
(one wait at the end of each round), divided by ``--inner``; FLOPs as in
``benchmarks._common.polar_flops``. A plain ``--matmul-size`` square matmul per
setting gives the rate to compare with.

Usage, from the repository root::

  python -m benchmarks.polar_accuracy [--shapes 512x128 768x768] [--conds 1 1e2] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import _muon

import optax_lmo as ol
from benchmarks import _common  # run from the repository root: python -m benchmarks.polar_accuracy

# label -> (iterate dtype, precision passed to ol.contrib.polar / optax's default matmul precision)
SETTINGS = {
    "float32": (jnp.float32, "highest"),
    "tf32": (jnp.float32, None),
    "bfloat16": (jnp.bfloat16, None),
}
OURS = ("newton_schulz", "gram_newton_schulz")
OPTAX_SETTINGS = ("float32", "tf32")
SHAPES = ("512x128", "768x768", "768x3072", "3072x768")
CONDS = (1.0, 1e2, 1e3, 1e4)


# -- inputs and errors ---------------------------------------------------------------------------


def make_input(m: int, n: int, cond: float, seed: int) -> np.ndarray:
  """A float32 ``m x n`` matrix with singular values log-spaced over ``[1 / cond, 1]``."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal((m, k)))[0]
  v = np.linalg.qr(rng.standard_normal((n, k)))[0]
  s = np.logspace(0.0, -np.log10(cond), k)
  return ((u * s) @ v.T).astype(np.float32)


def reference(x: np.ndarray) -> dict:
  """The float64 SVD of ``x`` (as given, float32 values) and its polar factor."""
  u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  return {"u": u, "s": s, "v": vt.T, "polar": u @ vt}


def errors(q, ref: dict, coeffs: ol.Polar) -> dict:
  """The error fields of the module docstring for result ``q`` against ``ref``."""
  q = np.asarray(jnp.asarray(q, jnp.float32), np.float64)
  bad = int(np.size(q) - np.count_nonzero(np.isfinite(q)))
  if bad:
    keys = ("rel_fro", "sigma_min", "sigma_max", "max_abs_sigma_minus_1", "max_abs_gain_minus_1",
            "rounding_rel_fro")
    return {"finite": False, "nonfinite_count": bad, **dict.fromkeys(keys)}
  u, v, s, p = ref["u"], ref["v"], ref["s"], ref["polar"]
  norm = np.linalg.norm(p)
  short = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
  sigma = np.sqrt(np.clip(np.linalg.eigvalsh(short), 0.0, None))
  gain = np.einsum("ik,ik->k", u, q @ v)
  ideal = coeffs.composed(s / np.linalg.norm(s))  # exact arithmetic on the normalized input
  return {
      "finite": True,
      "nonfinite_count": 0,
      "rel_fro": float(np.linalg.norm(q - p) / norm),
      "sigma_min": float(sigma.min()),
      "sigma_max": float(sigma.max()),
      "max_abs_sigma_minus_1": float(np.abs(sigma - 1.0).max()),
      "max_abs_gain_minus_1": float(np.abs(gain - 1.0).max()),
      "rounding_rel_fro": float(np.linalg.norm(q - (u * ideal) @ v.T) / norm),
  }


def exact_arith_rel_fro(ref: dict, coeffs: ol.Polar) -> float:
  """``rel_fro`` of the composed polynomial applied in exact arithmetic."""
  s = ref["s"]
  return float(np.linalg.norm(coeffs.composed(s / np.linalg.norm(s)) - 1.0) / np.sqrt(s.size))


# -- the methods ---------------------------------------------------------------------------------


def ours_fn(method: str, setting: str):
  dtype, precision = SETTINGS[setting]
  pol = ol.Polar(method=method, dtype=dtype, precision=precision)
  return jax.jit(pol.apply), pol


def optax_fn(setting: str):
  """optax.contrib's Newton–Schulz, traced and run under the setting's default precision."""
  coeffs = jnp.asarray(_muon._DEFAULT_NS_COEFFS)
  f = jax.jit(lambda x: _muon.orthogonalize_via_newton_schulz(x, coeffs, ns_steps=5, eps=1e-8))
  precision = SETTINGS[setting][1]

  def call(x):
    if precision is None:
      return f(x)
    with jax.default_matmul_precision(precision):
      return f(x)

  return call


OPTAX_POLAR = ol.Polar(method="newton_schulz", coeffs="jordan", steps=5)  # the same iteration


# -- timing --------------------------------------------------------------------------------------


def time_fn(f, x, reps: int, inner: int) -> list[float]:
  """Seconds per call: ``reps`` rounds of ``inner`` back-to-back calls, one wait each."""
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(inner):
      y = f(x)
    jax.block_until_ready(y)
    out.append((time.perf_counter() - t0) / inner)
  return out


def matmul_rates(size: int, reps: int) -> dict:
  """FLOP/s of one ``size x size`` matmul per setting (bfloat16: bfloat16 inputs)."""
  rates = {}
  for label, (dtype, precision) in SETTINGS.items():
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    f = jax.jit(lambda a, p=precision: jnp.matmul(a, a, precision=p,
                                                  preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    rates[label] = 2 * size**3 / float(np.median(time_fn(f, a, reps, 5)))
  return rates


# -- main ----------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, int]:
  m, n = text.lower().split("x")
  return int(m), int(n)


def precision_note(backend: str) -> str:
  if backend == "cpu":
    return ("backend cpu: precision=None is exact float32 matmul here, so the 'tf32' rows repeat"
            " the 'float32' rows (no TF32 on CPU)")
  return (f"backend {backend}: 'tf32' is precision=None, the backend's default for float32"
          " matmuls (TF32 tensor cores on NVIDIA Ampere and newer); 'float32' is"
          " precision='highest'. The Gram iteration's m x m products that carry the Gram matrix"
          " run at 'highest' when precision=None (see optax_lmo/_src/polar.py)")


def run(args) -> dict:
  shapes = [parse_shape(s) for s in args.shapes]
  default = ol.Polar()  # the coefficients of ours (their composed polynomial)
  jordan = ol.Polar(coeffs="jordan")
  fns = {}  # (impl, method, setting) -> (callable, Polar describing its flops, coefficients)
  for method in OURS:
    for setting in SETTINGS:
      f, pol = ours_fn(method, setting)
      fns["ours", method, setting] = (f, pol, default)
  for setting in OPTAX_SETTINGS:
    fns["optax_contrib", "newton_schulz", setting] = (optax_fn(setting), OPTAX_POLAR, jordan)

  rows, auto = [], {}
  for m, n in shapes:
    for setting, (dtype, precision) in SETTINGS.items():
      auto[f"{m}x{n}/{setting}"] = ol.Polar(dtype=dtype, precision=precision).resolve(
          (m, n)).method
    for ci, cond in enumerate(args.conds):
      x_np = make_input(m, n, cond, seed=args.seed + 1000 * ci + m + n)
      ref = reference(x_np)
      x = jnp.asarray(x_np)
      exact = {"ours": exact_arith_rel_fro(ref, default),
               "optax_contrib": exact_arith_rel_fro(ref, jordan)}
      outs = {key: jax.block_until_ready(f(x)) for key, (f, _, _) in fns.items()}  # compiles
      times = {key: time_fn(f, x, args.reps, args.inner) for key, (f, _, _) in fns.items()}
      for key, (_, pol, coeffs) in fns.items():
        impl, method, setting = key
        t = float(np.median(times[key]))
        flops = _common.polar_flops((m, n), pol)
        rows.append({
            "impl": impl, "method": method, "setting": setting,
            "dtype": jnp.dtype(SETTINGS[setting][0]).name,
            "precision": SETTINGS[setting][1] or "default",
            "coeffs": coeffs.coeffs, "steps": coeffs.resolve((m, n)).steps,
            "shape": [m, n], "cond": cond,
            **errors(outs[key], ref, coeffs),
            "exact_arith_rel_fro": exact[impl],
            "median_s": t, "times_s": times[key], "flops": flops, "flop_per_s": flops / t,
        })
      print(f"  {m}x{n} cond {cond:g}: done", file=sys.stderr, flush=True)
  return {"rows": rows, "auto_method": auto}


def print_table(res: dict) -> None:
  print(f"\n{res['device']}; {res['precision_note']}")
  print(f"matmul rates (TFLOP/s, {res['matmul']['size']}^2): " + ", ".join(
      f"{k} {v / 1e12:.2f}" for k, v in res["matmul"]["flop_per_s"].items()))
  head = (f"{'shape':>9} {'cond':>6} {'impl':<13} {'method':<18} {'setting':<8} {'rel fro':>8}"
          f" {'rounding':>8} {'max|s-1|':>8} {'median us':>9}")
  print(head)
  print("-" * len(head))
  for r in res["rows"]:
    def cell(v):
      return f"{v:8.4f}" if v is not None else f"{'NaN/Inf':>8}"

    print(f"{'x'.join(map(str, r['shape'])):>9} {r['cond']:>6.0e} {r['impl']:<13}"
          f" {r['method']:<18} {r['setting']:<8} {cell(r['rel_fro'])}"
          f" {cell(r['rounding_rel_fro'])} {cell(r['max_abs_sigma_minus_1'])}"
          f" {r['median_s'] * 1e6:9.1f}")
  bad = [r for r in res["rows"] if not r["finite"]]
  print(f"\nnon-finite results: {len(bad)}" + "".join(
      f"\n  {r['impl']} {r['method']} {r['setting']} {r['shape']} cond {r['cond']:g}"
      for r in bad))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", nargs="+", default=list(SHAPES), help="MxN, e.g. 512x128")
  p.add_argument("--conds", type=float, nargs="+", default=list(CONDS))
  p.add_argument("--reps", type=int, default=15, help="timing rounds (median reported)")
  p.add_argument("--inner", type=int, default=10, help="back-to-back calls per round")
  p.add_argument("--matmul-size", type=int, default=4096)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(_common.RESULTS, "polar_accuracy.json"))
  args = p.parse_args(argv)

  backend = jax.default_backend()
  res = {
      "benchmark": "polar_accuracy",
      "device": _common.device_name(),
      "backend": backend,
      "jax": jax.__version__,
      "optax": optax.__version__,
      "optax_lmo": ol.__version__,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": _common.command("polar_accuracy", argv),
      "tf32_is_float32": backend == "cpu",
      "precision_note": precision_note(backend),
      "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
      "settings": {k: {"dtype": jnp.dtype(d).name, "precision": p or "default"}
                   for k, (d, p) in SETTINGS.items()},
      "input": "float32 U diag(s) V^T, U and V orthonormal (QR of Gaussian), s log-spaced from"
      " 1 to 1/cond, full rank",
      "errors": "against the float64 SVD of the float32 input: rel_fro = ||Q - U V^T||_F /"
      " ||U V^T||_F; sigma_* = all min(m, n) singular values of Q; max_abs_gain_minus_1 ="
      " max_i |u_i^T Q v_i - 1| over the input's singular pairs; exact_arith_rel_fro = rel_fro of"
      " the same polynomial in exact arithmetic; rounding_rel_fro = ||Q - U p(S) V^T||_F /"
      " ||U V^T||_F; error fields are null when Q holds NaN or Inf (finite = false)",
      "timing": f"median over {args.reps} rounds of {args.inner} back-to-back jitted calls",
      "matmul": {"size": args.matmul_size, "flop_per_s": matmul_rates(args.matmul_size, 5)},
  }
  res.update(run(args))
  res["nonfinite"] = [{k: r[k] for k in ("impl", "method", "setting", "shape", "cond")}
                      for r in res["rows"] if not r["finite"]]
  print_table(res)
  _common.write_json(res, args.out)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
