"""What one Muon update costs on 8 devices: collectives, bytes, flops, compile time.

Compiles (never runs) one optimizer step ``update + apply_updates`` for
GPT-shaped parameter trees (per layer: qkv ``(d, 3d)``, attention out
``(d, d)``, MLP in ``(d, 4d)``, MLP out ``(4d, d)``, Flax layout), every
matrix sharded ``P('fsdp')`` over a 1-D mesh of 8 simulated CPU devices, and
reads from the compiled HLO:

- ``coll``: collective ops; ``in_loop``: those inside a ``while`` body (the
  Newton–Schulz loop);
- ``bytes/mat``: summed per-device output bytes of all collectives over the
  bytes of the matrices;
- ``flops/ideal``: per-device flops (``compiled.cost_analysis()``, which counts
  a loop body once and a ``cond`` at its dearer branch) over single-device
  flops / 8. On CPU the polar factor runs a stack's matrices one at a time in
  a ``lax.map`` loop, so the single-device count sees one matrix per shape and
  this ratio overstates the per-device share about ``depth``-fold (and it counts
  both branches of the ``cond`` that lets a device holding only padding skip the
  work; how evenly the owners share it is tested in ``tests/test_sharding.py``);
- ``compile_s``: lowering plus compilation;
- ``exchange`` (ours only): for the matrices sent to their owners and back in
  float32 and in bfloat16 (``exchange_dtype``), the collectives' bytes per
  device and the relative error of the sharded update against the
  single-device one (this step is run: parameters 0, gradients N(0, 1), so the
  new parameters are the update; the error is the largest over leaves of
  ``||u - u_1||_F / ||u_1||_F``).

``ours`` is ``optax_lmo.muon``; ``optax`` is ``optax.contrib.muon`` (its
default unrolls the five Newton–Schulz steps, so its HLO has no loop to count
in; ``optax-scan`` gives the same coefficients as a table, which optax runs in a
``lax.scan``). All on an
``AxisType.Auto`` mesh and on an ``AxisType.Explicit`` one (where optax's
raises; the error is recorded). Prints a table and writes
``benchmarks/results/sharding.json``.

Usage, from the repository root:
``python -m benchmarks.sharding [--widths 256 512] [--depths 4 8]``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

# Run from the repository root as `python -m benchmarks.sharding` (benchmarks/ and scripts/
# are then importable).
import optax_lmo as ol  # noqa: E402
from benchmarks import _common  # noqa: E402
from scripts.hlo_collectives import hlo_collectives  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "sharding.json"
N_DEVICES = 8


def gpt_shapes(width: int, depth: int) -> dict:
  """Hidden matrices of a GPT in Flax layout, as ``{path: (d_in, d_out)}`` per layer."""
  d = width
  layer = {
      "attn": {"qkv": {"kernel": (d, 3 * d)}, "proj": {"kernel": (d, d)}},
      "mlp": {"fc": {"kernel": (d, 4 * d)}, "proj": {"kernel": (4 * d, d)}},
  }
  return {"blocks": {str(i): layer for i in range(depth)}}


def abstract(shapes: dict, sharding) -> dict:
  is_shape = lambda x: isinstance(x, tuple)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding), shapes, is_leaf=is_shape
  )


OPTIMIZERS = ("ours", "optax", "optax-scan")
JORDAN = (3.4445, -4.7750, 2.0315)


EXCHANGE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def make_tx(name: str, exchange_dtype=None):
  if name == "ours":
    return ol.muon(0.02, exchange_dtype=exchange_dtype)
  if name == "optax":  # the default: five Newton–Schulz steps, unrolled (no loop in HLO)
    return optax.contrib.muon(0.02)
  # The same steps as a (5, 3) table: optax runs them in a lax.scan (a while loop).
  return optax.contrib.muon(0.02, ns_coeffs=jnp.array([JORDAN] * 5))


def step_fn(tx):
  def step(params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def state_shardings(tx, params, matrix_sharding, scalar_sharding):
  """The optimizer state's shardings: leaves shaped like a parameter as the matrices."""
  shapes = {p.shape for p in jax.tree.leaves(params)}
  return jax.tree.map(
      lambda s: matrix_sharding if s.shape in shapes else scalar_sharding,
      jax.eval_shape(tx.init, params),
  )


