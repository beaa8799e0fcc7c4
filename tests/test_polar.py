"""Polar factor: NumPy SVD oracle, documented singular-value bands, invariances, dtypes."""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_lmo as ol
from optax_lmo._src import polar as polar_lib

# The bands this file asserts, as the docs show them.
POLAR_PAGE = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "polar.md").read_text()

NS_METHODS = ("newton_schulz", "gram_newton_schulz")

# (preset, steps) -> (Gaussian band, condition-1e3 band): the table of docs/polar.md,
# which test_docs_table_matches pins.
BANDS = {
    ("polar_express", 5): ((0.86, 1.13), (0.40, 1.13)),
    ("polar_express", 8): ((0.99, 1.01), (0.99, 1.01)),
    ("jordan", 5): ((0.67, 1.14), (0.20, 1.21)),
    ("you5", 5): ((0.97, 1.04), (0.20, 1.15)),
    ("cubic", 30): ((0.99, 1.01), (0.99, 1.01)),
}


# jit with the options static: one compile per configuration and shape, reused
# across tests (steps=5 is the polar_express default, spelled out to share compiles).
@functools.partial(
    jax.jit, static_argnames=("method", "coeffs", "steps", "dtype", "restart_every")
)
def _polar(x, method="auto", coeffs="polar_express", steps=5, dtype=None, restart_every=3):
  return polar_lib.polar(
      x, method=method, coeffs=coeffs, steps=steps, dtype=dtype, restart_every=restart_every
  )


def _np_polar(g):
  """The oracle: U V^T from NumPy's thin SVD in float64."""
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def _sv(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _gaussian(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conditioned(m, n, cond, seed=1):
  """An m x n matrix (m <= n) with singular values log-spaced from 1 down to 1/cond."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  return ((u * np.logspace(0, -np.log10(cond), m)) @ v.T).astype(np.float32)


G = _gaussian((64, 128))
C = _conditioned(64, 128, 1e3)


@functools.cache
def _svd_g():
  return np.linalg.svd(G.astype(np.float64), full_matrices=False)


@functools.cache
def _oracle(which, tall=False):
  """The NumPy oracle for the module's test matrices, computed once each."""
  g = {"gaussian": G, "cond1e3": C}[which]
  return _np_polar(g.T if tall else g)


def test_test_matrices():
  s = _sv(C)
  np.testing.assert_allclose(s.max() / s.min(), 1e3, rtol=1e-3)
  assert G.shape == C.shape == (64, 128)


def test_docs_table_matches():
  band = r"\[([\d.]+), ([\d.]+)\]"
  rows = re.findall(
      rf"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*{band}\s*\|\s*{band}\s*\|\s*$",
      POLAR_PAGE,
      re.M,
  )
  table = {
      (name, int(steps)): ((float(a), float(b)), (float(c), float(d)))
      for name, steps, a, b, c, d in rows
  }
  assert table == BANDS


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (3, 64, 128)])
def test_svd_method_matches_numpy_oracle(shape):
  g = _gaussian(shape, seed=2)
  np.testing.assert_allclose(np.asarray(_polar(g, method="svd")), _np_polar(g), atol=1e-5)


@pytest.mark.parametrize("method", NS_METHODS)
@pytest.mark.parametrize("preset, steps", sorted(BANDS))
@pytest.mark.parametrize("tall", [False, True], ids=["wide", "tall"])
def test_singular_value_bands(preset, steps, method, tall):
  for g, (lo, hi) in zip((G, C), BANDS[preset, steps], strict=True):
    g = g.T if tall else g  # tall inputs are transposed internally
    out = _polar(g, method=method, coeffs=preset, steps=steps)
    assert out.shape == g.shape
    s = _sv(out)
    assert lo <= s.min() and s.max() <= hi, (s.min(), s.max(), (lo, hi))


@pytest.mark.parametrize("method", NS_METHODS)
@pytest.mark.parametrize("preset, steps", [("polar_express", 8), ("cubic", 30)])
@pytest.mark.parametrize("which", ["gaussian", "cond1e3"])
def test_converged_presets_match_oracle(preset, steps, method, which):
  g = G if which == "gaussian" else C
  out = _polar(g, method=method, coeffs=preset, steps=steps)
  assert _rel(out, _oracle(which)) < 1e-3
  # Tall input: the transpose of the same answer.
  out_t = _polar(g.T, method=method, coeffs=preset, steps=steps)
  assert _rel(out_t, _oracle(which, tall=True)) < 1e-3


@pytest.mark.parametrize("preset, steps", sorted(BANDS))
def test_unconverged_presets_share_singular_vectors(preset, steps):
  # polar(G) = U f(S) V^T: U^T polar(G) V is diagonal even when f(S) != 1.
  u, _, vt = _svd_g()
  out = np.asarray(_polar(G, method="newton_schulz", coeffs=preset, steps=steps), np.float64)
  d = u.T @ out @ vt.T
  off = d - np.diag(np.diag(d))
  assert np.abs(off).max() < 1e-4 * np.abs(np.diag(d)).min()


@pytest.mark.parametrize(
    "preset, steps, restart_every",
    [(p, s, 3) for p, s in sorted(BANDS)] + [("polar_express", 8, 1)],
)
def test_gram_iteration_equals_standard(preset, steps, restart_every):
  # Algebraically the same iterate; restarts bound the rounding built up in the Gram matrix.
  ns = _polar(C, method="newton_schulz", coeffs=preset, steps=steps)
  gram = _polar(
      C, method="gram_newton_schulz", coeffs=preset, steps=steps, restart_every=restart_every
  )
  assert _rel(gram, ns) < 1e-3


