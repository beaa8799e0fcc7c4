"""AOL-preconditioned Newton–Schulz (Turbo-Muon): a NumPy re-derivation, optax's own
function, the SVD oracle, and the construction of the ``aol`` coefficients."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import _muon
from scipy.optimize import linprog

import optax_lmo as ol
from optax_lmo._src import coeffs as coeffs_lib

METHODS = ("newton_schulz", "gram_newton_schulz")
AOL4 = dict(coeffs="aol", preconditioning="aol")  # 4 steps, the preset's default


def _polar(x, method="newton_schulz", coeffs="aol", steps=None, pre="aol", dtype=None):
  coeffs = coeffs if isinstance(coeffs, str) else tuple(map(tuple, coeffs))
  return _jitted(x, method, coeffs, steps, pre, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _jitted(x, method, coeffs, steps, pre, dtype):
  return ol.Polar(method=method, coeffs=coeffs, steps=steps, preconditioning=pre,
                  dtype=dtype).apply(x)


def _gaussian(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _spectrum(m, n, s, seed=1):
  """An m x n matrix with singular values ``s`` (min(m, n) of them) and random vectors."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal((m, k)))[0]
  v = np.linalg.qr(rng.standard_normal((n, k)))[0]
  return ((u * s) @ v.T).astype(np.float32)


def _conditioned(m, n, cond, seed=1):
  return _spectrum(m, n, np.logspace(0, -np.log10(cond), min(m, n)), seed)


def _np_polar(g):
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def _rel(q, p):
  return np.linalg.norm(np.asarray(q, np.float64) - p) / np.linalg.norm(p)


def _np_aol_newton_schulz(g, triples, safety, eps=1e-8):
  """The SPEC's AOL iteration in float64, written from its formulas (wide orientation)."""
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / np.linalg.norm(x)
  for i, (a, b, c) in enumerate(triples):
    gram = x @ x.T
    if i == 0:  # rows scaled by 1 / sqrt(max(eps, sum_j |A_ij|)), A by s_i s_j, reused
      s = 1.0 / np.sqrt(np.maximum(eps, np.abs(gram).sum(axis=1))) / safety
      x, gram = s[:, None] * x, s[:, None] * gram * s[None, :]
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (64, 64)])
def test_the_iteration_is_the_formula(method, shape):
  g = _gaussian(shape)
  c = coeffs_lib.get_coefficients("aol")
  want = _np_aol_newton_schulz(g, c.schedule(), c.safety)
  np.testing.assert_allclose(_polar(g, method), want, atol=2e-5)


@pytest.mark.skipif(
    "preconditioning" not in inspect.signature(_muon.orthogonalize_via_newton_schulz).parameters,
    reason=f"optax {optax.__version__} has no AOL preconditioning (it came in 0.2.8)")
def test_it_is_optax_s_aol_with_the_same_coefficients():
  """optax.contrib.muon's preconditioning="aol" (its own function), jordan x 5: ours agrees."""
  jordan = (3.4445, -4.7750, 2.0315)
  for shape in [(64, 128), (128, 64), (96, 96)]:
    g = _gaussian(shape, seed=3)
    theirs = _muon.orthogonalize_via_newton_schulz(jnp.asarray(g), jnp.asarray(jordan), 5,
                                                   preconditioning="aol")
    ours = _polar(g, coeffs="jordan", steps=5)
    np.testing.assert_allclose(ours, theirs, atol=5e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(64, 128), (128, 128), (128, 512), (512, 128)])
@pytest.mark.parametrize("kind", ["gaussian", "condition 1e2"])
def test_aol_at_4_steps_is_within_polar_express_at_5(method, shape, kind):
  g = _gaussian(shape, 5) if kind == "gaussian" else _conditioned(*shape, 1e2, seed=6)
  p = _np_polar(g)
  aol4 = _rel(_polar(g, method), p)
  pe5 = _rel(_polar(g, method, coeffs="polar_express", pre="frobenius"), p)
  assert aol4 <= pe5, (aol4, pe5)


def test_aol_converges_to_the_polar_factor_of_the_row_scaled_matrix():
  """The row scaling is not undone: many steps reach polar(diag(s) G), not polar(G). On a
  spectrum like a gradient's (1/k) the two differ by 0.15 (docs/polar.md)."""
  g = _spectrum(64, 256, 1.0 / np.arange(1, 65), seed=2)
  x = g.astype(np.float64) / np.linalg.norm(g)
  s = 1.0 / np.sqrt(np.abs(x @ x.T).sum(axis=1))
  q = _polar(g, coeffs="polar_express", steps=10)
  assert _rel(q, _np_polar(s[:, None] * x)) < 1e-3
  assert _rel(q, _np_polar(g)) > 0.1
  assert _rel(_polar(g, coeffs="polar_express", steps=10, pre="frobenius"), _np_polar(g)) < 1e-3


