"""The shared integration battery, run for every optimizer (after optax's contrib/_common_test)."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optax_lmo as ol

OPTIMIZERS = {
    "scion": lambda learning_rate: ol.scion(learning_rate),
    "scion_clipped": lambda learning_rate: ol.scion(learning_rate, clip_to_dual_norm=True),
    "unconstrained_scion": lambda learning_rate: ol.unconstrained_scion(
        learning_rate, weight_decay=0.01
    ),
    "muon": lambda learning_rate: ol.muon(learning_rate),
    "sign_descent": lambda learning_rate: ol.sign_descent(learning_rate),
    "normalized_sgd": lambda learning_rate: ol.normalized_sgd(learning_rate),
}
NAMES = sorted(OPTIMIZERS)


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


@pytest.mark.parametrize("name", NAMES)
def test_clip_by_global_norm_in_front(name):
  tx = optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](0.05))
  p, _ = _run(tx, _params())
  assert _loss(p) < _loss(_params())


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_no_retrace(name):
  traces = []
  tx = optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=0.05)
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


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_accumulates(name):
  tx = optax.MultiSteps(OPTIMIZERS[name](0.05), every_k_schedule=2)
  params = _params()
  state = tx.init(params)
  g = jax.grad(_loss)(params)
  u1, state = jax.jit(tx.update)(g, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u1))  # first micro-step: no update
  u2, state = jax.jit(tx.update)(g, state, params)
  assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u2))


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_nan_and_keeps_state(name):
  tx = optax.apply_if_finite(OPTIMIZERS[name](0.05), max_consecutive_errors=3)
  params = _params()
  state = tx.init(params)
  g = jax.grad(_loss)(params)
  _, state = jax.jit(tx.update)(g, state, params)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g)
  u, new_state = jax.jit(tx.update)(bad, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize("name", NAMES)
def test_partition_with_other_optimizer(name):
  labels = {"embed": {"embedding": "sgd"}, "fc": {"kernel": "lmo", "bias": "sgd"},
            "head": {"kernel": "lmo"}}
  tx = optax.partition({"lmo": OPTIMIZERS[name](0.05), "sgd": optax.sgd(0.1)}, labels)
  p, _ = _run(tx, _params())
  assert _loss(p) < _loss(_params())


@pytest.mark.parametrize("name", NAMES)
def test_eval_shape_abstract_init(name):
  tx = OPTIMIZERS[name](0.05)
  abstract = jax.eval_shape(tx.init, _params())
  concrete = tx.init(_params())
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
    assert a.shape == c.shape and a.dtype == c.dtype


@pytest.mark.parametrize("name", NAMES)
def test_bf16_params_fp32_state(name):
  params = _params(jnp.bfloat16)
  tx = OPTIMIZERS[name](0.05)
  p, state = _run(tx, params)
  for x in jax.tree.leaves(p):
    assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x)))
  traces = [
      x for x in jax.tree.leaves(state)
      if x.ndim > 0 and x.dtype in (jnp.float32, jnp.bfloat16)
  ]
  assert traces and all(x.dtype == jnp.float32 for x in traces)


@pytest.mark.parametrize("name", NAMES)
def test_second_jitted_call_does_not_recompile(name):
  tx = OPTIMIZERS[name](0.05)
  params = _params()
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  step(params, state)
  size = step._cache_size()
  u, state = step(params, state)
  step(optax.apply_updates(params, u), state)
  assert step._cache_size() == size == 1


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_zero_lmo_updates(name):
  tx = OPTIMIZERS[name](0.05)
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


@pytest.mark.parametrize("name", NAMES)
def test_nnx_optimizer_and_orbax_roundtrip(name):
  model = _MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, OPTIMIZERS[name](0.05), wrt=nnx.Param)
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
