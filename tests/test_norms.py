"""Norms and LMOs against a NumPy re-derivation of their formulas (Flax layout).

Every expected value here is recomputed in float64 NumPy from the formulas of
Pethick et al. 2025 (Table 2; conv kernels as in LIONS-EPFL/scion) for ``G`` of
shape ``(d_in, d_out)``; nothing is compared to numbers the library produced
earlier. The LMO properties are checked for every norm: scale invariance, unit
norm of the LMO, the dual-norm identity ``<g, lmo(g)> = ||g||_*``, and
``lmo(0) = 0``.
"""


import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_lmo as ol
from optax_lmo import norms

SVD = ol.Polar(method="svd")
SCALES = (1e-20, 1e-3, 1.0, 1e3, 1e20)
# Singular values of polar_express with its default 5 steps on Gaussian inputs
# (the band of docs/polar.md for a 64x128 Gaussian).
NS_BAND = (0.86, 1.13)


# ---- NumPy reference, per matrix of a (B, d_in, d_out) stack --------------------------


def _np_polar(m):
  """U V^T of the thin SVD, dropping (numerically) zero singular values."""
  u, s, vt = np.linalg.svd(m, full_matrices=False)
  keep = s > 1e-9 * s.max() if s.max() > 0 else np.zeros_like(s, bool)
  return (u * keep) @ vt, s


def _safe(x):
  return np.where(x > 0, x, 1.0)


def ref_spectral(factor):
  def ref(M):
    lmo, norm, dual = np.zeros_like(M), [], []
    for b, m in enumerate(M):
      f = factor(*m.shape)
      p, s = _np_polar(m)
      lmo[b] = f * p
      norm.append(s.max() / f)
      dual.append(f * s.sum())
    return lmo, np.array(norm), np.array(dual)

  return ref


def ref_spectral_conv_per_tap(M):
  """M: (B, T, c_in, c_out); the taps t each get sqrt(c_out/c_in)/T * polar(G_t)."""
  _, t, ci, co = M.shape
  f = np.sqrt(co / ci) / t
  lmo, norm, dual = np.zeros_like(M), [], []
  for b in range(M.shape[0]):
    s_max, s_sum = 0.0, 0.0
    for k in range(t):
      p, s = _np_polar(M[b, k])
      lmo[b, k] = f * p
      s_max, s_sum = max(s_max, s.max()), s_sum + s.sum()
    norm.append(s_max / f)
    dual.append(f * s_sum)
  return lmo, np.array(norm), np.array(dual)


def ref_spectral_conv_reference(M):
  """M: (B, T, c_in, c_out); a kernel is one (T c_in) x c_out matrix: sqrt(c_out/c_in)/T polar."""
  b, t, ci, co = M.shape
  f = np.sqrt(co / ci) / t
  lmo, norm, dual = np.zeros_like(M), [], []
  for k in range(b):
    p, s = _np_polar(M[k].reshape(t * ci, co))
    lmo[k] = f * p.reshape(t, ci, co)
    norm.append(s.max() / f)
    dual.append(f * s.sum())
  return lmo, np.array(norm), np.array(dual)


def ref_colnorm(scaled):
  def ref(M):  # rows j (the fan-in index): sqrt(d_out) G[j, :] / ||G[j, :]||
    s = np.sqrt(M.shape[-1]) if scaled else 1.0
    r = np.linalg.norm(M, axis=-1, keepdims=True)
    return s * M / _safe(r), r[..., 0].max(-1) / s, s * r[..., 0].sum(-1)

  return ref


def ref_rownorm(scaled):
  def ref(M):  # columns i (the fan-out index): G[:, i] / (sqrt(d_in) ||G[:, i]||)
    s = np.sqrt(M.shape[-2]) if scaled else 1.0
    c = np.linalg.norm(M, axis=-2, keepdims=True)
    return M / (s * _safe(c)), s * c[..., 0, :].max(-1), c[..., 0, :].sum(-1) / s

  return ref


def ref_sign(scaled):
  def ref(M):
    s = M.shape[-2] if scaled else 1.0
    a = np.abs(M)
    return np.sign(M) / s, s * a.max((-2, -1)), a.sum((-2, -1)) / s

  return ref


