"""Whole-matrix ownership on a mesh: invariance, no collective in loops, state layout, aliases.

Also the low-precision exchange (``exchange_dtype``): close to the float32
update by bfloat16 rounding, half the all-to-all bytes, honoured by the aliases.

The sharded checks need 8 devices, which XLA only simulates on CPU when
``--xla_force_host_platform_device_count=8`` is set before jax is imported. So
this module runs itself once as a subprocess (``python tests/test_sharding.py
--worker``) that prints one JSON object, and the tests assert on it; the pytest
process keeps its own jax untouched.
"""

from __future__ import annotations

import json
import sys

import jax.numpy as jnp
import pytest
from _simulated import run_worker

from optax_lmo._src import momentum as momentum_lib

N_DEVICES = 8


def _alias(ol, name: str):
  """The optimizer ``name`` (PolarGrad is in ``ol.contrib``)."""
  return getattr(ol.contrib if name == "polargrad" else ol, name)

# Relative to the largest entry: float32 Newton–Schulz on batches of another
# size sums in another order (measured ~1e-5); a shard orthogonalized on its own
# would be off by O(1).
TOL = 1e-4
# bfloat16 exchange, error per leaf ||u - u_ref||_F / ||u_ref||_F (largest over
# leaves). bfloat16 keeps 8 significant bits, so rounding moves each entry by
# at most 2^-8 of itself: once on the gradient sent to its owner, once on the
# polar factor sent back. The second moves u by at most 2^-8 ||u||_F; the first
# moves g by at most 2^-8 ||g||_F, which the polar factor passes on scaled by
# at most ||g||_F / (sigma_min(g) ||polar(g)||_F), about 3 for the worst leaf
# here (the 8 x 16 Gaussian taps), and by about 1 in practice, the roundings
# being independent (measured: at most 1.3 x 2^-8). So 4 x 2^-8 caps the error;
# it must also exceed float32 noise (TOL, 40x lower): a cast that silently did
# nothing would land under it.
BF16_EPS = 2.0**-8
TOL_BF16 = 4 * BF16_EPS

# (name, mesh shape, mesh axes, PartitionSpec of a 2-D leaf as a tuple)
LAYOUTS = (
    ("fsdp", (8,), ("fsdp",), ("fsdp",)),
    ("fsdp_tp", (4, 2), ("fsdp", "tp"), ("fsdp", "tp")),
    ("cols_tp", (4, 2), ("fsdp", "tp"), (None, "tp")),
)
AXIS_TYPES = ("Auto", "Explicit")
# (optimizer, distribute): None and True take the same path, so True is checked once.
ALIAS_CASES = (
    ("scion", None), ("scion", True), ("scion", False), ("unconstrained_scion", None),
    ("muon", None), ("muon", False),
)
BF16_ALIASES = ("scion", "unconstrained_scion", "muon", "polargrad")


# -- the worker (runs with 8 simulated devices) ------------------------------------