def test_auto_method():
  # Aspect 2 takes the Gram iteration, aspect 4/3 the standard one; both near polar.
  out = _polar(G, method="auto", coeffs="polar_express", steps=8)
  assert _rel(out, _oracle("gaussian")) < 1e-3
  g = _gaussian((48, 64), seed=3)
  out = _polar(g, method="auto", coeffs="polar_express", steps=8)
  assert _rel(out, _np_polar(g)) < 1e-3


@pytest.mark.parametrize("method", (*NS_METHODS, "svd"))
@pytest.mark.parametrize("shape", [(64, 128), (3, 64, 128)])
def test_zero_input_is_exact_zero(method, shape):
  out = _polar(jnp.zeros(shape), method=method)
  assert out.shape == shape
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  # One zero matrix in a batch does not disturb the others.
  x = np.stack([G, np.zeros_like(G), C])
  out = np.asarray(_polar(x, method=method))
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_allclose(out[0], np.asarray(_polar(G, method=method)), atol=1e-5)


@pytest.mark.parametrize("method", (*NS_METHODS, "svd"))
def test_scale_invariance(method):
  base = np.asarray(_polar(G, method=method))
  for c in (1e-20, 1e-3, 1e3, 1e20):
    gc = jnp.asarray(G) * jnp.float32(c)
    out = np.asarray(_polar(gc, method=method))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, base, atol=1e-5)


@pytest.mark.parametrize("method", NS_METHODS)
@pytest.mark.parametrize(
    "preset, steps, tol",
    [
        ("polar_express", 5, 1e-3),
        ("polar_express", 8, 1e-3),
        ("jordan", 5, 1e-3),
        ("you5", 5, 1e-3),
        # Rounding noise of ~1e-7 in the null space grows by a = 1.5 per step: 1.5^30 ~ 2e5.
        ("cubic", 30, 3e-2),
    ],
)
def test_rank_deficient_keeps_zero_singular_values(method, preset, steps, tol):
  rng = np.random.default_rng(4)
  g = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 128))).astype(np.float32)
  s = _sv(_polar(g, method=method, coeffs=preset, steps=steps))
  assert s[8:].max() < tol
  assert s[:8].min() > 0.6


@pytest.mark.parametrize("method", (*NS_METHODS, "svd"))
def test_zero_rows_and_columns_stay_exactly_zero(method):
  g = np.zeros((64, 128), np.float32)
  g[:8, :40] = _gaussian((8, 40), seed=5)
  out = np.asarray(_polar(g, method=method))
  np.testing.assert_array_equal(out[8:], 0.0)
  np.testing.assert_array_equal(out[:, 40:], 0.0)
  out_t = np.asarray(_polar(g.T, method=method))
  np.testing.assert_array_equal(out_t[:, 8:], 0.0)
  np.testing.assert_array_equal(out_t[40:], 0.0)


def test_rank_deficient_svd_method():
  rng = np.random.default_rng(4)
  g = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 128))).astype(np.float32)
  s = _sv(_polar(g, method="svd"))
  np.testing.assert_allclose(s[:8], 1.0, atol=1e-5)
  assert s[8:].max() < 1e-5


@pytest.mark.parametrize("method", (*NS_METHODS, "svd"))
def test_batched_equals_per_matrix(method):
  x = np.stack([G, C, _gaussian((64, 128), seed=6)])
  out = np.asarray(_polar(x, method=method))
  for i in range(3):
    np.testing.assert_allclose(out[i], np.asarray(_polar(x[i], method=method)), atol=1e-5)


def test_leading_batch_axes():
  x = _gaussian((2, 3, 16, 24), seed=7)
  out = np.asarray(_polar(x, method="svd"))
  assert out.shape == x.shape
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(out[i, j], _np_polar(x[i, j]), atol=1e-5)


@pytest.mark.parametrize("method", (*NS_METHODS, "svd"))
def test_bf16_input_returns_bf16(method):
  out = _polar(jnp.asarray(G, jnp.bfloat16), method=method)
  assert out.dtype == jnp.bfloat16
  ref = _polar(G, method=method)
  assert _rel(out, ref) < 1e-2


@pytest.mark.parametrize("method", NS_METHODS)
def test_bf16_iteration(method):
  out = _polar(G, method=method, dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  assert _rel(out, _polar(G, method=method)) < 5e-2
  s = _sv(out)
  assert 0.8 < s.min() and s.max() < 1.2


def test_eager_matches_jit():
  # Eager, with every option left at its default (polar_express, 5 steps, auto).
  np.testing.assert_allclose(
      np.asarray(polar_lib.polar(G)), np.asarray(_polar(G, method="gram_newton_schulz")), atol=1e-5
  )


def test_polar_object_matches_function():
  p = ol.Polar(method="newton_schulz", coeffs="you5", steps=5)
  np.testing.assert_allclose(
      np.asarray(jax.jit(p.apply)(G)),
      np.asarray(_polar(G, method="newton_schulz", coeffs="you5", steps=5)),
      atol=1e-6,
  )
  assert hash(p) == hash(ol.Polar(method="newton_schulz", coeffs="you5", steps=5))


@pytest.mark.parametrize("shape", [(), (5,)])
def test_ndim_below_two_raises(shape):
  with pytest.raises(ValueError, match="ndim >= 2"):
    polar_lib.polar(jnp.ones(shape))


def test_unknown_method_raises():
  with pytest.raises(ValueError, match="newton_schulz"):
    polar_lib.polar(G, method="qr")
  with pytest.raises(ValueError, match="newton_schulz"):
    ol.Polar(method="qr")