def ref_bias_rms(M):
  n = M.shape[-1] * M.shape[-2]
  rms = np.sqrt(np.mean(M**2, axis=(-2, -1)))
  return M / _safe(rms)[:, None, None], rms, np.sqrt(n) * np.sqrt(np.sum(M**2, axis=(-2, -1)))


def ref_frobenius(M):
  f = np.sqrt(np.sum(M**2, axis=(-2, -1)))
  return M / _safe(f)[:, None, None], f, f


# ---- Norms and the leaves they are tried on -------------------------------------------

NORMS = {
    "Spectral": (norms.Spectral(polar=SVD), ref_spectral(lambda i, o: np.sqrt(o / i))),
    "Spectral_input": (
        norms.Spectral(input_layer=True, polar=SVD),
        ref_spectral(lambda i, o: max(1.0, np.sqrt(o / i))),
    ),
    "Spectral_unscaled": (norms.Spectral(scaled=False, polar=SVD), ref_spectral(lambda i, o: 1.0)),
    "SpectralConv": (norms.SpectralConv(polar=SVD), ref_spectral_conv_reference),
    "SpectralConv_per_tap": (
        norms.SpectralConv(polar=SVD, convention="per_tap"),
        ref_spectral_conv_per_tap,
    ),
    "ColNorm": (norms.ColNorm(), ref_colnorm(True)),
    "ColNorm_unscaled": (norms.ColNorm(scaled=False), ref_colnorm(False)),
    "RowNorm": (norms.RowNorm(), ref_rownorm(True)),
    "RowNorm_unscaled": (norms.RowNorm(scaled=False), ref_rownorm(False)),
    "Sign": (norms.Sign(), ref_sign(True)),
    "Sign_unscaled": (norms.Sign(scaled=False), ref_sign(False)),
    "BiasRMS": (norms.BiasRMS(), ref_bias_rms),
    "Frobenius": (norms.Frobenius(), ref_frobenius),
}

STACKED = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))

# name -> (shape, spec, to_view, from_view, batch shape). The views are written
# with NumPy: (B, d_in, d_out), or (B, T, c_in, c_out) for conv.
MATRIX_CASES = {
    "wide": ((8, 24), None, lambda x: x[None], lambda m: m[0], ()),
    "tall": ((24, 8), None, lambda x: x[None], lambda m: m[0], ()),
    # Stacked layers (L, d_in, d_out); other layouts of the batch axes: test_spec.py.
    "stacked": ((3, 8, 24), STACKED, lambda x: x, lambda m: m, (3,)),
}
# Whole-leaf (vector) norms: 1-D leaves and whole matrices need no spec.
VECTOR_CASES = {
    "vector": ((16,), None, lambda x: x.reshape(1, 1, 16), lambda m: m.reshape(16), ()),
    "matrix_whole": ((8, 24), None, lambda x: x[None], lambda m: m[0], ()),
    "stacked": MATRIX_CASES["stacked"],
}
CONV_CASES = {
    "conv2d": (
        (3, 3, 4, 8),
        None,
        lambda x: x.reshape(1, 9, 4, 8),
        lambda m: m.reshape(3, 3, 4, 8),
        (),
    ),
    "conv1d_tall": (
        (5, 8, 4),
        None,
        lambda x: x.reshape(1, 5, 8, 4),
        lambda m: m.reshape(5, 8, 4),
        (),
    ),
    "conv2d_stacked_two_fan_in": (
        (2, 3, 3, 4, 8),
        ol.MatrixSpec(fan_in=(1, 2, 3), fan_out=(4,)),
        lambda x: x.reshape(2, 9, 4, 8),
        lambda m: m.reshape(2, 3, 3, 4, 8),
        (2,),
    ),
}


def _cases_for(norm_name):
  if norm_name.startswith("SpectralConv"):
    return CONV_CASES
  if norm_name in ("Sign_unscaled", "BiasRMS", "Frobenius"):
    return VECTOR_CASES
  return MATRIX_CASES


PAIRS = [(n, c) for n in NORMS for c in _cases_for(n)]


def _case(norm_name, case_name):
  nrm, ref = NORMS[norm_name]
  return (nrm, ref, *_cases_for(norm_name)[case_name])