def test_a_rank_one_input_reaches_singular_value_one_so_the_validator_keeps_0_1():
  """AOL bounds ||X||_2 by 1 and a rank-1 matrix meets the bound: a coefficient set must stay
  positive on all of (0, 1] with AOL too. The set of NVIDIA's Emerging-Optimizers (Levanter's
  coefficient_type "aol") maps 0.884 and above to negative numbers: a rank-1 direction
  would come out reversed. The validator refuses it."""
  rng = np.random.default_rng(0)
  g = np.outer(rng.standard_normal(32), rng.standard_normal(80)).astype(np.float32)
  x = _polar(g, coeffs=[(1.0, 0.0, 0.0)], steps=1)  # the identity polynomial: AOL's X
  assert np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)[0] == pytest.approx(1.0,
                                                                                      abs=1e-5)
  nvidia = [(4.0098, -7.0585, 2.4635), (3.4585, -5.5479, 2.5959),
            (2.7573, -3.2939, 1.4254), (2.7215, -3.0494, 1.3169)]
  y = 1.0
  for a, b, c in nvidia:
    y = a * y + b * y**3 + c * y**5
  assert y < -0.99  # the rank-1 matrix's one singular value, sent to -0.994: reversed
  with pytest.raises(ValueError, match="positive and at most 2"):
    ol.Polar(coeffs=nvidia, preconditioning="aol")


@pytest.mark.parametrize("method", METHODS)
def test_scale_invariance_zero_and_zero_rows(method):
  g = _gaussian((32, 64), seed=4)
  base = np.asarray(_polar(g, method))
  for c in (1e-20, 1e-3, 1e3, 1e20):
    np.testing.assert_allclose(_polar(g * np.float32(c), method), base, atol=1e-5)
  assert bool(jnp.all(_polar(np.zeros((16, 40), np.float32), method) == 0))
  h = g.copy()
  h[3], h[:, 7] = 0.0, 0.0
  out = np.asarray(_polar(h, method))
  assert np.all(np.isfinite(out)) and np.all(out[3] == 0) and np.all(out[:, 7] == 0)


def test_batched_stacks_equal_each_matrix():
  g = np.stack([_gaussian((24, 40), seed=s) for s in range(3)])
  out = _polar(g)
  for i in range(3):
    np.testing.assert_allclose(out[i], _polar(g[i]), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_iterates_stay_close_to_orthogonal(method):
  g = _gaussian((64, 128), seed=8)
  for x in (g, jnp.asarray(g, jnp.bfloat16)):
    q = _polar(x, method, dtype=jnp.bfloat16)
    assert q.dtype == x.dtype
    sv = np.linalg.svd(np.asarray(q, np.float64), compute_uv=False)
    assert 0.85 < sv.min() and sv.max() < 1.15, (sv.min(), sv.max())


def test_bad_options_are_refused_with_the_fix():
  with pytest.raises(ValueError, match="method='svd' is exact and takes none"):
    ol.Polar(method="svd", preconditioning="aol")
  with pytest.raises(ValueError, match=r"choose one of \('frobenius', 'aol'\)"):
    ol.Polar(preconditioning="spectral")


# -- the `aol` coefficients: Polar Express's construction, re-derived ----------------------


def _best_quintic(lo, hi, n=3000):
  """The odd quintic closest to 1 in the max norm on [lo, hi] (a linear program)."""
  x = np.unique(np.concatenate([np.geomspace(lo, hi, n), np.linspace(lo, hi, n)]))
  p = np.stack([x, x**3, x**5], 1)
  ones = np.ones((len(x), 1))
  res = linprog([0, 0, 0, 1], A_ub=np.vstack([np.hstack([-p, -ones]), np.hstack([p, -ones])]),
                b_ub=np.concatenate([-ones[:, 0], ones[:, 0]]),
                bounds=[(None, None)] * 3 + [(0, None)], method="highs")
  return res.x[:3]


def _greedy(lo, steps, cushion=0.0):
  """Polar Express's greedy composition: each step optimal on what the previous ones left
  (on [max(lo, cushion * hi), hi], then recentred so that the image is symmetric about 1)."""
  hi, out = 1.0, []
  for _ in range(steps):
    a, b, c = _best_quintic(max(lo, cushion * hi), hi)
    x = np.geomspace(lo, hi, 20001)
    y = a * x + b * x**3 + c * x**5
    k = 2.0 / (y.max() + y.min())
    out.append((a * k, b * k, c * k))
    lo, hi = k * y.min(), k * y.max()
  return np.array(out)


def test_the_construction_gives_polar_express_s_own_coefficients():
  """From 1e-3 with its cushion, the construction gives the published first triples."""
  published = np.array([(8.28721201814563, -23.595886519098837, 17.300387312530933),
                        (4.107059111542203, -2.9478499167379106, 0.5448431082926601)])
  np.testing.assert_allclose(_greedy(1e-3, 2, cushion=0.02407327424182761), published,
                             rtol=2e-3)


def test_the_aol_preset_is_that_construction_from_8e_3_damped_as_polar_express():
  raw = _greedy(8e-3, 4)
  damped = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in raw[:-1]] + [tuple(raw[-1])]
  preset = coeffs_lib.get_coefficients("aol")
  np.testing.assert_allclose(np.array(preset.triples), np.array(damped), rtol=2e-3)
  assert (preset.default_steps, preset.safety) == (4, 1.01)