def _worker() -> dict:
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import optax_lmo as ol
  from optax_lmo import norms
  from scripts.hlo_collectives import hlo_collectives

  assert jax.device_count() == N_DEVICES, jax.devices()
  stacked = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))
  keys = jax.random.split(jax.random.key(0), 9)
  grads = {
      "a": jax.random.normal(keys[0], (32, 64)),
      "b": jax.random.normal(keys[1], (32, 64)),
      "tall": jax.random.normal(keys[2], (64, 32)),
      "layers": jax.random.normal(keys[3], (3, 32, 64)),  # (L, d_in, d_out)
      "square": jax.random.normal(keys[4], (32, 32)),
      "embed": jax.random.normal(keys[5], (16, 32)),
      "bias": jax.random.normal(keys[6], (32,)),
      "conv": jax.random.normal(keys[7], (3, 3, 8, 16)),  # one (72, 16) matrix
      "conv_taps": jax.random.normal(keys[8], (3, 3, 8, 16)),  # nine (8, 16) taps
  }
  spectral = norms.Spectral()
  tree_norms = {
      "a": spectral,
      "b": spectral,
      "tall": spectral,
      "layers": spectral,
      "square": spectral,
      "embed": norms.ColNorm(),
      "bias": norms.BiasRMS(),
      "conv": norms.SpectralConv(),
      "conv_taps": norms.SpectralConv(convention="per_tap"),
  }
  specs = {k: stacked if k == "layers" else None for k in grads}
  tx = optax.chain(ol.momentum(0.5, nesterov=True), ol.scale_by_norm(tree_norms, specs=specs))

  def update(g):
    return tx.update(g, tx.init(g))[0]

  one = jax.devices()[0]
  ref = jax.device_get(jax.jit(update)(jax.device_put(grads, one)))

  def max_err(u, ref):
    return max(
        float(np.max(np.abs(np.asarray(u[k]) - ref[k])) / np.max(np.abs(ref[k]))) for k in grads
    )

  def fro_err(u, ref):  # largest over leaves of ||u - ref||_F / ||ref||_F
    errs = jax.tree.map(
        lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)), u, ref
    )
    return max(jax.tree.leaves(errs))

  def leaf_spec(x, spec2):
    if x.ndim == 2:
      return P(*spec2)
    if x.ndim == 3:
      return P(None, *spec2)
    if x.ndim == 4:  # conv kernels: c_in and c_out sharded like a matrix
      return P(None, None, *spec2)
    return P()

  def placed(mesh, spec2):
    return {
        k: jax.device_put(v, NamedSharding(mesh, leaf_spec(v, spec2)))
        for k, v in grads.items()
    }

  # The same update with the matrices sent to their owners and back in bfloat16.
  tx_bf16 = optax.chain(
      ol.momentum(0.5, nesterov=True),
      ol.scale_by_norm(tree_norms, specs=specs, exchange_dtype=jnp.bfloat16),
  )

  def update_bf16(g):
    return tx_bf16.update(g, tx_bf16.init(g))[0]

  out: dict = {"invariance": {}, "hlo": {}, "state": {}, "self_check": {}, "bf16": {}}
  for name, shape, axes, spec2 in LAYOUTS:
    for at in AXIS_TYPES:
      mesh = jax.make_mesh(shape, axes, axis_types=(getattr(AxisType, at),) * len(shape))
      g = placed(mesh, spec2)
      with jax.set_mesh(mesh):
        compiled = jax.jit(update).lower(g).compile()
        u = compiled(g)
        compiled_bf16 = jax.jit(update_bf16).lower(g).compile()
        u_bf16 = compiled_bf16(g)
      err = max_err(u, ref)
      same = all(u[k].sharding.is_equivalent_to(g[k].sharding, g[k].ndim) for k in grads)
      out["invariance"][f"{name}/{at}"] = {"err": err, "same_sharding": same}
      out["hlo"][f"{name}/{at}"] = hlo_collectives(compiled.as_text())
      out["bf16"][f"{name}/{at}"] = {
          "err": fro_err(u_bf16, ref),
          "bitwise_as_f32": all(
              np.array_equal(np.asarray(u_bf16[k]), np.asarray(u[k])) for k in grads
          ),
          "hlo": hlo_collectives(compiled_bf16.as_text()),
      }

  # Layout switch off: XLA's own partitioning of the same update (what we avoid).
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
  g = placed(mesh, ("fsdp",))
  off = optax.chain(
      ol.momentum(0.5), ol.scale_by_norm(tree_norms, specs=specs, distribute=False)
  )
  fn = jax.jit(lambda g: off.update(g, off.init(g))[0])
  ref_off = jax.device_get(fn(jax.device_put(grads, one)))
  with jax.set_mesh(mesh):
    compiled = fn.lower(g).compile()
    u = compiled(g)
    out["hlo"]["off"] = hlo_collectives(compiled.as_text())
  out["invariance"]["off"] = {"err": max_err(u, ref_off), "same_sharding": True}

  # The checker itself: a matmul loop on a sharded matrix gathers inside the loop.
  x = jax.device_put(jnp.ones((64, 64)), NamedSharding(mesh, P("fsdp")))
  naive = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y @ y.T / 64, x))
  out["self_check"] = hlo_collectives(naive.lower(x).compile().as_text())

  # Momentum state after init (eager, and jit with out_shardings) and after update.
  chain = optax.chain(ol.momentum(0.1), ol.scale_by_norm(tree_norms, specs=specs))
  for at in AXIS_TYPES:
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(getattr(AxisType, at),) * 2)
    params = placed(mesh, ("fsdp", "tp"))
    shardings = {k: v.sharding for k, v in params.items()}
    with jax.set_mesh(mesh):
      eager = chain.init(params)
      state_shardings = (
          momentum_lib.MomentumState(count=NamedSharding(mesh, P()), trace=shardings),
          optax.EmptyState(),
      )
      jitted = jax.jit(chain.init, out_shardings=state_shardings)(params)

      @jax.jit
      def step(params, state):
        u, state = chain.update(params, state, params)
        return optax.apply_updates(params, u), state

      new_params, after = step(params, eager)

    def trace_ok(state, params=params, shardings=shardings):
      trace = state[0].trace
      return all(
          trace[k].shape == params[k].shape
          and trace[k].sharding.is_equivalent_to(shardings[k], params[k].ndim)
          for k in params
      )

    out["state"][at] = {
        "eager": trace_ok(eager),
        "jit": trace_ok(jitted),
        "after_update": trace_ok(after),
        "params_after_update": all(
            new_params[k].sharding.is_equivalent_to(shardings[k], params[k].ndim) for k in params
        ),
    }

  # The optimizers pass `distribute` through: two steps of each alias on an FSDP mesh
  # equal the single-device steps, with (None) and without (False) the owner exchange.
  model = {
      "embed": {"embedding": grads["embed"]},
      "blocks": {"qkv": {"kernel": grads["a"]}, "out": {"kernel": grads["square"]},
                 "fc": {"kernel": grads["tall"]}},
      "norm": {"scale": grads["bias"]},
      "head": {"kernel": grads["b"]},
  }
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
  on_mesh = jax.tree.map(
      lambda v: jax.device_put(v, NamedSharding(mesh, P("fsdp") if v.ndim == 2 else P())), model
  )
  out["alias"] = {}
  refs = {}  # one device: `distribute` changes nothing there
  for name, distribute in ALIAS_CASES:
    opt = _alias(ol, name)(0.1, distribute=distribute)

    def two_steps(p, opt=opt):
      state = opt.init(p)
      for _ in range(2):
        u, state = opt.update(jax.tree.map(jnp.sin, p), state, p)
        p = optax.apply_updates(p, u)
      return p

    if name not in refs:
      refs[name] = jax.device_get(jax.jit(two_steps)(jax.device_put(model, one)))
    with jax.set_mesh(mesh):
      compiled = jax.jit(two_steps).lower(on_mesh).compile()
      got = compiled(on_mesh)
    errs = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b))),
        got, refs[name]))
    out["alias"][f"{name}/{distribute}"] = {
        "err": max(errs),
        "all_to_all": hlo_collectives(compiled.as_text())["ops"].get("all-to-all", 0),
    }

  # The optimizers pass `exchange_dtype` through, also under inject_hyperparams
  # (where a dtype, being callable, must be a static argument).
  def first_update(opt, p):
    return opt.update(jax.tree.map(jnp.sin, p), opt.init(p), p)[0]

  def injected(name, **kw):
    return optax.inject_hyperparams(_alias(ol, name), static_args=("exchange_dtype",))(
        learning_rate=0.1, **kw
    )

  exchanged = {  # name: (with bfloat16 exchange, the same without)
      name: (_alias(ol, name)(0.1, exchange_dtype=jnp.bfloat16), _alias(ol, name)(0.1))
      for name in BF16_ALIASES
  }
  for name in ("scion", "polargrad"):
    exchanged[f"{name}/injected"] = (
        injected(name, exchange_dtype=jnp.bfloat16), injected(name)
    )
  out["bf16_alias"] = {}
  for name, (opt, plain) in exchanged.items():
    ref_u = jax.device_get(jax.jit(functools.partial(first_update, plain))(
        jax.device_put(model, one)))
    off_mesh = jax.device_get(jax.jit(functools.partial(first_update, opt))(
        jax.device_put(model, one)))
    with jax.set_mesh(mesh):
      compiled = jax.jit(functools.partial(first_update, opt)).lower(on_mesh).compile()
      got = compiled(on_mesh)
    out["bf16_alias"][name] = {
        "err": fro_err(got, ref_u),
        "off_mesh_bitwise": all(jax.tree.leaves(jax.tree.map(np.array_equal, off_mesh, ref_u))),
        "all_to_all_dtypes": hlo_collectives(compiled.as_text())["op_dtypes"].get("all-to-all"),
    }
  return out


