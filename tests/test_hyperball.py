"""The hyperball (MuonH, AdamH): every sphere leaf keeps its initial Frobenius norm, and a
step is the formula's, re-derived in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo._src.hyperball import scale_by_hyperball


def _np_polar(m):
  u, _, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
  return u @ vt


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {"embed": {"embedding": jax.random.normal(k[0], (12, 8))},
          "fc": {"kernel": jax.random.normal(k[1], (8, 16)) * 0.3, "bias": jnp.zeros(16)},
          "head": {"kernel": jax.random.normal(k[2], (16, 12)) * 0.1},
          "stack": {"kernel": jax.random.normal(k[3], (3, 8, 8))}}


def _rules():
  stacked = ol.Group(ol.norms.Spectral(), spec=ol.MatrixSpec(fan_in=(1,), fan_out=(2,)),
                     role="hidden")
  return ol.Rules([("stack", stacked)], fallback=ol.muon_rules().fallback)


def _loss(p):
  x = jnp.arange(12) % 12
  h = jax.nn.relu(p["embed"]["embedding"][x] @ p["fc"]["kernel"] + p["fc"]["bias"])
  h = jnp.einsum("bi,lij->bj", h[:, :8], p["stack"]["kernel"]) @ p["fc"]["kernel"]
  return optax.softmax_cross_entropy_with_integer_labels(h @ p["head"]["kernel"],
                                                         (x + 1) % 12).mean()


@pytest.mark.parametrize("lr", [0.01, 0.3, 2.0])
def test_every_sphere_matrix_keeps_its_initial_norm(lr):
  """The hidden matrices (each layer of a stack on its own) and the head, over 20 steps of
  a schedule; the loss goes down, the other leaves move freely."""
  params = _params()
  tx = ol.contrib.hyperball(optax.linear_schedule(lr, lr / 4, 20), rules=_rules())
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  norms0 = {"fc": np.linalg.norm(params["fc"]["kernel"]),
            "head": np.linalg.norm(params["head"]["kernel"]),
            "stack": np.linalg.norm(params["stack"]["kernel"], axis=(1, 2))}
  p = params
  for _ in range(20):
    u, state = step(p, state)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.linalg.norm(p["fc"]["kernel"]), norms0["fc"], rtol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(p["head"]["kernel"]), norms0["head"], rtol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(p["stack"]["kernel"], axis=(1, 2)),
                               norms0["stack"], rtol=2e-6)
  assert not np.allclose(p["fc"]["kernel"], params["fc"]["kernel"])
  assert not np.allclose(p["embed"]["embedding"], params["embed"]["embedding"])
  if lr < 1:
    assert _loss(p) < _loss(params)


def test_one_step_is_the_formula():
  """MuonH on a hidden matrix (beta = 0: the polar factor of the gradient) and AdamH on the
  head (Adam's first step: the sign of the gradient), in NumPy."""
  params = _params(1)
  grads = jax.grad(_loss)(params)
  lr = 0.05
  tx = ol.contrib.hyperball(lr, beta=0.0, rules=_rules(), polar=ol.Polar(method="svd"),
                            adam_eps=1e-12)
  u, _ = tx.update(grads, tx.init(params), params)

  def sphere_step(w, d):
    w, d = np.asarray(w, np.float64), np.asarray(d, np.float64)
    r = np.linalg.norm(w)
    moved = w - lr * d * r / np.linalg.norm(d)
    return moved * r / np.linalg.norm(moved) - w

  fc = sphere_step(params["fc"]["kernel"], _np_polar(grads["fc"]["kernel"]))
  np.testing.assert_allclose(u["fc"]["kernel"], fc, atol=1e-6)
  head = sphere_step(params["head"]["kernel"], np.sign(grads["head"]["kernel"]))
  np.testing.assert_allclose(u["head"]["kernel"], head, atol=1e-6)
  for i in range(3):
    want = sphere_step(params["stack"]["kernel"][i], _np_polar(grads["stack"]["kernel"][i]))
    np.testing.assert_allclose(u["stack"]["kernel"][i], want, atol=1e-6)


def test_zero_gradients_move_nothing_and_zero_matrices_stay_zero():
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = ol.contrib.hyperball(0.1, rules=_rules())
  u, _ = tx.update(zeros, tx.init(params), params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  tx = scale_by_hyperball(0.1)
  w = jnp.zeros((4, 6))
  u, _ = tx.update(jnp.ones((4, 6)), tx.init(w), w)
  assert bool(jnp.all(u == 0)) and bool(jnp.all(jnp.isfinite(u)))


def test_the_radius_is_the_stored_one_so_rounding_does_not_accumulate():
  """bfloat16 parameters round each step; the next step puts them back on the float32 sphere."""
  w = jax.random.normal(jax.random.key(0), (32, 32)).astype(jnp.bfloat16)
  tx = scale_by_hyperball(0.05)
  state = tx.init(w)
  assert state.radius.dtype == jnp.float32
  r0 = float(state.radius[0])
  for seed in range(30):
    d = jax.random.normal(jax.random.key(seed + 1), w.shape)
    u, state = tx.update(d, state, w)
    w = optax.apply_updates(w, u)
    assert abs(float(jnp.linalg.norm(w.astype(jnp.float32))) - r0) < 2e-2 * r0
  assert float(state.radius[0]) == r0


def test_needs_the_parameters():
  tx = scale_by_hyperball(0.1)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
