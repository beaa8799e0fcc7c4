"""adaptive_batch: the norm test against a NumPy re-derivation, caps, dtypes, wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol


def _np_first_pass(grads, eta, lo, hi):
  """The micro-batch count at which the norm test first passes (or the cap), and the mean."""
  for m in range(1, len(grads) + 1):
    g = np.stack(grads[:m]).astype(np.float64)
    mean = g.mean(0)
    if m >= hi:
      return m, mean
    if m >= lo:
      var = np.sum((g - mean) ** 2) / (m * (m - 1))
      if var <= eta**2 * np.sum(mean**2):
        return m, mean
  raise AssertionError("never passed")


@pytest.mark.parametrize("eta", [0.05, 0.2, 1.0])
def test_steps_when_numpy_norm_test_passes(eta):
  rng = np.random.default_rng(0)
  signal = rng.normal(size=(3, 4))
  grads = [signal + 0.5 * rng.normal(size=(3, 4)) for _ in range(40)]
  want_m, want_mean = _np_first_pass(grads, eta, 2, 40)
  tx = ol.contrib.adaptive_batch(optax.sgd(1.0), eta, max_micro_batches=40)
  state = tx.init(jnp.zeros((3, 4)))
  step = jax.jit(tx.update)
  for m, g in enumerate(grads, start=1):
    u, state = step(jnp.asarray(g, jnp.float32), state)
    if m < want_m:
      assert int(state.steps) == 0 and np.all(np.asarray(u) == 0)
    else:
      break
  assert m == want_m and int(state.steps) == 1 and int(state.batch_size) == want_m
  np.testing.assert_allclose(np.asarray(u), -want_mean, rtol=1e-5, atol=1e-6)
  assert int(state.micro_batches) == 0 and float(state.sq_dev) == 0.0


def test_noise_only_hits_the_cap_and_batch_grows_as_signal_fades():
  rng = np.random.default_rng(1)
  tx = ol.contrib.adaptive_batch(optax.sgd(1.0), 0.1, max_micro_batches=6)
  state = tx.init(jnp.zeros(8))
  for _ in range(6):
    _, state = tx.update(jnp.asarray(rng.normal(size=8), jnp.float32), state)
  assert int(state.steps) == 1 and int(state.batch_size) == 6
  # A strong signal with small noise passes at the minimum.
  for _ in range(2):
    _, state = tx.update(jnp.asarray(10 + 0.01 * rng.normal(size=8), jnp.float32), state)
  assert int(state.steps) == 2 and int(state.batch_size) == 2


@pytest.mark.parametrize("make", [lambda: ol.scion(0.1), lambda: optax.adamw(1e-2),
                                  lambda: ol.muon(0.02)])
def test_wraps_every_optimizer_under_jit_without_retracing(make):
  params = {"w": jnp.ones((4, 4)) * 0.1, "b": jnp.zeros(4)}
  tx = ol.contrib.adaptive_batch(make(), 0.3, max_micro_batches=4)
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(p, s, k):
    traces.append(1)
    g = jax.tree.map(lambda x: jax.random.normal(k, x.shape) + 1.0, p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for i in range(8):
    params, state = step(params, state, jax.random.key(i))
  assert len(traces) == 1
  assert int(state.steps) >= 2
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_low_precision_params_keep_float32_mean_and_their_own_update_dtype():
  params = jnp.ones(4, jnp.bfloat16)
  tx = ol.contrib.adaptive_batch(ol.unconstrained_scion(0.1), 1.0)
  state = tx.init(params)
  assert state.mean.dtype == jnp.float32
  for _ in range(3):
    u, state = jax.jit(tx.update)(jnp.ones(4, jnp.bfloat16), state, params)
    assert u.dtype == jnp.bfloat16


def test_eta_can_be_a_traced_value():
  def run(eta):
    tx = ol.contrib.adaptive_batch(optax.sgd(1.0), eta, max_micro_batches=8)
    s = tx.init(jnp.zeros(2))
    for g in ([1.0, 1.0], [1.0, 3.0], [1.0, 1.0]):
      _, s = tx.update(jnp.array(g), s)
    return s.steps

  assert int(jax.jit(run)(jnp.float32(10.0))) >= 1
  assert int(jax.jit(run)(jnp.float32(1e-3))) == 0


@pytest.mark.parametrize("kwargs", [dict(eta=0.0), dict(eta=-1.0),
                                    dict(eta=0.1, min_micro_batches=1),
                                    dict(eta=0.1, min_micro_batches=5, max_micro_batches=4)])
def test_bad_arguments_are_refused(kwargs):
  with pytest.raises(ValueError, match="adaptive_batch"):
    ol.contrib.adaptive_batch(optax.sgd(1.0), **kwargs)