# -- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> dict:
  return run_worker(__file__, devices=N_DEVICES, timeout=300)


@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_update_is_mesh_invariant(worker, layout):
  r = worker["invariance"][layout]
  assert r["err"] < TOL, r


@pytest.mark.parametrize("layout", [f"{n}/Explicit" for n, *_ in LAYOUTS])
def test_explicit_mesh_returns_each_leaf_in_its_layout(worker, layout):
  assert worker["invariance"][layout]["same_sharding"]


def test_distribute_false_is_also_correct(worker):
  assert worker["invariance"]["off"]["err"] < TOL


@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_no_collective_inside_newton_schulz_loop(worker, layout):
  h = worker["hlo"][layout]
  assert h["loops"] > 0, h  # the Newton–Schulz loops are there ...
  assert h["in_loops"] == 0, h  # ... and free of collectives
  assert h["ops"].get("all-to-all", 0) > 0, h  # the matrices did move to their owners


def test_hlo_checker_sees_collectives_in_loops(worker):
  assert worker["self_check"]["in_loops"] > 0, worker["self_check"]


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("when", ["eager", "jit", "after_update", "params_after_update"])
def test_state_is_sharded_like_params(worker, axis_type, when):
  assert worker["state"][axis_type][when]


@pytest.mark.parametrize(("name", "distribute"), ALIAS_CASES)
def test_alias_distribute_is_mesh_invariant_and_honoured(worker, name, distribute):
  r = worker["alias"][f"{name}/{distribute}"]
  assert r["err"] < TOL, r
  if distribute is False:
    assert r["all_to_all"] == 0, r  # no owner exchange: XLA partitions the polar factor
  else:
    assert r["all_to_all"] > 0, r  # the matrices moved to their owners


