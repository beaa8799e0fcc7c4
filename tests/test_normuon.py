"""NorMuon's row normalization: the paper's update and dion's formulas, re-derived in NumPy.

Both references are written here in PyTorch's ``(out, in)`` layout (a neuron is a row)
and compared with the library in Flax's ``(in, out)`` layout (a neuron is a column),
so a layout slip fails them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo._src.normuon import ScaleByRowRmsState

SVD = ol.Polar(method="svd")  # the exact polar factor: the references use the SVD too


def _nu(state):
  """The second moments in an optimizer's state (the one ScaleByRowRmsState in it)."""
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, ScaleByRowRmsState)) if isinstance(x, ScaleByRowRmsState)]
  return found.nu


def _polar_np(m):
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  return u @ vt


def _grads(shape, steps, seed=0):
  return [np.random.default_rng(seed + t).standard_normal(shape).astype(np.float32)
          for t in range(steps)]


def _paper_updates(grads_flax, lr, beta1, beta2, eps=1e-8):
  """NorMuon's Algorithm (arXiv:2510.05491) in NumPy float64, PyTorch layout, no decay.

  M_t = b1 M + (1 - b1) G; O = polar(M); v = b2 v + (1 - b2) mean_cols(O * O);
  O_hat = O / (sqrt(v) + eps); step = 0.2 lr sqrt(m n) / ||O_hat||_F * O_hat.
  Returns each step's update in Flax layout and the final v.
  """
  m_buf, v, out = 0.0, 0.0, []
  for g in grads_flax:
    g = np.asarray(g, np.float64).T  # (out, in)
    m_buf = beta1 * m_buf + (1 - beta1) * g
    o = _polar_np(m_buf)
    v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=1, keepdims=True)  # one per row
    o_hat = o / (np.sqrt(v) + eps)
    m, n = o.shape
    out.append(-(0.2 * lr * np.sqrt(m * n) / np.linalg.norm(o_hat)) * o_hat.T)
  return out, v[:, 0]


def _dion_normalize(u, v, beta2):
  """microsoft/dion ``normuon.py``'s ``_normuon_normalization_core`` in NumPy: ``u`` is
  ``(..., out, in)``, ``v`` is ``(..., out, 1)``; returns the new ``u`` and ``v``."""
  norm_u = np.linalg.norm(u, axis=(-2, -1), keepdims=True)
  neuron = np.mean(u * u, axis=-1, keepdims=True)
  v = v + (1 - beta2) * (neuron - v)  # torch.lerp(v, neuron, 1 - beta2)
  normalized = u / (np.sqrt(v) + 1e-8)
  norm_new = np.maximum(np.linalg.norm(normalized, axis=(-2, -1), keepdims=True), 1e-8)
  return normalized * (norm_u / norm_new), v


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_normuon_follows_the_papers_update_step_by_step(shape):
  """Each step's direction is the paper's; its length is Muon's (the LMO's Frobenius norm)."""
  lr, rho, beta1, beta2 = 0.02, 1.5, 0.9, 0.95
  grads = _grads(shape, 5)
  want, v_paper = _paper_updates(grads, lr, beta1, beta2)
  tx = ol.contrib.normuon(lr, beta=beta1, beta2=beta2, nesterov=False, polar=SVD,
                          rules=[(".*", ol.Group(ol.norms.Spectral(), radius=rho))])
  w = jnp.zeros(shape)
  state = tx.init(w)
  step = jax.jit(tx.update)
  d_in, d_out = shape
  factor = np.sqrt(d_out / d_in)  # the Spectral LMO is factor * polar
  for g, ref in zip(grads, want, strict=True):
    u, state = step(jnp.asarray(g), state, w)
    u = np.asarray(u, np.float64)
    np.testing.assert_allclose(u / np.linalg.norm(u), ref / np.linalg.norm(ref), atol=2e-5)
    assert np.linalg.norm(u) == pytest.approx(lr * rho * factor * np.sqrt(min(shape)), rel=1e-5)
  nu = _nu(state)  # (matrices, d_out)
  np.testing.assert_allclose(nu[0], factor**2 * v_paper, rtol=1e-4)  # of factor * polar


