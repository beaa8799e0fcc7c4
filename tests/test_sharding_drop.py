"""Randomized layer updates on a mesh: dropped matrices skip their polar factor on their owners.

A sampled spectral leaf (one with a keep bit, as :func:`~optax_lmo.contrib.drop_leaves`
passes it) goes through the whole-matrix exchange like the others; its owner
runs the polar factor under a ``lax.cond`` on the bit. Checked here: with a
fixed keep pattern the sharded update equals the single-device one (dropped
leaves zero, kept ones the full update), the compiled owner program has every
matmul inside a conditional and no collective inside a loop, and the aliases
with ``keep_prob`` (also injected) take the same steps on a mesh as on one
device.

The mesh needs 8 simulated CPU devices, so the module runs itself as a
subprocess (``python tests/test_sharding_drop.py --worker``) that prints one
JSON object; see ``tests/test_sharding.py``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _simulated import run_worker

N_DEVICES = 8
# Relative to the largest entry of a kept leaf: float32 Newton–Schulz on batches
# of another size sums in another order (~1e-5); a shard orthogonalized on its own
# would be off by O(1).
TOL = 1e-4
# (name, mesh shape, mesh axes, spec of a 2-D leaf, spec of the (L, d_in, d_out) leaf)
LAYOUTS = (
    ("fsdp", (8,), ("fsdp",), ("fsdp", None), (None, "fsdp", None)),
    ("fsdp_tp", (4, 2), ("fsdp", "tp"), ("fsdp", "tp"), (None, "fsdp", "tp")),
    ("layers_tp", (4, 2), ("fsdp", "tp"), (None, "tp"), ("fsdp", None, "tp")),  # L sharded
)
AXIS_TYPES = ("Auto", "Explicit")
SAMPLED = ("a", "tall", "layers", "square")  # "b" (same shape as "a") and "bias" are not
PATTERNS = {  # keep bit per sampled leaf; each leaf is kept in one pattern, dropped in the other
    "p0": {"a": True, "tall": False, "layers": True, "square": False},
    "p1": {"a": False, "tall": True, "layers": False, "square": True},
}
ALIASES = ("muon/Auto", "muon/Explicit", "muon_injected/Auto", "muon_injected/Explicit")
STEPS = 4

# -- the worker (runs with 8 simulated devices) ------------------------------------


def _worker() -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import optax_lmo as ol
  from optax_lmo import norms
  from scripts.hlo_collectives import dots_outside_conditionals, hlo_collectives

  assert jax.device_count() == N_DEVICES, jax.devices()
  keys = jax.random.split(jax.random.key(0), 6)
  grads = {
      "a": jax.random.normal(keys[0], (32, 64)),
      "b": jax.random.normal(keys[1], (32, 64)),
      "tall": jax.random.normal(keys[2], (64, 32)),
      # 12 + 1 matrices of 32 x 64 on 8 owners: two slots on some owners.
      "layers": jax.random.normal(keys[3], (12, 32, 64)),
      "square": jax.random.normal(keys[4], (32, 32)),
      "bias": jax.random.normal(keys[5], (32,)),
  }
  spectral = norms.Spectral()
  tree_norms = {k: norms.BiasRMS() if k == "bias" else spectral for k in grads}
  specs = {k: ol.MatrixSpec(fan_in=(1,), fan_out=(2,)) if k == "layers" else None for k in grads}
  tx = ol.scale_by_norm(tree_norms, specs=specs)
  update = jax.jit(lambda g, keep: tx.update(g, None, keep=keep)[0])
  full = jax.jit(lambda g: tx.update(g, None)[0])

  def bits(pattern, sampled=SAMPLED):  # traced arguments, so nothing is decided at compile time
    return {k: jnp.asarray(PATTERNS[pattern].get(k, True)) if k in sampled else None
            for k in grads}

  one = jax.devices()[0]
  on_one = jax.device_put(grads, one)
  ref_full = jax.device_get(full(on_one))
  refs = {p: jax.device_get(update(on_one, bits(p))) for p in PATTERNS}

  def errs(u, ref):  # per leaf: None if both are all zero, else the error relative to ref
    return {k: None if not np.any(ref[k]) and not np.any(np.asarray(u[k]))
            else float(np.max(np.abs(np.asarray(u[k]) - ref[k])) / np.max(np.abs(ref[k])))
            for k in grads}

  out: dict = {"one_device": {p: errs(refs[p], ref_full) for p in PATTERNS},
               "zero": {p: {k: not np.any(refs[p][k]) for k in grads} for p in PATTERNS},
               "mesh": {}, "hlo": {}}
  everything = SAMPLED + ("b",)  # every spectral leaf sampled: no polar may run outside a cond
  for name, shape, axes, spec2, spec3 in LAYOUTS:
    for at in AXIS_TYPES:
      mesh = jax.make_mesh(shape, axes, axis_types=(getattr(AxisType, at),) * len(shape))
      spec = lambda x, spec2=spec2, spec3=spec3: P(*{1: (None,), 2: spec2, 3: spec3}[x.ndim])
      g = {k: jax.device_put(v, NamedSharding(mesh, spec(v))) for k, v in grads.items()}
      with jax.set_mesh(mesh):
        compiled = update.lower(g, bits("p0")).compile()
        for p in PATTERNS:
          out["mesh"][f"{name}/{at}/{p}"] = errs(compiled(g, bits(p)), refs[p])
        hlo = update.lower(g, bits("p0", everything)).compile().as_text()
        if name == "fsdp" and at == "Auto":  # the checker sees the polar of unsampled leaves
          out["hlo"]["unsampled"] = dots_outside_conditionals(full.lower(g).compile().as_text())
      stats = hlo_collectives(hlo)
      out["hlo"][f"{name}/{at}"] = {"dots": dots_outside_conditionals(hlo),
                                    "all_to_all": stats["ops"].get("all-to-all", 0),
                                    "in_loops": stats["in_loops"]}

  # The aliases: a few steps of muon with keep_prob (a number, and injected) on a mesh take
  # the steps they take on one device, leaf by leaf and step by step.
  k = jax.random.split(jax.random.key(1), 8)
  model = {
      "embed": {"embedding": jax.random.normal(k[0], (16, 32))},
      "blocks": [{"qkv": {"kernel": jax.random.normal(k[1 + 3 * i], (32, 96))},
                  "out": {"kernel": jax.random.normal(k[2 + 3 * i], (32, 32))},
                  "fc": {"kernel": jax.random.normal(k[3 + 3 * i], (64, 32))}} for i in range(2)],
      "norm": {"scale": jnp.ones(32)},
      "head": {"kernel": jax.random.normal(k[7], (32, 16))},
  }
  opts = {
      "muon": ol.muon(0.02, keep_prob=0.5, seed=3),
      "muon_injected": optax.inject_hyperparams(ol.muon)(learning_rate=0.02, keep_prob=0.5,
                                                        seed=3),
  }

  def steps(p, opt):
    state, us = opt.init(p), []
    for _ in range(STEPS):
      u, state = opt.update(jax.tree.map(jnp.sin, p), state, p)
      p = optax.apply_updates(p, u)
      us.append(u)
    return us

  out["alias"] = {}
  for oname, opt in opts.items():
    run = jax.jit(lambda p, opt=opt: steps(p, opt))
    ref = jax.device_get(run(jax.device_put(model, one)))
    moved = [[bool(np.any(b[k]["kernel"])) for b in u["blocks"] for k in ("qkv", "out", "fc")]
             for u in ref]
    for at in AXIS_TYPES:
      mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(getattr(AxisType, at),))
      on_mesh = jax.tree.map(
          lambda v, mesh=mesh: jax.device_put(
              v, NamedSharding(mesh, P("fsdp") if v.ndim == 2 else P())), model)
      with jax.set_mesh(mesh):
        compiled = run.lower(on_mesh).compile()
        got = compiled(on_mesh)
      pairs = [(np.asarray(a), b) for u, r in zip(got, ref, strict=True)
               for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r), strict=True)]
      out["alias"][f"{oname}/{at}"] = {  # per leaf and step, relative to the largest entry
          "err": max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
                     for a, b in pairs),
          "zeros_agree": all(np.any(a) == np.any(b) for a, b in pairs),
          "moved": moved, "all_to_all": hlo_collectives(compiled.as_text())["ops"].get(
              "all-to-all", 0)}
  return out


# -- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> dict:
  return run_worker(__file__, devices=N_DEVICES, timeout=600)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_one_device_dropped_leaves_are_zero_and_kept_ones_the_full_update(worker, pattern):
  errs, zero = worker["one_device"][pattern], worker["zero"][pattern]
  for k, e in errs.items():
    if k in SAMPLED and not PATTERNS[pattern][k]:
      assert zero[k], k  # dropped: exactly zero
    else:
      assert not zero[k] and e < TOL, (k, e)  # kept or unsampled: the update without keep


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_sampled_update_is_mesh_invariant(worker, layout, pattern):
  errs = worker["mesh"][f"{layout}/{pattern}"]
  for k, e in errs.items():
    dropped = k in SAMPLED and not PATTERNS[pattern][k]
    assert (e is None) == dropped, (k, e)  # zero exactly where the single-device one is
    assert e is None or e < TOL, (k, e)


@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_owners_run_every_sampled_polar_under_a_conditional(worker, layout):
  h = worker["hlo"][layout]
  outside, total = h["dots"]
  assert total > 0 and outside == 0, h  # Newton–Schulz is there, each matmul behind a cond
  assert h["all_to_all"] > 0, h  # on the owners: the matrices moved ...
  assert h["in_loops"] == 0, h  # ... and no loop gathers a sharded matrix


def test_dot_checker_sees_unconditional_polar(worker):
  outside, total = worker["hlo"]["unsampled"]
  assert outside > 0 and total >= outside


@pytest.mark.parametrize("case", ALIASES)
def test_alias_keep_prob_on_a_mesh_takes_the_single_device_steps(worker, case):
  r = worker["alias"][case]
  moved = np.array(r["moved"])
  assert moved.any() and not moved.all(), moved  # some matrices kept, some dropped
  assert r["zeros_agree"], r
  assert r["err"] < TOL, r
  assert r["all_to_all"] > 0, r  # sampled matrices went to their owners


def test_slot_positions_cover_every_matrix_once():
  import itertools

  import jax

  from optax_lmo._src import owners as owners_lib

  mesh = jax.sharding.AbstractMesh((4, 2), ("fsdp", "tp"))
  rows = ((), ("fsdp", "tp"), ())
  for counts in itertools.product((1, 3, 8, 13), (2, 5)):
    groups = [[((n, 32, 64), rows)] for n in counts]
    for unit in owners_lib.assign(groups, mesh).units:
      pos = owners_lib.slot_positions(unit, 8)
      assert sorted(pos[pos >= 0].tolist()) == list(range(unit.n))
      assert (pos[:, : unit.rounds] >= 0).all()  # full rounds hold no padding
      if unit.extra:
        assert sorted(np.flatnonzero(pos[:, -1] >= 0).tolist()) == list(unit.extra)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
  print(json.dumps(_worker()))