# -- low-precision exchange -------------------------------------------------------------


@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_bf16_exchange_is_close_to_float32_but_rounded(worker, layout):
  r = worker["bf16"][layout]
  assert r["err"] < TOL_BF16, r  # within bfloat16 rounding of the single-device update ...
  assert r["err"] > TOL, r  # ... and visibly rounded: the cast happened
  assert not r["bitwise_as_f32"], r


@pytest.mark.parametrize("layout", [f"{n}/{t}" for n, *_ in LAYOUTS for t in AXIS_TYPES])
def test_bf16_exchange_halves_the_all_to_all_bytes(worker, layout):
  f32, bf16 = worker["hlo"][layout], worker["bf16"][layout]["hlo"]
  assert f32["op_dtypes"]["all-to-all"] == ["f32"], f32
  # bfloat16 values travel as their 16 bits (XLA's CPU backend would widen a
  # bfloat16 all-to-all back to float32).
  assert bf16["op_dtypes"]["all-to-all"] == ["u16"], bf16
  assert 2 * bf16["op_bytes"]["all-to-all"] == f32["op_bytes"]["all-to-all"], (f32, bf16)
  assert bf16["in_loops"] == 0, bf16
  # Nothing else grows (a gather back over replicated axes shrinks too).
  others = lambda h: {k: v for k, v in h["op_bytes"].items() if k != "all-to-all"}
  assert sum(others(bf16).values()) <= sum(others(f32).values()), (f32, bf16)