def compile_step(tx, params, matrix_sharding, scalar_sharding):
  """Compiled step and the seconds it took; state leaves sharded like the params."""
  state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      jax.eval_shape(tx.init, params),
      state_shardings(tx, params, matrix_sharding, scalar_sharding),
  )
  t0 = time.perf_counter()
  compiled = jax.jit(step_fn(tx)).lower(params, params, state).compile()
  return compiled, time.perf_counter() - t0


def concrete(shapes: dict, seed: int) -> dict:
  """N(0, 1) arrays of ``shapes`` (``{path: (d_in, d_out)}``), float32, on the host."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  rng = np.random.default_rng(seed)
  return treedef.unflatten([rng.standard_normal(s).astype(np.float32) for s in leaves])


def run_update(compiled, tx, grads, matrix_sharding, scalar_sharding) -> dict:
  """The update a compiled step makes from parameters 0 (so the new parameters are it)."""
  zeros = jax.tree.map(np.zeros_like, grads)
  state = jax.device_put(
      tx.init(zeros), state_shardings(tx, zeros, matrix_sharding, scalar_sharding)
  )
  put = lambda t: jax.device_put(t, matrix_sharding)
  return jax.device_get(compiled(put(zeros), put(grads), state)[0])


def rel_err(u: dict, ref: dict) -> float:
  """Largest over leaves of ``||u - ref||_F / ||ref||_F``."""
  errs = jax.tree.map(lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b)), u, ref)
  return max(jax.tree.leaves(errs))


def flops_of(compiled) -> float:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca.get("flops", 0.0))


def run_case(
    name: str, width: int, depth: int, axis_type, single_flops: dict, single_updates: dict
) -> dict:
  shapes = gpt_shapes(width, depth)
  mat_bytes = 4 * sum(
      a * b for a, b in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
  )
  mesh = jax.make_mesh((N_DEVICES,), ("fsdp",), axis_types=(axis_type,))
  row = {
      "optimizer": name,
      "width": width,
      "depth": depth,
      "mesh": axis_type.name,
      "matrix_bytes": mat_bytes,
  }
  key = (name, width, depth)
  if key not in single_flops:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    compiled, _ = compile_step(make_tx(name), abstract(shapes, dev), dev, dev)
    single_flops[key] = flops_of(compiled)
  fsdp, rep = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P())
  try:
    with jax.set_mesh(mesh):
      compiled, secs = compile_step(make_tx(name), abstract(shapes, fsdp), fsdp, rep)
  except Exception as e:  # noqa: BLE001  (recorded, e.g. ShardingTypeError)
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row
  stats = hlo_collectives(compiled.as_text())
  flops = flops_of(compiled)
  out_specs = {str(s.spec) for s in jax.tree.leaves(compiled.output_shardings[0])}
  row.update(
      collectives=stats["count"],
      in_loop=stats["in_loops"],
      ops=stats["ops"],
      collective_bytes=stats["bytes"],
      bytes_over_matrices=stats["bytes"] / mat_bytes,
      flops_per_device=flops,
      flops_single=single_flops[key],
      flops_over_ideal=flops / (single_flops[key] / N_DEVICES),
      compile_s=secs,
      param_out_specs=sorted(out_specs),
  )
  if name == "ours":
    row["exchange"] = exchange_case(shapes, mesh, compiled, stats, single_updates, key)
  return row


def exchange_case(shapes, mesh, compiled_f32, stats_f32, single_updates, key) -> dict:
  """Bytes and error of ours with the float32 and the bfloat16 exchange."""
  grads = concrete(shapes, seed=0)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if key not in single_updates:
    tx = make_tx("ours")
    compiled, _ = compile_step(tx, abstract(shapes, dev), dev, dev)
    single_updates[key] = run_update(compiled, tx, grads, dev, dev)
  mat_bytes = 4 * sum(x.size for x in jax.tree.leaves(grads))
  fsdp, rep = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P())
  out = {}
  for label, dtype in EXCHANGE_DTYPES.items():
    tx = make_tx("ours", dtype)
    if dtype is None:
      compiled, stats = compiled_f32, stats_f32
    else:
      with jax.set_mesh(mesh):
        compiled, _ = compile_step(tx, abstract(shapes, fsdp), fsdp, rep)
      stats = hlo_collectives(compiled.as_text())
    with jax.set_mesh(mesh):
      u = run_update(compiled, tx, grads, fsdp, rep)
    out[label] = {
        "collective_bytes": stats["bytes"],
        "bytes_over_matrices": stats["bytes"] / mat_bytes,
        "op_dtypes": stats["op_dtypes"],
        "rel_err": rel_err(u, single_updates[key]),
    }
  out["bfloat16_bytes_over_float32"] = (
      out["bfloat16"]["collective_bytes"] / out["float32"]["collective_bytes"]
  )
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--widths", type=int, nargs="+", default=[256, 512], help="model widths d")
  ap.add_argument("--depths", type=int, nargs="+", default=[4, 8], help="numbers of layers")
  ap.add_argument("--out", type=pathlib.Path, default=RESULTS, help="JSON output path")
  args = ap.parse_args()
  assert jax.device_count() == N_DEVICES, jax.devices()
  rows, single, single_updates = [], {}, {}
  for width in args.widths:
    for depth in args.depths:
      for axis_type in (AxisType.Auto, AxisType.Explicit):
        for name in OPTIMIZERS:
          rows.append(run_case(name, width, depth, axis_type, single, single_updates))
          print_row(rows[-1], header=len(rows) == 1)
  meta = {
      "command": _common.command("sharding", None),
      "devices": N_DEVICES,
      "platform": jax.devices()[0].platform,
      "jax": jax.__version__,
      "optax": optax.__version__,
      "sharding": "P('fsdp') on every matrix, 1-D mesh of 8",
      "targets": {"in_loop": 0, "bytes_over_matrices": 0.5, "flops_over_ideal_depth8": 1.3,
                  "bfloat16_bytes_over_float32": 0.5},
      "exchange_error": "max over leaves of ||u - u_1||_F / ||u_1||_F, u_1 the single-device"
                        " update, parameters 0, gradients N(0, 1)",
  }
  _common.write_json({"meta": meta, "rows": rows}, str(args.out))
  print(f"wrote {args.out}")


def print_row(r: dict, header: bool = False):
  cols = ("optimizer width depth mesh coll in_loop bytes/mat flops/ideal compile_s"
          " bf16/f32 err_f32 err_bf16").split()
  if header:
    print(" ".join(f"{c:>11}" for c in cols))
  if "error" in r:
    vals = [r["optimizer"], r["width"], r["depth"], r["mesh"]]
    print(" ".join(f"{v!s:>11}" for v in vals), " ", r["error"][:70])
    return
  vals = [
      r["optimizer"],
      r["width"],
      r["depth"],
      r["mesh"],
      r["collectives"],
      r["in_loop"],
      f"{r['bytes_over_matrices']:.3f}",
      f"{r['flops_over_ideal']:.2f}",
      f"{r['compile_s']:.1f}",
  ]
  if "exchange" in r:
    x = r["exchange"]
    vals += [f"{x['bfloat16_bytes_over_float32']:.3f}", f"{x['float32']['rel_err']:.1e}",
             f"{x['bfloat16']['rel_err']:.1e}"]
  print(" ".join(f"{v!s:>11}" for v in vals), flush=True)


if __name__ == "__main__":
  main()