def _gaussian(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _apply(g, nrm, spec):
  """lmo(g), norm(g), dual_norm(g) and norm(lmo(g)), eagerly (see test_under_jit)."""
  g = jnp.asarray(g)
  u = nrm.lmo(g, spec)
  return u, nrm.norm(g, spec), nrm.dual_norm(g, spec), nrm.norm(u, spec)


def _f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _assert_close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  scale = max(np.abs(expected).max(), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ---- The properties, for every norm and leaf ------------------------------------------


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_values_match_numpy(norm_name, case_name):
  nrm, ref, shape, spec, to_view, _, batch = _case(norm_name, case_name)
  g = _gaussian(shape)
  u, n, d, *_ = _apply(jnp.asarray(g), nrm, spec)
  assert u.shape == g.shape and u.dtype == jnp.float32
  assert n.shape == batch and d.shape == batch
  lmo_ref, norm_ref, dual_ref = ref(to_view(g.astype(np.float64)))
  _assert_close(to_view(_f64(u)), lmo_ref)
  _assert_close(_f64(n).ravel(), norm_ref)
  _assert_close(_f64(d).ravel(), dual_ref)


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_unit_norm_and_dual_identity(norm_name, case_name):
  nrm, ref, shape, spec, to_view, _, _ = _case(norm_name, case_name)
  g = _gaussian(shape, seed=1)
  u, _, d, n_u, *_ = _apply(jnp.asarray(g), nrm, spec)
  np.testing.assert_allclose(_f64(n_u), 1.0, rtol=1e-5)
  # <g, lmo(g)> per matrix, in NumPy over the view.
  gv, uv = to_view(g.astype(np.float64)), to_view(_f64(u))
  inner = np.sum(gv * uv, axis=tuple(range(1, gv.ndim)))
  _assert_close(inner, _f64(d).ravel())
  # The NumPy norm of lmo(g) is 1 as well.
  np.testing.assert_allclose(ref(uv)[1], 1.0, rtol=1e-5)


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_lmo_maximizes_inner_product(norm_name, case_name):
  # <g, x> <= <g, lmo(g)> for random x scaled onto the unit sphere of the (NumPy) norm.
  nrm, ref, shape, spec, to_view, _, _ = _case(norm_name, case_name)
  g = _gaussian(shape, seed=2)
  u = _apply(jnp.asarray(g), nrm, spec)[0]
  gv = to_view(g.astype(np.float64))
  axes = tuple(range(1, gv.ndim))
  best = np.sum(gv * to_view(_f64(u)), axis=axes)
  rng = np.random.default_rng(3)
  for _ in range(20):
    x = rng.standard_normal(gv.shape)
    x /= ref(x)[1].reshape((-1,) + (1,) * (gv.ndim - 1))
    assert np.all(np.sum(gv * x, axis=axes) <= best * (1 + 1e-5))


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_scale_invariance(norm_name, case_name):
  nrm, _, shape, spec, _, _, _ = _case(norm_name, case_name)
  g = jnp.asarray(_gaussian(shape, seed=4))
  base = np.asarray(_apply(g, nrm, spec)[0])
  for c in SCALES:
    u = np.asarray(_apply(g * np.float32(c), nrm, spec)[0])
    assert np.all(np.isfinite(u)), c
    _assert_close(u, base, rtol=2e-6 if "Spectral" not in norm_name else 1e-5)


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_zero_gives_exact_zero(norm_name, case_name):
  nrm, _, shape, spec, _, _, batch = _case(norm_name, case_name)
  u, n, d, n_u, *_ = _apply(jnp.zeros(shape), nrm, spec)
  for x in (u, n, d, n_u):
    np.testing.assert_array_equal(np.asarray(x), 0.0)
  assert n.shape == batch


@pytest.mark.parametrize("norm_name, case_name", PAIRS)
def test_zero_row_and_column(norm_name, case_name):
  nrm, ref, shape, spec, to_view, from_view, _ = _case(norm_name, case_name)
  m = to_view(_gaussian(shape, seed=5))
  if m.shape[-2] > 1:
    m[..., 0, :] = 0.0  # a zero row (fan-in index) in every matrix
  m[..., :, 1] = 0.0  # and a zero column (fan-out index); one entry of a vector
  g = from_view(m)
  u, n, d, n_u, *_ = _apply(jnp.asarray(g), nrm, spec)
  for x in (u, n, d, n_u):
    assert np.all(np.isfinite(np.asarray(x)))
  lmo_ref, norm_ref, dual_ref = ref(m.astype(np.float64))
  _assert_close(to_view(_f64(u)), lmo_ref)
  _assert_close(_f64(n).ravel(), norm_ref)
  _assert_close(_f64(d).ravel(), dual_ref)


# The first and last leaf of each norm (2-D and batched); an "rbg" key keeps compiles cheap.
INIT_PAIRS = [(n, c) for n in NORMS for c in (list(_cases_for(n))[0], list(_cases_for(n))[-1])]


@pytest.mark.parametrize("norm_name, case_name", INIT_PAIRS)
def test_init_has_unit_norm(norm_name, case_name):
  nrm, ref, shape, spec, to_view, _, batch = _case(norm_name, case_name)
  key = jax.random.key(0, impl="rbg")
  w = nrm.init(key, shape, spec=spec)
  assert w.shape == shape and w.dtype == jnp.float32
  if norm_name == "BiasRMS":
    np.testing.assert_array_equal(np.asarray(w), 0.0)
    return
  np.testing.assert_allclose(ref(to_view(_f64(w)))[1], 1.0, rtol=1e-5)
  np.testing.assert_allclose(_f64(nrm.norm(w, spec)), np.ones(batch), rtol=1e-5)
  w1 = nrm.init(jax.random.key(1, impl="rbg"), shape, spec=spec)
  assert not np.allclose(np.asarray(w), np.asarray(w1))
  assert nrm.init(key, shape, jnp.bfloat16, spec=spec).dtype == jnp.bfloat16


@pytest.mark.parametrize("norm_name", NORMS)
def test_bf16(norm_name):
  cases = list(_cases_for(norm_name))
  for case_name in (cases[0], cases[-1]):
    nrm, ref, shape, spec, to_view, _, _ = _case(norm_name, case_name)
    g16 = jnp.asarray(_gaussian(shape, seed=6), jnp.bfloat16)
    u, n, d, n_u, *_ = _apply(g16, nrm, spec)
    assert u.dtype == jnp.bfloat16
    # Against the NumPy reference on the same (bf16-rounded) input.
    lmo_ref, norm_ref, dual_ref = ref(to_view(_f64(g16)))
    _assert_close(to_view(_f64(u)), lmo_ref, rtol=1e-2)
    _assert_close(_f64(n).ravel(), norm_ref)
    _assert_close(_f64(d).ravel(), dual_ref)
    np.testing.assert_allclose(_f64(n_u), 1.0, rtol=1e-2)
    # Scale invariance survives bf16 as well.
    for c in (1e-20, 1e20):
      uc = _apply(g16 * jnp.asarray(c, jnp.bfloat16), nrm, spec)[0]
      assert np.all(np.isfinite(_f64(uc)))
      _assert_close(_f64(uc), _f64(u), rtol=1e-2)


# ---- The default (Newton–Schulz) spectral LMO --------------------------------------------


@functools.partial(jax.jit, static_argnames=("nrm", "spec"))
def _lmo_jit(g, nrm, spec=None):
  """The default Newton–Schulz path under jit: one compile per shape, not one per call."""
  return nrm.lmo(g, spec)


@pytest.mark.parametrize(
    "nrm, shape, spec, factor",
    [
        (norms.Spectral(), (8, 24), None, np.sqrt(3.0)),
        (norms.Spectral(), (24, 8), None, np.sqrt(1 / 3)),
        (norms.Spectral(), (3, 8, 24), STACKED, np.sqrt(3.0)),
        (norms.Spectral(), (2, 24, 8), STACKED, np.sqrt(1 / 3)),
        (norms.Spectral(input_layer=True), (24, 8), None, 1.0),
        (norms.Spectral(scaled=False), (8, 24), None, 1.0),
    ],
    ids=["wide", "tall", "stacked", "stacked_tall", "input_tall", "unscaled"],
)
def test_default_spectral_within_band(nrm, shape, spec, factor):
  g = _gaussian(shape, seed=7)
  u = _lmo_jit(jnp.asarray(g), nrm, spec)
  gv, uv = g.astype(np.float64).reshape(-1, *shape[-2:]), _f64(u).reshape(-1, *shape[-2:])
  lo, hi = NS_BAND
  for gm, um in zip(gv, uv, strict=True):
    s = np.linalg.svd(um / factor, compute_uv=False)
    assert lo <= s.min() and s.max() <= hi
    # Same singular vectors as the exact polar factor: polar_ns = U h(S) V^T.
    uu, _, vt = np.linalg.svd(gm, full_matrices=False)
    core = uu.T @ (um / factor) @ vt.T
    assert np.abs(core - np.diag(np.diag(core))).max() < 1e-4
  # norm(lmo(g)) = sigma_max of the polar approximation, inside the band too.
  n_u = _f64(nrm.norm(u, spec))
  assert np.all((n_u >= lo) & (n_u <= hi))


@pytest.mark.parametrize("convention", ["reference", "per_tap"])
def test_default_spectral_conv_within_band(convention):
  g = _gaussian((3, 3, 4, 8), seed=8)
  u = _f64(_lmo_jit(jnp.asarray(g), norms.SpectralConv(convention=convention)))
  f = np.sqrt(8 / 4) / 9
  mats = u.reshape(9, 4, 8) if convention == "per_tap" else u.reshape(1, 36, 8)
  for m in mats:
    s = np.linalg.svd(m / f, compute_uv=False)
    assert NS_BAND[0] <= s.min() and s.max() <= NS_BAND[1]


def test_spectral_conv_describes_its_view():
  stacked = ol.MatrixSpec(fan_in=(1, 2, 3), fan_out=(4,))
  ref, per_tap = norms.SpectralConv(), norms.SpectralConv(convention="per_tap")
  assert ref.describe_view((3, 3, 64, 128)) == "576x128"
  assert per_tap.describe_view((3, 3, 64, 128)) == "9x64x128 per tap"
  assert ref.describe_view((2, 3, 3, 4, 8), stacked) == "2x36x8"
  assert per_tap.describe_view((2, 3, 3, 4, 8), stacked) == "2x9x4x8 per tap"
  assert norms.Spectral().describe_view((64, 128)) == "64x128"
  with pytest.raises(ValueError, match="convention"):
    norms.SpectralConv(convention="torch")


def test_to_stack_round_trips_every_view():
  # The one hook: unstack(to_stack(x)) == x, for the matrix, vector and conv views.
  cases = [
      (norms.Spectral(), (8, 24), None),
      (norms.Spectral(), (3, 8, 24), STACKED),
      (norms.BiasRMS(), (16,), None),
      (norms.SpectralConv(), (3, 3, 4, 8), None),
      (norms.SpectralConv(convention="per_tap"), (2, 3, 3, 4, 8),
       ol.MatrixSpec(fan_in=(1, 2, 3), fan_out=(4,))),
      (norms.SpectralConv(convention="per_tap"), (3, 3, 4, 8, 2),
       ol.MatrixSpec(fan_in=(0, 1, 2), fan_out=(3,))),  # the batch axis after the taps
  ]
  for nrm, shape, spec in cases:
    x = _gaussian(shape, seed=10)
    st = nrm.to_stack(jnp.asarray(x), spec)
    assert st.matrices.dtype == jnp.float32 and st.matrices.ndim == 3
    assert st.matrices.shape[0] == int(np.prod(st.batch_shape)) * st.blocks
    np.testing.assert_array_equal(np.asarray(st.unstack(st.matrices)), x)


def test_default_spectral_scale_invariance():
  g = jnp.asarray(_gaussian((3, 8, 24), seed=9))
  base = np.asarray(_lmo_jit(g, norms.Spectral(), STACKED))
  for c in SCALES:
    u = np.asarray(_lmo_jit(g * np.float32(c), norms.Spectral(), STACKED))
    _assert_close(u, base, rtol=1e-5)
  np.testing.assert_array_equal(
      np.asarray(_lmo_jit(jnp.zeros((3, 8, 24)), norms.Spectral(), STACKED)), 0.0
  )


# ---- Flax layout pins ----------------------------------------------------------------


def test_nnx_linear_kernel_gets_sqrt_dout_over_din():
  model = nnx.Linear(16, 64, rngs=nnx.Rngs(0))
  assert model.kernel[...].shape == (16, 64)  # Flax: (d_in, d_out)
  x = jax.random.normal(jax.random.key(1), (32, 16))
  y = jax.random.normal(jax.random.key(2), (32, 64))

  def loss(m):
    return jnp.mean((m(x) - y) ** 2)

  grad = nnx.jit(nnx.grad(loss))(model).kernel[...]
  assert grad.shape == (16, 64)
  u = _lmo_jit(grad, norms.Spectral(polar=SVD))
  s = np.linalg.svd(_f64(u), compute_uv=False)
  np.testing.assert_allclose(s, 2.0, rtol=1e-5)  # sqrt(64 / 16)
  s = np.linalg.svd(_f64(_lmo_jit(grad, norms.Spectral())), compute_uv=False)
  assert 2 * NS_BAND[0] <= s.min() and s.max() <= 2 * NS_BAND[1]
  # The init of the same geometry has the same singular values.
  w = norms.Spectral().init(jax.random.key(3, impl="rbg"), (16, 64))
  np.testing.assert_allclose(np.linalg.svd(_f64(w), compute_uv=False), 2.0, rtol=1e-5)


def test_nnx_embed_table_gets_colnorm_rows():
  vocab, d = 32, 8
  model = nnx.Embed(vocab, d, rngs=nnx.Rngs(0))
  assert model.embedding[...].shape == (vocab, d)  # (vocab, d): vocab is the fan-in
  extra = jax.random.randint(jax.random.key(1), (40,), 0, vocab)
  tokens = jnp.concatenate([jnp.arange(vocab), extra])  # every token used at least once
  w = jax.random.normal(jax.random.key(2), (tokens.shape[0], d))

  def loss(m):
    return jnp.sum(m(tokens) * w)

  grad = nnx.jit(nnx.grad(loss))(model).embedding[...]
  u = _f64(_lmo_jit(grad, norms.ColNorm()))
  np.testing.assert_allclose(np.linalg.norm(u, axis=1), np.sqrt(d), rtol=1e-5)  # each token row
  g = _f64(grad)
  expected = np.sqrt(d) * g / np.linalg.norm(g, axis=1, keepdims=True)
  np.testing.assert_allclose(u, expected, rtol=1e-5)
  # An unused token's row has a zero gradient and a zero update (no NaN).
  g0 = grad.at[3].set(0.0)
  u0 = _f64(_lmo_jit(g0, norms.ColNorm()))
  np.testing.assert_array_equal(u0[3], 0.0)
  assert np.all(np.isfinite(u0))


def test_rownorm_acts_on_output_columns():
  # Flax (d_in, d_out): column i holds the weights of output i.
  g = np.zeros((4, 3), np.float32)
  g[:, 0] = [3.0, 4.0, 0.0, 0.0]
  g[:, 1] = [0.0, 0.0, 1.0, 0.0]
  u = _f64(norms.RowNorm().lmo(jnp.asarray(g)))
  np.testing.assert_allclose(u[:, 0], np.array([0.6, 0.8, 0.0, 0.0]) / 2.0, rtol=1e-6)
  np.testing.assert_allclose(u[:, 1], np.array([0.0, 0.0, 1.0, 0.0]) / 2.0, rtol=1e-6)
  np.testing.assert_array_equal(u[:, 2], 0.0)


# ---- Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nrm", [norms.Spectral(), norms.ColNorm(), norms.RowNorm(), norms.Sign()], ids=repr
)
def test_matrix_norms_need_a_spec_for_3d(nrm):
  with pytest.raises(ValueError, match="blocks/0/mlp/kernel"):
    nrm.lmo(jnp.ones((2, 4, 8)), path="blocks/0/mlp/kernel")
  with pytest.raises(ValueError, match="ndim >= 2"):
    nrm.lmo(jnp.ones((8,)), path="bias")


def test_spectral_conv_needs_a_kernel():
  with pytest.raises(ValueError, match="conv/kernel"):
    norms.SpectralConv().lmo(jnp.ones((4, 8)), path="conv/kernel")