@pytest.mark.parametrize("name", [*BF16_ALIASES, "scion/injected", "polargrad/injected"])
def test_alias_exchange_dtype_is_honoured(worker, name):
  r = worker["bf16_alias"][name]
  assert TOL < r["err"] < TOL_BF16, r
  assert r["all_to_all_dtypes"] == ["u16"], r
  assert r["off_mesh_bitwise"], r  # one device: nothing travels, nothing is rounded


@pytest.mark.parametrize("bad", [jnp.int8, "int32", 3, "not a dtype"])
@pytest.mark.parametrize("name", ["scale_by_norm", *BF16_ALIASES])
def test_exchange_dtype_must_be_floating(name, bad):
  import optax_lmo as ol

  make = (lambda: ol.scale_by_norm(ol.norms.Spectral(), exchange_dtype=bad)) if (
      name == "scale_by_norm") else (lambda: _alias(ol, name)(0.1, exchange_dtype=bad))
  with pytest.raises(ValueError, match=f"{name}: exchange_dtype must be None or a floating"):
    make()


def test_exchange_dtype_under_inject_hyperparams_needs_static_args():
  import optax

  import optax_lmo as ol

  params = {"w": jnp.ones((4, 4))}
  # A dtype is callable, so without static_args optax takes it for a schedule.
  tx = optax.inject_hyperparams(ol.scion)(learning_rate=0.1, exchange_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="static_args=\\('exchange_dtype',\\)"):
    tx.init(params)
  tx = optax.inject_hyperparams(ol.scion, static_args=("exchange_dtype",))(
      learning_rate=0.1, exchange_dtype=jnp.bfloat16
  )
  assert "exchange_dtype" not in tx.init(params).hyperparams


# -- the owner assignment (pure Python, no devices) -----------------------------------


def _abstract_mesh(shape, names):
  import jax

  return jax.sharding.AbstractMesh(shape, names)


def test_plan_balances_leftovers_across_groups():
  from optax_lmo._src import owners as owners_lib

  rows = ((), ("fsdp",), ())
  d = 64
  groups = [[((1, i, o), rows)] * 4 for i, o in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d))]
  plan = owners_lib.assign(groups, _abstract_mesh((8,), ("fsdp",)))
  # Padding every group to 8 would cost max = sum of one matrix of each: 2x the ideal.
  assert plan.imbalance < 1.2, plan
  assert sum(plan.load) == pytest.approx(8 * plan.ideal)
  for unit in plan.units:
    assert unit.rounds == 0 and len(unit.extra) == 4


def test_plan_full_rounds_are_perfectly_balanced():
  from optax_lmo._src import owners as owners_lib

  rows = ((), ("fsdp", "tp"), ())
  groups = [[((2, 32, 64), rows)] * 4, [((1, 64, 64), rows)] * 16]
  plan = owners_lib.assign(groups, _abstract_mesh((4, 2), ("fsdp", "tp")))
  assert plan.imbalance == pytest.approx(1.0)
  assert [u.rounds for u in plan.units] == [1, 2]


def test_plan_lone_matrix_is_not_spread_over_replicated_axes():
  from optax_lmo._src import owners as owners_lib

  # Rows over fsdp, replicated over tp: one matrix has 4 candidate owners on fsdp
  # already, so tp adds none (no slice in, no all-gather out).
  groups = [[((1, 64, 64), ((), ("fsdp",), ()))]]
  plan = owners_lib.assign(groups, _abstract_mesh((4, 2), ("fsdp", "tp")))
  assert plan.units[0].replicated == ()
  groups = [[((8, 64, 64), ((), ("fsdp",), ()))]]
  plan = owners_lib.assign(groups, _abstract_mesh((4, 2), ("fsdp", "tp")))
  assert plan.units[0].replicated == ("tp",)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
  print(json.dumps(_worker()))
