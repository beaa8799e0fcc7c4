"""The shared integration battery, run for every optimizer (after optax's contrib/_common_test)."""

import inspect
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optax_lmo as ol

# Each optimizer called through its own signature: (factory, kwargs), as in optax's
# contrib/_common_test.py. The Scions at the default radii (hidden 48, head 160) step by
# lr x radius: 2^-9 moves a hidden matrix as far as 0.1 at radius 1.
OPTIMIZERS = [
    (ol.scion, {"learning_rate": 2**-9}),
    (ol.scion, {"learning_rate": 2**-9, "clip_to_dual_norm": True}),
    (ol.unconstrained_scion, {"learning_rate": 2**-9, "weight_decay": 0.01}),
    (ol.muon, {"learning_rate": 0.05}),
    (ol.sign_descent, {"learning_rate": 0.05}),
    (ol.normalized_sgd, {"learning_rate": 0.05}),
    (ol.scion, {"learning_rate": 2**-9, "row_norm": True}),
    (ol.contrib.normuon, {"learning_rate": 0.05}),
    (ol.contrib.hyperball, {"learning_rate": 0.05}),
]
IDS = ["scion", "scion_clipped", "unconstrained_scion", "muon", "sign_descent", "normalized_sgd",
       "scion_row_norm", "normuon", "hyperball"]
# The hyperball's step is not linear in the learning rate (it retracts to the sphere after it).
NONLINEAR_IN_LR = (ol.contrib.hyperball,)
each_optimizer = pytest.mark.parametrize("factory, kwargs", OPTIMIZERS, ids=IDS)

# Every numeric hyperparameter of each factory: (value to start from, value to switch to).
HYPERPARAMS = {
    ol.scion: {"learning_rate": (0.05, 0.02), "beta": (0.9, 0.3), "keep_prob": (1.0, 0.01)},
    ol.unconstrained_scion: {
        "learning_rate": (0.05, 0.02), "beta": (0.9, 0.3), "weight_decay": (0.01, 0.5),
        "keep_prob": (1.0, 0.01),
    },
    ol.muon: {
        "learning_rate": (0.05, 0.02), "beta": (0.95, 0.3), "weight_decay": (0.01, 0.5),
        "keep_prob": (1.0, 0.01),
        "adam_learning_rate": (0.01, 0.03), "adam_b1": (0.9, 0.5), "adam_b2": (0.999, 0.9),
        "adam_eps": (1e-8, 1e-1), "adam_weight_decay": (0.01, 0.5),
    },
    ol.sign_descent: {"learning_rate": (0.05, 0.02), "beta": (0.9, 0.3),
                      "weight_decay": (0.01, 0.5)},
    ol.normalized_sgd: {"learning_rate": (0.05, 0.02), "beta": (0.9, 0.3),
                        "weight_decay": (0.01, 0.5)},
    ol.contrib.normuon: {
        "learning_rate": (0.05, 0.02), "beta": (0.95, 0.3), "beta2": (0.95, 0.5),
        "weight_decay": (0.01, 0.5), "adam_learning_rate": (0.01, 0.03), "adam_b1": (0.9, 0.5),
        "adam_b2": (0.999, 0.9), "adam_eps": (1e-8, 1e-1), "adam_weight_decay": (0.01, 0.5),
    },
    ol.contrib.hyperball: {
        "learning_rate": (0.05, 0.02), "beta": (0.95, 0.3), "adam_learning_rate": (0.01, 0.03),
        "adam_b1": (0.9, 0.5), "adam_b2": (0.999, 0.9), "adam_eps": (1e-8, 1e-1),
        "adam_weight_decay": (0.01, 0.5),
    },
}


def _params(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(0), 3)
  return {
      "embed": {"embedding": jax.random.normal(k[0], (12, 8)).astype(dtype)},
      "fc": {"kernel": jax.random.normal(k[1], (8, 16)).astype(dtype) * 0.3,
             "bias": jnp.zeros(16, dtype)},
      "head": {"kernel": jax.random.normal(k[2], (16, 12)).astype(dtype) * 0.1},
  }


def _loss(p):
  x = jnp.arange(12) % 12
  h = jax.nn.relu(p["embed"]["embedding"][x] @ p["fc"]["kernel"] + p["fc"]["bias"])
  logits = (h @ p["head"]["kernel"]).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, (x + 1) % 12).mean()


def _run(tx, params, steps=3):
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(_loss)(p), s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@each_optimizer
def test_clip_by_global_norm_in_front(factory, kwargs):
  tx = optax.chain(optax.clip_by_global_norm(1.0), factory(**kwargs))
  p, _ = _run(tx, _params())
  assert _loss(p) < _loss(_params())