@pytest.mark.parametrize("blocks", [1, 3])
def test_the_transform_matches_dions_normalization_over_steps(blocks):
  """scale_by_row_rms on a (d, 3d) kernel, whole or as q, k, v blocks, against dion's code
  (whose ``split_sizes`` split the rows, the output neurons, of a fused weight)."""
  d, beta2 = 16, 0.9
  spec = ol.MatrixSpec(out_blocks=blocks)
  tx = ol.contrib.scale_by_row_rms(beta2, specs=spec)
  state = tx.init(jnp.zeros((d, 3 * d)))
  v = np.zeros((blocks, 3 * d // blocks, 1))
  for t, g in enumerate(_grads((d, 3 * d), 4, seed=7)):
    o = g * (1.0 + t)  # directions of changing size, as momentum gives
    u, state = jax.jit(tx.update)(jnp.asarray(o), state)
    parts = np.split(np.asarray(o, np.float64).T, blocks, axis=0)  # (out, in) row blocks
    want, v = _dion_normalize(np.stack(parts), v, beta2)
    np.testing.assert_allclose(np.asarray(u), np.concatenate(list(want), 0).T, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(state.nu, v[..., 0], rtol=1e-5)


def test_zero_directions_and_zero_neurons_stay_zero_without_nan():
  tx = ol.contrib.scale_by_row_rms()
  o = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
  o[:, 2] = 0.0  # a dead neuron
  state = tx.init(jnp.zeros((8, 6)))
  for x in (np.zeros_like(o), o, np.zeros_like(o)):
    u, state = tx.update(jnp.asarray(x), state)
    assert bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(jnp.isfinite(state.nu)))
    assert bool(jnp.all(u[:, 2] == 0))
    if not x.any():
      assert bool(jnp.all(u == 0))
  # the second moment only decays on the zero steps
  np.testing.assert_allclose(state.nu[0], 0.95 * 0.05 * np.mean(o * o, axis=0), rtol=1e-5)


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
def test_the_frobenius_norm_is_kept_and_the_result_is_homogeneous(c):
  tx = ol.contrib.scale_by_row_rms()
  o = np.random.default_rng(1).standard_normal((12, 20)).astype(np.float32)
  u1, _ = tx.update(jnp.asarray(o), tx.init(jnp.zeros(o.shape)))
  uc, _ = tx.update(jnp.asarray(c * o), tx.init(jnp.zeros(o.shape)))
  assert float(jnp.linalg.norm(uc)) == pytest.approx(c * np.linalg.norm(o), rel=1e-5)
  np.testing.assert_allclose(np.asarray(uc) / c, np.asarray(u1), rtol=1e-4, atol=1e-6)


def test_only_spectral_leaves_change_and_the_state_is_float32():
  norms = {"w": ol.norms.Spectral(), "b": ol.norms.BiasRMS(), "e": ol.norms.ColNorm(),
           "z": None}
  params = {"w": jnp.zeros((6, 4), jnp.bfloat16), "b": jnp.zeros(4, jnp.bfloat16),
            "e": jnp.zeros((5, 4)), "z": jnp.zeros(3)}
  tx = ol.contrib.scale_by_row_rms(norms=norms)
  state = tx.init(params)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
  assert state.nu["w"].shape == (1, 4) and state.nu["b"].shape == ()
  g = jax.tree.map(lambda p: jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) - 3, params)
  u, _ = tx.update(g, state)
  for k in ("b", "e", "z"):
    np.testing.assert_array_equal(u[k], g[k])
  assert u["w"].dtype == jnp.bfloat16 and not np.array_equal(u["w"], g["w"])


def test_stacked_layers_are_normalized_one_matrix_at_a_time():
  spec = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))
  tx = ol.contrib.scale_by_row_rms(specs=spec)
  o = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 5)), jnp.float32)
  u, state = tx.update(o, tx.init(o))
  single = ol.contrib.scale_by_row_rms()
  for i in range(3):
    ui, si = single.update(o[i], single.init(o[i]))
    np.testing.assert_allclose(u[i], ui, rtol=1e-6)
    np.testing.assert_allclose(state.nu[i], si.nu[0], rtol=1e-6)


