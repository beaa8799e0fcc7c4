"""Core transformations under jax.jit, against NumPy re-derivations of SPEC sections 1 and 3."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src import momentum as momentum_lib

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


def test_scale_by_norm_tree_matched_by_path():
  # A norm tree with other container types but the same leaf paths ("blocks/0/kernel").
  g = _tree()
  by_path = dict(NORM_TREE, blocks={"0": {"kernel": norms.Frobenius()}, "1": {"kernel": None}})
  u, _ = _update(ol.scale_by_norm(by_path), g)
  x = np.asarray(g["blocks"][0]["kernel"], np.float64)
  _close(u["blocks"][0]["kernel"], x / np.linalg.norm(x))
  np.testing.assert_array_equal(np.asarray(u["blocks"][1]["kernel"]),
                                np.asarray(g["blocks"][1]["kernel"]))
  _close(u["embed"]["embedding"], np_colnorm(g["embed"]["embedding"])[0])
  np.testing.assert_array_equal(np.asarray(u["scale"]), np.asarray(g["scale"]))


def test_tree_for_the_whole_model_serves_a_partitioned_part():
  # optax.partition hands each inner transformation only its own leaves; a norm tree
  # (and radius tree) built for the full parameter tree still matches them by path.
  g = _tree()
  labels = {"embed": {"embedding": "sgd"}, "blocks": ["lmo", "sgd"], "head": {"kernel": "lmo"},
            "bias": "lmo", "scale": "sgd"}
  radii = jax.tree.map(lambda _: 2.0, g)
  lmo = optax.chain(ol.scale_by_norm(NORM_TREE), ol.scale_by_radius(radii))
  tx = optax.partition({"lmo": lmo, "sgd": optax.scale(-1.0)}, labels)
  u, _ = _update(tx, g)
  _close(u["blocks"][0]["kernel"], 2.0 * np_spectral(g["blocks"][0]["kernel"])[0])
  _close(u["head"]["kernel"], 2.0 * np_rownorm(g["head"]["kernel"])[0])
  _close(u["bias"], 2.0 * np_bias_rms(g["bias"])[0])
  for x, y in ((u["embed"]["embedding"], g["embed"]["embedding"]),
               (u["blocks"][1]["kernel"], g["blocks"][1]["kernel"]), (u["scale"], g["scale"])):
    np.testing.assert_array_equal(np.asarray(x), -np.asarray(y))


def test_missing_leaf_in_per_leaf_tree_is_named():
  g = {"a": jnp.ones((2, 2)), "b": {"c": jnp.ones(2)}}
  with pytest.raises(ValueError, match="b/c: the norm tree has no entry for this leaf"):
    _update(ol.scale_by_norm({"a": norms.Frobenius()}), g)
  with pytest.raises(ValueError, match="b/c: the MatrixSpec tree has no entry"):
    _update(ol.scale_by_norm(norms.Frobenius(), specs={"a": None}), g)
  with pytest.raises(ValueError, match="b/c: the dual_clip radius tree has no entry"):
    _update(ol.scale_by_norm(norms.Frobenius(), dual_clip={"a": 1.0}), g)
  with pytest.raises(ValueError, match="b/c: the weight_decay tree has no entry"):
    _update(ol.add_constrained_decay({"a": 1.0}), g, params=g)
  # Callables were the old way to pick per leaf; they are refused, not silently called.
  with pytest.raises(TypeError, match="expected a Norm"):
    _update(ol.scale_by_norm(lambda t: jax.tree.map(lambda _: norms.Frobenius(), t)), g)


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
  # A radius tree with more leaves than the updates (built for the whole model) is fine.
  out, _ = _update(ol.scale_by_radius({"a": 2.0, "b": 4.0, "c": 1.0, "extra": 9.0}), u)
  np.testing.assert_array_equal(np.asarray(out["b"]), 4.0)
  # One array radius is broadcast to every leaf, as a single number is.
  out, _ = _update(ol.scale_by_radius(jnp.float32(5.0)), u)
  np.testing.assert_array_equal(_f64(out["c"]), 5.0)
  with pytest.raises(ValueError, match="b: the radius tree has no entry"):
    _update(ol.scale_by_radius({"a": 1.0, "c": 1.0}), u)


# ---- momentum ---------------------------------------------------------------------------


def np_momentum(grads, beta, nesterov, bias_correction):
  """SPEC section 1: d <- beta d + (1 - beta) g; Nesterov feeds beta d + (1 - beta) g."""
  d, outs = 0.0, []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    d = beta * d + (1 - beta) * g
    c_g = 1 - beta**t if bias_correction else 1.0
    if nesterov:
      c_d = 1 - beta ** (t + 1) if bias_correction else 1.0
      outs.append(beta * d / c_d + (1 - beta) * g / c_g)
    else:
      outs.append(d / c_g)
  return outs


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_matches_numpy(nesterov, bias_correction):
  beta = 0.9
  grads = [_rand(40 + t, (4, 6)) for t in range(5)]
  tx = ol.momentum(beta, nesterov=nesterov, bias_correction=bias_correction)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros((4, 6)))
  expected = np_momentum(grads, beta, nesterov, bias_correction)
  for t, (g, e) in enumerate(zip(grads, expected, strict=True), start=1):
    out, state = update(g, state)
    _close(out, e)
    assert int(state.count) == t
  assert update._cache_size() == 1  # no retrace after the first call


def test_momentum_matches_optax_trace():
  # beta means what optax's trace decay means: the (1 - beta)-scaled EMA of optax.ema.
  grads = [_rand(45 + t, (4, 6)) for t in range(4)]
  ours, ref = ol.momentum(0.8), optax.ema(0.8, debias=False)
  s, r = ours.init(grads[0]), ref.init(grads[0])
  for g in grads:
    out, s = ours.update(g, s)
    exp, r = ref.update(g, r)
    _close(out, _f64(exp))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_beta_zero_is_identity(nesterov):
  tx = ol.momentum(0.0, nesterov=nesterov)
  state = tx.init(jnp.zeros((3, 5)))
  for key in (50, 51):  # the second gradient must not see the first
    g = _rand(key, (3, 5))
    out, state = jax.jit(tx.update)(g, state)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(g))
  for beta in (1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
      ol.momentum(beta)


def test_momentum_state_is_eager_float32():
  params = {"w": jnp.zeros((4, 6), jnp.bfloat16), "b": jnp.zeros(6, jnp.bfloat16)}
  tx = ol.momentum(0.9)
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


@pytest.mark.parametrize(
    "param_dtype, mu_dtype, state_dtype",
    [
        (jnp.float32, None, jnp.float32),
        (jnp.bfloat16, None, jnp.float32),
        (jnp.float16, None, jnp.float32),
        (jnp.float32, jnp.bfloat16, jnp.bfloat16),  # an explicit mu_dtype is honoured
        (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
        (jnp.bfloat16, "float32", jnp.float32),
    ],
)
def test_momentum_state_dtype(param_dtype, mu_dtype, state_dtype):
  params = {"w": jnp.zeros((4, 6), param_dtype), "b": jnp.zeros(6, param_dtype)}
  tx = ol.momentum(0.9, mu_dtype=mu_dtype)
  state = tx.init(params)
  assert all(x.dtype == state_dtype for x in jax.tree.leaves(state.trace))
  assert momentum_lib.state_dtype(param_dtype, mu_dtype) == state_dtype
  out, new_state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)  # stays stable across steps
  assert all(x.dtype == param_dtype for x in jax.tree.leaves(out))


def test_momentum_state_follows_float64_params_under_x64():
  with jax.enable_x64(True):
    params = jnp.zeros((3, 4), jnp.float64)
    tx = ol.momentum(0.9)
    state = tx.init(params)
    assert state.trace.dtype == jnp.float64 and momentum_lib.state_dtype(jnp.float64) == jnp.float64
    g = jnp.full((3, 4), 1.0 + 2.0**-40, jnp.float64)  # not representable in float32
    out, state = jax.jit(tx.update)(g, state)
    assert state.trace.dtype == jnp.float64 and out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), (1 - 0.9) * np.asarray(g), rtol=1e-14)
    assert ol.momentum(0.9, mu_dtype=jnp.float32).init(params).trace.dtype == jnp.float32


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
  with pytest.raises(ValueError, match="^b: the norm tree has no entry for this leaf"):
    _update(ol.scale_by_norm({"a": norms.Frobenius()}), {"a": jnp.ones(2), "b": jnp.ones(2)})
  with pytest.raises(TypeError, match="a: expected a Norm"):
    _update(ol.scale_by_norm({"a": "spectral"}), {"a": jnp.ones((2, 2))})
