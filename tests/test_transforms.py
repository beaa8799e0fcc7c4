"""Core transformations under jax.jit, against NumPy re-derivations of SPEC sections 1 and 3."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms

SVD = ol.Polar(method="svd")
STACKED = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))


# ---- NumPy reference (Flax layout, G of shape (d_in, d_out)) -------------------------


def np_polar(g):
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def np_spectral(g):  # sqrt(d_out/d_in) U V^T, and the dual norm sqrt(d_out/d_in) sum(sigma)
  i, o = g.shape
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  return np.sqrt(o / i) * np_polar(g), np.sqrt(o / i) * s.sum()


def np_colnorm(g):  # rows -> sqrt(d_out) unit rows
  g = np.asarray(g, np.float64)
  r = np.linalg.norm(g, axis=1, keepdims=True)
  return np.sqrt(g.shape[1]) * g / r, np.sqrt(g.shape[1]) * r.sum()


def np_rownorm(g):  # columns -> unit columns / sqrt(d_in)
  g = np.asarray(g, np.float64)
  c = np.linalg.norm(g, axis=0, keepdims=True)
  return g / (np.sqrt(g.shape[0]) * c), c.sum() / np.sqrt(g.shape[0])


def np_bias_rms(g):
  g = np.asarray(g, np.float64)
  return g / np.sqrt(np.mean(g**2)), np.sqrt(g.size) * np.linalg.norm(g)


def _rand(key, shape, scale=1.0, dtype=jnp.float32):
  return (scale * jax.random.normal(jax.random.key(key), shape)).astype(dtype)


def _f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _close(actual, expected, rtol=1e-5):
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(_f64(actual), expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _tree():
  return {
      "embed": {"embedding": _rand(0, (16, 8))},
      "blocks": [{"kernel": _rand(1, (8, 24))}, {"kernel": _rand(2, (8, 24))}],
      "head": {"kernel": _rand(3, (24, 16))},
      "bias": _rand(4, (24,)),
      "scale": _rand(5, (24,)),
  }


NORM_TREE = {
    "embed": {"embedding": norms.ColNorm()},
    "blocks": [{"kernel": norms.Spectral(polar=SVD)}, {"kernel": norms.Spectral(polar=SVD)}],
    "head": {"kernel": norms.RowNorm()},
    "bias": norms.BiasRMS(),
    "scale": None,
}


def _update(tx, g, params=None, state=None):
  state = tx.init(g if params is None else params) if state is None else state
  return jax.jit(tx.update)(g, state, params)


# ---- scale_by_norm --------------------------------------------------------------------


def test_scale_by_norm_tree_of_norms():
  g = _tree()
  u, state = _update(ol.scale_by_norm(NORM_TREE), g)
  assert isinstance(state, optax.EmptyState)
  _close(u["embed"]["embedding"], np_colnorm(g["embed"]["embedding"])[0])
  for k in range(2):
    _close(u["blocks"][k]["kernel"], np_spectral(g["blocks"][k]["kernel"])[0])
  _close(u["head"]["kernel"], np_rownorm(g["head"]["kernel"])[0])
  _close(u["bias"], np_bias_rms(g["bias"])[0])
  # A None norm leaves its leaf untouched.
  np.testing.assert_array_equal(np.asarray(u["scale"]), np.asarray(g["scale"]))


def test_scale_by_norm_callable():
  def pick(updates):
    return jax.tree.map(lambda x: norms.Frobenius() if x.ndim == 2 else None, updates)

  g = _tree()
  u, _ = _update(ol.scale_by_norm(pick), g)
  for path in (("embed", "embedding"), ("head", "kernel")):
    x = np.asarray(g[path[0]][path[1]], np.float64)
    _close(u[path[0]][path[1]], x / np.linalg.norm(x))
  np.testing.assert_array_equal(np.asarray(u["bias"]), np.asarray(g["bias"]))


def test_scale_by_norm_single_norm():
  g = _tree()
  u, _ = _update(ol.scale_by_norm(norms.Sign(scaled=False)), g)
  chex.assert_trees_all_equal(u, jax.tree.map(jnp.sign, g))
  u, _ = _update(ol.scale_by_norm(norms.Frobenius()), g)
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g), strict=True):
    b = np.asarray(b, np.float64)
    _close(a, b / np.linalg.norm(b))


def test_scale_by_norm_with_specs():
  g = {"stack": _rand(6, (3, 8, 24)), "w": _rand(7, (24, 8))}
  tx = ol.scale_by_norm(norms.Spectral(polar=SVD), specs={"stack": STACKED, "w": None})
  u, _ = _update(tx, g)
  for k in range(3):
    _close(u["stack"][k], np_spectral(g["stack"][k])[0])
  _close(u["w"], np_spectral(g["w"])[0])


def test_batched_equals_per_leaf():
  # Same-shape spectral leaves are stacked into one polar call; results must not change.
  g = {
      "a": _rand(10, (8, 24)),
      "b": _rand(11, (8, 24), scale=1e-3),
      "c": _rand(12, (24, 8)),
      "d": _rand(13, (2, 8, 24), scale=1e3),
      "e": _rand(14, (8, 24)),
      "bias": _rand(15, (24,)),
  }
  nrms = {
      "a": norms.Spectral(),
      "b": norms.Spectral(),
      "c": norms.Spectral(),
      "d": norms.Spectral(),
      "e": norms.Spectral(scaled=False),
      "bias": norms.BiasRMS(),
  }
  specs = {"a": None, "b": None, "c": None, "d": STACKED, "e": None, "bias": None}
  batched, _ = _update(ol.scale_by_norm(nrms, specs=specs, batch=True), g)
  single, _ = _update(ol.scale_by_norm(nrms, specs=specs, batch=False), g)
  chex.assert_trees_all_close(batched, single, atol=1e-5)
  # Leaves of one shape but different scales or norms are not mixed up by the stacking.
  i_a, i_b = np.asarray(batched["a"]), np.asarray(batched["b"])
  np.testing.assert_allclose(np.linalg.svd(i_a, compute_uv=False).mean(), np.sqrt(3), rtol=0.1)
  np.testing.assert_allclose(np.linalg.svd(i_b, compute_uv=False).mean(), np.sqrt(3), rtol=0.1)
  s_e = np.linalg.svd(np.asarray(batched["e"]), compute_uv=False)
  np.testing.assert_allclose(s_e.mean(), 1.0, rtol=0.1)  # scaled=False: plain polar


@pytest.mark.parametrize(
    "nrm, np_lmo",
    [(norms.Spectral(polar=SVD), np_spectral), (norms.ColNorm(), np_colnorm)],
    ids=["Spectral", "ColNorm"],
)
def test_dual_clip(nrm, np_lmo):
  rho = 2.0
  tx = optax.chain(ol.scale_by_norm(nrm, dual_clip=rho), ol.scale_by_radius(rho))
  for scale in (1e-3, 1e3):  # small gradients: step ||g||_* lmo; large: rho lmo
    g = _rand(20, (8, 24), scale=scale)
    lmo, dual = np_lmo(g)
    assert (dual < rho) == (scale < 1)
    u, _ = _update(tx, g)
    _close(u, min(rho, dual) * lmo)
  # Per matrix of a stack: one small and one large matrix land in different regimes.
  g = jnp.stack([_rand(21, (8, 24), scale=1e-3), _rand(22, (8, 24), scale=1e3)])
  tx = optax.chain(
      ol.scale_by_norm(nrm, specs=STACKED, dual_clip=rho), ol.scale_by_radius(rho)
  )
  u, _ = _update(tx, g)
  for k in range(2):
    lmo, dual = np_lmo(g[k])
    _close(u[k], min(rho, dual) * lmo)


@pytest.mark.parametrize("convention", ["reference", "per_tap"])
def test_dual_clip_spectral_conv_per_matrix(convention):
  # The clip acts per matrix of the view (summed over the taps of a per-tap kernel).
  rho = 1.0
  g = jnp.stack([_rand(23, (3, 3, 4, 8), scale=1e-3), _rand(24, (3, 3, 4, 8), scale=1e3)])
  spec = ol.MatrixSpec(fan_in=(1, 2, 3), fan_out=(4,))
  nrm = norms.SpectralConv(polar=SVD, convention=convention)
  tx = optax.chain(ol.scale_by_norm(nrm, specs=spec, dual_clip=rho), ol.scale_by_radius(rho))
  u, _ = _update(tx, g)
  f = np.sqrt(8 / 4) / 9
  for k in range(2):
    mats = np.asarray(g[k], np.float64).reshape(-1, 4, 8) if convention == "per_tap" else (
        np.asarray(g[k], np.float64).reshape(1, 36, 8))
    lmo = np.stack([f * np_polar(t) for t in mats]).reshape(3, 3, 4, 8)
    dual = f * sum(np.linalg.svd(t, compute_uv=False).sum() for t in mats)
    _close(u[k], min(rho, dual) * lmo)


# ---- orthogonalize and sign -------------------------------------------------------------


def test_orthogonalize():
  g = {"wide": _rand(30, (8, 24)), "tall": _rand(31, (24, 8))}
  u, _ = _update(ol.orthogonalize(method="svd"), g)
  for k in g:
    _close(u[k], np_spectral(g[k])[0])
  u, _ = _update(ol.orthogonalize(method="svd", scaled=False), g)
  for k in g:
    _close(u[k], np_polar(g[k]))
  u, _ = _update(ol.orthogonalize(method="svd", input_layer=True), g)
  _close(u["wide"], np.sqrt(3.0) * np_polar(g["wide"]))
  _close(u["tall"], np_polar(g["tall"]))  # max(1, sqrt(8/24)) = 1
  # The default (Newton–Schulz) path: singular values within the polar_express band.
  u, _ = _update(ol.orthogonalize(), g)
  for k in g:
    i, o = g[k].shape
    s = np.linalg.svd(_f64(u[k]) / np.sqrt(o / i), compute_uv=False)
    assert 0.86 <= s.min() and s.max() <= 1.13


def test_orthogonalize_stacked_and_errors():
  g = {"stack": _rand(32, (3, 8, 24))}
  u, _ = _update(ol.orthogonalize(method="svd", specs={"stack": STACKED}), g)
  for k in range(3):
    _close(u["stack"][k], np_spectral(g["stack"][k])[0])
  with pytest.raises(ValueError, match="stack"):
    _update(ol.orthogonalize(), g)
  with pytest.raises(ValueError, match="bias"):
    _update(ol.orthogonalize(), {"bias": jnp.ones(4)})


def test_sign():
  g = _tree()
  u, _ = _update(ol.sign(), g)
  chex.assert_trees_all_equal(u, jax.tree.map(jnp.sign, g))
  w = _rand(33, (8, 24))
  u, _ = _update(ol.sign(scaled=True), w)
  np.testing.assert_array_equal(np.asarray(u), np.sign(np.asarray(w)) / 8)  # sign(G) / d_in
  z, _ = _update(ol.sign(), jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(z), 0.0)


# ---- scale_by_radius -----------------------------------------------------------------


def test_scale_by_radius():
  u = {"a": jnp.ones(3), "b": jnp.ones((2, 2)), "c": jnp.ones(2, jnp.bfloat16)}
  out, _ = _update(ol.scale_by_radius(3.0), u)
  chex.assert_trees_all_equal(out, jax.tree.map(lambda x: 3 * x, u))
  assert out["c"].dtype == jnp.bfloat16
  out, _ = _update(ol.scale_by_radius({"a": 2.0, "b": None, "c": jnp.float32(50.0)}), u)
  np.testing.assert_array_equal(np.asarray(out["a"]), 2.0)
  np.testing.assert_array_equal(np.asarray(out["b"]), 1.0)
  np.testing.assert_array_equal(_f64(out["c"]), 50.0)
  out, _ = _update(ol.scale_by_radius(lambda t: jax.tree.map(lambda x: float(x.ndim), t)), u)
  np.testing.assert_array_equal(np.asarray(out["b"]), 2.0)
  with pytest.raises(ValueError, match="radius"):
    _update(ol.scale_by_radius({"a": 1.0}), u)


# ---- momentum ---------------------------------------------------------------------------


def np_momentum(grads, alpha, nesterov, bias_correction):
  """SPEC section 1: d <- (1 - alpha) d + alpha g; Nesterov feeds (1 - alpha) d + alpha g."""
  d, outs, beta = 0.0, [], 1 - alpha
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    d = beta * d + alpha * g
    c_g = 1 - beta**t if bias_correction else 1.0
    if nesterov:
      c_d = 1 - beta ** (t + 1) if bias_correction else 1.0
      outs.append(beta * d / c_d + alpha * g / c_g)
    else:
      outs.append(d / c_g)
  return outs


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_matches_numpy(nesterov, bias_correction):
  alpha = 0.1
  grads = [_rand(40 + t, (4, 6)) for t in range(5)]
  tx = ol.momentum(alpha, nesterov=nesterov, bias_correction=bias_correction)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros((4, 6)))
  expected = np_momentum(grads, alpha, nesterov, bias_correction)
  for t, (g, e) in enumerate(zip(grads, expected, strict=True), start=1):
    out, state = update(g, state)
    _close(out, e)
    assert int(state.count) == t
  assert update._cache_size() == 1  # no retrace after the first call


def test_momentum_alpha_one_is_identity():
  tx = ol.momentum(1.0)
  g = _rand(50, (3, 5))
  out, _ = _update(tx, g, params=jnp.zeros((3, 5)))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(g))
  with pytest.raises(ValueError, match="alpha"):
    ol.momentum(0.0)
  with pytest.raises(ValueError, match="alpha"):
    ol.momentum(1.5)


def test_momentum_state_is_eager_float32():
  params = {"w": jnp.zeros((4, 6), jnp.bfloat16), "b": jnp.zeros(6, jnp.bfloat16)}
  tx = ol.momentum(0.1)
  state = tx.init(params)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  chex.assert_trees_all_equal_shapes(state.trace, params)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trace))
  update = jax.jit(tx.update)
  for grads in (
      jax.tree.map(lambda p: jnp.ones_like(p), params),  # bf16 gradients
      jax.tree.map(lambda p: jnp.zeros_like(p), params),  # zero gradients
  ):
    out, new_state = update(grads, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
  # float32 gradients for the same bf16 params: same state structure and dtypes.
  out, new_state = jax.jit(tx.update)(jax.tree.map(lambda p: p.astype(jnp.float32), params), state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  # mu_dtype=None keeps the parameters' dtype.
  state16 = ol.momentum(0.1, mu_dtype=None).init(params)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state16.trace))


# ---- add_constrained_decay: the SCG step ------------------------------------------------


def test_constrained_step_equals_scg():
  lr, rho = 0.1, 3.0
  params = {"w": _rand(60, (8, 24)), "e": _rand(61, (16, 8)), "b": _rand(62, (24,))}
  grads = {"w": _rand(63, (8, 24)), "e": _rand(64, (16, 8)), "b": _rand(65, (24,))}
  nrms = {"w": norms.Spectral(polar=SVD), "e": norms.ColNorm(), "b": norms.BiasRMS()}
  tx = optax.chain(
      ol.scale_by_norm(nrms),
      ol.scale_by_radius(rho),
      ol.add_constrained_decay(1.0),
      optax.scale_by_learning_rate(lr),
  )
  updates, _ = _update(tx, grads, params=params)
  new = optax.apply_updates(params, updates)
  lmos = {
      "w": np_spectral(grads["w"])[0],
      "e": np_colnorm(grads["e"])[0],
      "b": np_bias_rms(grads["b"])[0],
  }
  for k in params:  # W <- (1 - lr) W - lr rho u
    _close(new[k], (1 - lr) * _f64(params[k]) - lr * rho * lmos[k])


def test_constrained_decay_per_leaf_and_errors():
  params = {"a": jnp.ones(3), "b": jnp.ones(3)}
  u = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
  out, _ = _update(ol.add_constrained_decay({"a": 0.5, "b": None}), u, params=params)
  np.testing.assert_array_equal(np.asarray(out["a"]), 0.5)
  np.testing.assert_array_equal(np.asarray(out["b"]), 0.0)
  with pytest.raises(ValueError, match="params"):
    ol.add_constrained_decay().update(u, optax.EmptyState())


# ---- errors name the leaf path ----------------------------------------------------------


def test_int_leaf_gives_type_error_with_path():
  g = {"layer": {"count": jnp.arange(3)}, "w": jnp.ones((2, 3))}
  with pytest.raises(TypeError, match="layer/count"):
    _update(ol.scale_by_norm(norms.Sign(scaled=False)), g)
  # Mapped to None it passes through.
  u, _ = _update(ol.scale_by_norm({"layer": {"count": None}, "w": norms.Frobenius()}), g)
  np.testing.assert_array_equal(np.asarray(u["layer"]["count"]), np.arange(3))


def test_3d_leaf_without_spec_gives_value_error_with_path():
  g = {"blocks": [{"qkv": {"kernel": jnp.ones((2, 8, 24))}}]}
  with pytest.raises(ValueError, match="blocks/0/qkv/kernel") as e:
    _update(ol.scale_by_norm(norms.Spectral()), g)
  assert "MatrixSpec" in str(e.value)
  with pytest.raises(ValueError, match="blocks/0/qkv/kernel"):
    _update(ol.scale_by_norm(norms.RowNorm()), g)


def test_mismatched_norm_tree_raises():
  with pytest.raises(ValueError, match="structure"):
    _update(ol.scale_by_norm({"a": norms.Frobenius()}), {"a": jnp.ones(2), "b": jnp.ones(2)})
  with pytest.raises(TypeError, match="a: expected a Norm"):
    _update(ol.scale_by_norm({"a": "spectral"}), {"a": jnp.ones((2, 2))})
