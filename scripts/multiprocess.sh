#!/usr/bin/env bash
# Two processes x 4 CPU devices: one distributed update through jax.distributed.
#
# Starts two JAX processes on a loopback coordinator (gloo collectives on CPU),
# builds a global 8-device mesh, and checks that one optax_lmo update on
# P('fsdp')-sharded matrices (Auto and Explicit meshes) equals the
# single-device update, keeps each leaf's sharding, and has no collective
# inside the Newton–Schulz loop. Exits non-zero on any failure.
#
# Usage: scripts/multiprocess.sh [PORT]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PORT="${1:-$(( 20000 + RANDOM % 20000 ))}"
WORKER="$(mktemp --suffix=.py)"
LOGS="$(mktemp -d)"
trap 'rm -rf "$WORKER" "$LOGS"' EXIT

cat > "$WORKER" <<'PYEOF'
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 4)
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_lmo as ol  # noqa: E402
from optax_lmo._src import distributed  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
rng = np.random.default_rng(0)  # same data in both processes
grads = {
    "qkv": rng.standard_normal((32, 96), np.float32),
    "out": rng.standard_normal((32, 32), np.float32),
    "layers": rng.standard_normal((3, 32, 64), np.float32),
    "bias": rng.standard_normal((32,), np.float32),
}
nrm = ol.norms
tx = optax.chain(
    ol.momentum(0.5, nesterov=True),
    ol.scale_by_norm(
        {"qkv": nrm.Spectral(), "out": nrm.Spectral(), "layers": nrm.Spectral(),
         "bias": nrm.BiasRMS()},
        specs={"qkv": None, "out": None, "layers": ol.MatrixSpec((1,), (2,)), "bias": None},
    ),
)
local = jax.local_devices()[0]
ref = jax.device_get(jax.jit(lambda g: tx.update(g, tx.init(g))[0])(jax.device_put(grads, local)))

for at in (AxisType.Auto, AxisType.Explicit):
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(at,))

  def spec(x):
    return {1: P(), 2: P("fsdp"), 3: P(None, "fsdp")}[x.ndim]

  g = {
      k: jax.make_array_from_callback(v.shape, NamedSharding(mesh, spec(v)), lambda i, v=v: v[i])
      for k, v in grads.items()
  }
  with jax.set_mesh(mesh):
    compiled = jax.jit(lambda g: tx.update(g, tx.init(g))[0]).lower(g).compile()
    u = compiled(g)
  stats = distributed.hlo_collectives(compiled.as_text())
  assert stats["in_loops"] == 0 and stats["ops"].get("all-to-all", 0) > 0, stats
  for k, v in u.items():
    assert v.sharding.is_equivalent_to(g[k].sharding, v.ndim), (k, v.sharding)
    for shard in v.addressable_shards:
      want = ref[k][shard.index]
      err = np.max(np.abs(np.asarray(shard.data) - want)) / np.max(np.abs(ref[k]))
      assert err < 1e-4, (at, k, err)
  print(f"process {pid} {at.name}: ok, collectives {stats['ops']}, none in loops", flush=True)
jax.distributed.shutdown()
PYEOF

PIDS=()
for id in 0 1; do
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu \
    timeout 300 "$PY" "$WORKER" "$PORT" "$id" > "$LOGS/$id.log" 2>&1 &
  PIDS+=($!)
done
status=0
for id in 0 1; do
  wait "${PIDS[$id]}" || status=$?
  grep -v -e '^W[0-9]' -e '^I[0-9]' -e '^\[Gloo\]' "$LOGS/$id.log" || true
done
if [ "$status" -ne 0 ]; then
  echo "multiprocess check FAILED (exit $status)" >&2
  exit "$status"
fi
echo "multiprocess check passed: 2 processes x 4 devices"