def test_per_tap_conv_kernels_share_each_neurons_second_moment_over_taps():
  norm = ol.norms.SpectralConv(convention="per_tap")
  tx = ol.contrib.scale_by_row_rms(norms=norm)
  o = np.random.default_rng(3).standard_normal((3, 3, 4, 6)).astype(np.float32)
  _, state = tx.update(jnp.asarray(o), tx.init(jnp.zeros(o.shape)))
  np.testing.assert_allclose(state.nu[0], 0.05 * np.mean(o * o, axis=(0, 1, 2)), rtol=1e-5)


def test_scion_and_muon_take_row_norm_and_it_changes_only_the_spectral_direction():
  params = {"embed": {"embedding": jnp.ones((10, 8)) / 3},
            "fc": {"kernel": jnp.eye(8), "bias": jnp.zeros(8)},
            "head": {"kernel": jnp.ones((8, 10)) / 10}}
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  for make in (ol.scion, ol.unconstrained_scion, ol.muon):
    plain, normed = make(0.1), make(0.1, row_norm=True)
    u0, _ = plain.update(grads, plain.init(params), params)
    u1, _ = normed.update(grads, normed.init(params), params)
    for path in (("embed", "embedding"), ("fc", "bias"), ("head", "kernel")):
      np.testing.assert_allclose(u1[path[0]][path[1]], u0[path[0]][path[1]], rtol=1e-6)
    a, b = u0["fc"]["kernel"], u1["fc"]["kernel"]
    if make is ol.scion:  # minus the constrained decay lr * W, the same length
      a, b = a + 0.1 * params["fc"]["kernel"], b + 0.1 * params["fc"]["kernel"]
    assert float(jnp.linalg.norm(b)) == pytest.approx(float(jnp.linalg.norm(a)), rel=1e-5)
    assert not np.allclose(a, b, atol=1e-4)


def test_injected_beta2_is_the_one_used():
  params = {"w": jnp.eye(6)}
  tx = optax.inject_hyperparams(ol.contrib.normuon)(learning_rate=0.1, beta=0.0, beta2=0.5)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for seed in range(3):
    g = {"w": jax.random.normal(jax.random.key(seed), (6, 6))}
    _, state = step(g, state, params)
  plain = ol.contrib.normuon(0.1, beta=0.0, beta2=0.5)
  s = plain.init(params)
  for seed in range(3):
    _, s = plain.update({"w": jax.random.normal(jax.random.key(seed), (6, 6))}, s, params)
  np.testing.assert_allclose(_nu(state)["w"], _nu(s)["w"], rtol=1e-5)
  state.hyperparams["beta2"] = jnp.asarray(0.9, jnp.float32)  # mid-run: a new decay, no retrace
  nu_before = _nu(state)["w"]
  g = {"w": jax.random.normal(jax.random.key(9), (6, 6))}
  _, state = step(g, state, params)
  o = np.asarray(ol.orthogonalize().update(g["w"], None)[0])
  np.testing.assert_allclose(_nu(state)["w"], 0.9 * nu_before + 0.1 * np.mean(o * o, axis=0),
                             rtol=1e-4)
  assert step._cache_size() == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta2=1.0), "beta2 must be in [0, 1)"),
    (dict(beta2=-0.1), "beta2 must be in [0, 1)"),
    (dict(eps=-1.0), "eps must be a finite number >= 0"),
    (dict(eps=float("nan")), "eps must be a finite number >= 0"),
])
def test_bad_hyperparameters_are_refused_naming_them(kwargs, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
    ol.contrib.scale_by_row_rms(**kwargs)
  if "beta2" in kwargs:
    with pytest.raises(ValueError, match="normuon: row_norm_beta2 must be in"):
      ol.contrib.normuon(0.1, **kwargs)