@each_optimizer
def test_inject_hyperparams_no_retrace(factory, kwargs):
  traces = []
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = _params()
  state = tx.init(params)
  assert state.hyperparams["learning_rate"].dtype == jnp.float32

  @jax.jit
  def step(p, s):
    traces.append(1)
    u, s = tx.update(jax.grad(_loss)(p), s, p)
    return optax.apply_updates(p, u), s

  params, state = step(params, state)
  state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
  p2, state = step(params, state)
  assert len(traces) == 1
  assert state.hyperparams["learning_rate"].dtype == jnp.float32
  # The injected learning rate is the one used: 0 freezes the parameters.
  state.hyperparams["learning_rate"] = jnp.asarray(0.0, jnp.float32)
  p3, state = step(p2, state)
  assert len(traces) == 1
  jax.tree.map(np.testing.assert_array_equal, p3, p2)


@each_optimizer
def test_multisteps_accumulates(factory, kwargs):
  tx = optax.MultiSteps(factory(**kwargs), every_k_schedule=2)
  params = _params()
  state = tx.init(params)
  g = jax.grad(_loss)(params)
  u1, state = jax.jit(tx.update)(g, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u1))  # first micro-step: no update
  u2, state = jax.jit(tx.update)(g, state, params)
  assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u2))


@each_optimizer
def test_apply_if_finite_skips_nan_and_keeps_state(factory, kwargs):
  tx = optax.apply_if_finite(factory(**kwargs), max_consecutive_errors=3)
  params = _params()
  state = tx.init(params)
  g = jax.grad(_loss)(params)
  _, state = jax.jit(tx.update)(g, state, params)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g)
  u, new_state = jax.jit(tx.update)(bad, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


@each_optimizer
def test_partition_with_other_optimizer(factory, kwargs):
  labels = {"embed": {"embedding": "sgd"}, "fc": {"kernel": "lmo", "bias": "sgd"},
            "head": {"kernel": "lmo"}}
  tx = optax.partition({"lmo": factory(**kwargs), "sgd": optax.sgd(0.1)}, labels)
  p, _ = _run(tx, _params())
  assert _loss(p) < _loss(_params())


@each_optimizer
def test_eval_shape_abstract_init(factory, kwargs):
  tx = factory(**kwargs)
  abstract = jax.eval_shape(tx.init, _params())
  concrete = tx.init(_params())
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
    assert a.shape == c.shape and a.dtype == c.dtype


@each_optimizer
def test_bf16_params_fp32_state(factory, kwargs):
  params = _params(jnp.bfloat16)
  tx = factory(**kwargs)
  p, state = _run(tx, params)
  for x in jax.tree.leaves(p):
    assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x)))
  traces = [
      x for x in jax.tree.leaves(state)
      if x.ndim > 0 and x.dtype in (jnp.float32, jnp.bfloat16)
  ]
  assert traces and all(x.dtype == jnp.float32 for x in traces)


@each_optimizer
def test_second_jitted_call_does_not_recompile(factory, kwargs):
  tx = factory(**kwargs)
  params = _params()
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  step(params, state)
  size = step._cache_size()
  u, state = step(params, state)
  step(optax.apply_updates(params, u), state)
  assert step._cache_size() == size == 1


@each_optimizer
def test_zero_gradients_give_zero_lmo_updates(factory, kwargs):
  tx = factory(**kwargs)
  params = jax.tree.map(jnp.zeros_like, _params())
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zeros, tx.init(params), params)
  for x in jax.tree.leaves(u):
    assert bool(jnp.all(x == 0)) and bool(jnp.all(jnp.isfinite(x)))


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(12, 8, rngs=rngs)
    self.fc = nnx.Linear(8, 16, rngs=rngs)
    self.head = nnx.Linear(16, 12, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.relu(self.fc(self.embed(x))))


@each_optimizer
def test_nnx_optimizer_and_orbax_roundtrip(factory, kwargs):
  model = _MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, factory(**kwargs), wrt=nnx.Param)
  x = jnp.arange(12) % 12

  @nnx.jit
  def step(model, opt):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), (x + 1) % 12).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt)) for _ in range(5)]
  assert losses[-1] < losses[0]
  state = nnx.state(opt)
  for leaf in jax.tree.leaves(state, is_leaf=lambda v: v is None):
    assert leaf is not None
  with tempfile.TemporaryDirectory() as d:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(f"{d}/opt", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(f"{d}/opt", jax.eval_shape(lambda: state))
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  nnx.update(opt, restored)
  step(model, opt)  # the restored optimizer keeps training


def _random_grads(params, seed):
  return jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(seed + p.size), p.shape, p.dtype), params
  )


def _differ(a, b, tol=1e-4):
  return any(not np.allclose(x, y, rtol=tol, atol=tol)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@each_optimizer
def test_inject_hyperparams_every_numeric_hyperparameter(factory, kwargs):
  hps = HYPERPARAMS[factory]
  start = {**kwargs, **{k: v for k, (v, _) in hps.items()}}
  static = ("seed",) if "seed" in inspect.signature(factory).parameters else ()
  injected = optax.inject_hyperparams(factory, static_args=static)(**start)
  plain = factory(**start)
  params = _params()
  s_inj, s_plain = injected.init(params), plain.init(params)
  assert set(s_inj.hyperparams) == set(hps)  # every numeric one, and nothing else
  assert float(optax.tree_utils.tree_get(s_inj, "learning_rate")) == pytest.approx(0.05)
  step_inj, step_plain = jax.jit(injected.update), jax.jit(plain.update)
  p = params
  for seed in range(3):  # the injected optimizer is the plain one
    g = _random_grads(p, seed)
    u_inj, s_inj = step_inj(g, s_inj, p)
    u_plain, s_plain = step_plain(g, s_plain, p)
    chex.assert_trees_all_close(u_inj, u_plain, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(s_inj.inner_state, s_plain, rtol=1e-5, atol=1e-6)
    p = optax.apply_updates(p, u_inj)
  g = _random_grads(p, 10)
  u_same, _ = step_inj(g, s_inj, p)
  for name, (_, new) in hps.items():
    # Changed mid-run through state.hyperparams: the next step is the plain optimizer's
    # with the new value, from the same state; and it differs from the unchanged step.
    changed = jax.tree.map(lambda x: x, s_inj)
    changed.hyperparams[name] = jnp.asarray(new, jnp.float32)
    u, s = step_inj(g, changed, p)
    ref = factory(**{**start, name: new})
    u_ref, s_ref = jax.jit(ref.update)(g, s_inj.inner_state, p)
    chex.assert_trees_all_close(u, u_ref, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(s.inner_state, s_ref, rtol=1e-5, atol=1e-6)
    assert float(s.hyperparams[name]) == pytest.approx(new)
    assert _differ(u, u_same), name
  assert step_inj._cache_size() == 1  # injected values never retrace


@each_optimizer
def test_injected_learning_rate_scales_the_step(factory, kwargs):
  if factory in NONLINEAR_IN_LR:
    pytest.skip("the retraction to the sphere is not linear in the learning rate")
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = _params()
  state = tx.init(params)
  g = _random_grads(params, 0)
  u1, _ = jax.jit(tx.update)(g, state, params)
  state.hyperparams["learning_rate"] = 3 * state.hyperparams["learning_rate"]
  assert float(optax.tree_utils.tree_get(state, "learning_rate")) == pytest.approx(
      3 * kwargs["learning_rate"])
  u3, _ = jax.jit(tx.update)(g, state, params)
  # The LMO leaves take 3 times the step; AdamW's (muon) follow their own learning rate
  # (muon's adam_learning_rate defaults to learning_rate: the whole step scales).
  chex.assert_trees_all_close(u3, jax.tree.map(lambda u: 3 * u, u1), rtol=1e-5, atol=1e-7)


def _wrappers(tx):
  labels = {"embed": {"embedding": "sgd"}, "fc": {"kernel": "ours", "bias": "sgd"},
            "head": {"kernel": "ours"}}
  return {
      "chain": optax.chain(optax.clip_by_global_norm(1.0), tx),
      "multi_steps": optax.MultiSteps(tx, 2),
      "apply_if_finite": optax.apply_if_finite(tx, 3),
      "partition": optax.partition({"ours": tx, "sgd": optax.sgd(0.1)}, labels),
  }


@each_optimizer
def test_describe_sees_through_wrappers(factory, kwargs):
  params = _params()
  paths = ["embed/embedding", "fc/bias", "fc/kernel", "head/kernel"]  # flattening order
  plain = ol.describe(factory(**kwargs), params)
  assert [r["path"] for r in plain] == paths
  assert any(r["norm"] not in ("-", "AdamW") for r in plain)
  for name, wrapped in _wrappers(factory(**kwargs)).items():
    rows = ol.describe(wrapped, params)
    assert [r["path"] for r in rows] == paths, name
    for r, q in zip(rows, plain, strict=True):
      if name != "partition" or r["path"] in ("fc/kernel", "head/kernel"):
        assert r == q, (name, r, q)
      else:  # leaves the partition sends to sgd: no optimizer of ours sees them
        assert (r["norm"], r["radius"], r["state"]) == ("-", "-", "-"), (name, r)
  injected = ol.describe(optax.inject_hyperparams(factory)(**kwargs), params)
  assert [r["path"] for r in injected] == paths
  for r, q in zip(injected, plain, strict=True):
    assert {**r, "weight_decay": None, "keep_prob": None} == {**q, "weight_decay": None,
                                                              "keep_prob": None}
    # An injected decay or keep_prob is a traced value: the table says so, not a number.
    for col in ("weight_decay", "keep_prob"):
      assert r[col] == q[col] or r[col] == "injected", (col, r, q)
