"""Fast orthogonalization: Gram and standard Newton–Schulz against SVD, per dtype, batched.

Checks the per-dtype band table of docs/polar.md (both
methods, well- and ill-conditioned and rank-deficient inputs, bfloat16 inputs),
that zero matrices inside a batch stay exactly zero, that ``scale_by_norm``
gives the same updates batched and per leaf on a GPT-shaped tree, and that the
iteration is a loop: its jaxpr holds a ``while`` and as many ``dot_general``
ops for 5 steps as for 10.
"""

import functools
import pathlib
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import optax_lmo as ol
from optax_lmo._src import polar as polar_lib

# The bands this file asserts, as the docs show them.
POLAR_PAGE = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "polar.md").read_text()

METHODS = ("newton_schulz", "gram_newton_schulz")
M, N, RANK = 128, 512, 32


def _table():
  """``(preset, steps, dtype) -> (gaussian, cond, rank, null)`` from docs/polar.md."""
  band = r"\[([\d.]+), ([\d.]+)\]"
  rows = re.findall(
      rf"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*(float32|bfloat16)\s*\|\s*{band}\s*\|\s*{band}\s*\|\s*{band}\s*\|\s*([\d.]+)\s*\|\s*$",
      POLAR_PAGE,
      re.M,
  )
  out = {}
  for name, steps, dtype, *v in rows:
    v = [float(t) for t in v]
    out[name, int(steps), dtype] = ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), v[6])
  return out


TABLE = _table()


def _stack(seed=0):
  """(3, M, N): a Gaussian matrix, one of condition 1e3, one of rank RANK."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((M, M)))
  v, _ = np.linalg.qr(rng.standard_normal((N, M)))
  return np.stack([
      rng.standard_normal((M, N)),
      (u * np.logspace(0, -3, M)) @ v.T,
      rng.standard_normal((M, RANK)) @ rng.standard_normal((RANK, N)),
  ]).astype(np.float32)


X = _stack()


@functools.partial(jax.jit, static_argnames=("method", "coeffs", "steps", "dtype"))
def _polar(x, method, coeffs="polar_express", steps=5, dtype=None):
  return polar_lib.polar(x, method=method, coeffs=coeffs, steps=steps, dtype=dtype)


def _sv(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _check_bands(out, key):
  (g_lo, g_hi), (c_lo, c_hi), (r_lo, r_hi), null = TABLE[key]
  s = _sv(out)
  got = {
      "gaussian": (s[0].min(), s[0].max()),
      "cond1e3": (s[1].min(), s[1].max()),
      "rank": (s[2, :RANK].min(), s[2, :RANK].max()),
  }
  for name, (lo, hi), (band_lo, band_hi) in zip(
      got, got.values(), [(g_lo, g_hi), (c_lo, c_hi), (r_lo, r_hi)], strict=True
  ):
    assert band_lo <= lo and hi <= band_hi, (key, name, (lo, hi), (band_lo, band_hi))
  assert s[2, RANK:].max() <= null, (key, "null", s[2, RANK:].max(), null)


def test_table_parsed():
  assert len(TABLE) == 8
  assert {k[2] for k in TABLE} == {"float32", "bfloat16"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", sorted(TABLE), ids=lambda k: f"{k[0]}{k[1]}-{k[2]}")
def test_bands_against_svd(key, method):
  preset, steps, dtype = key
  out = _polar(X, method, preset, steps, jnp.dtype(dtype))
  assert out.dtype == jnp.float32
  _check_bands(out, key)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bands_tall_and_bf16_inputs(method, dtype):
  key = ("polar_express", 5, dtype)
  tall = _polar(jnp.swapaxes(X, -1, -2), method, dtype=jnp.dtype(dtype))
  _check_bands(np.swapaxes(np.asarray(tall), -1, -2), key)
  if dtype == "bfloat16":
    out = _polar(jnp.asarray(X, jnp.bfloat16), method, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    _check_bands(np.asarray(out, np.float32), key)


@pytest.mark.parametrize("preset, steps", [("polar_express", 5), ("jordan", 5)])
def test_gram_equals_standard_float32(preset, steps):
  # Same polynomial, so the same answer up to rounding, on all three kinds of input.
  ns = _polar(X, "newton_schulz", preset, steps)
  gram = _polar(X, "gram_newton_schulz", preset, steps)
  for i in range(3):
    assert _rel(gram[i], ns[i]) < 1e-3


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_in_a_batch_stays_exactly_zero(method, dtype):
  x = np.concatenate([X[:2], np.zeros((1, M, N), np.float32), X[2:]])
  out = np.asarray(_polar(x, method, dtype=dtype), np.float32)
  np.testing.assert_array_equal(out[2], 0.0)
  assert np.all(np.isfinite(out))
  alone = np.asarray(_polar(X, method, dtype=dtype), np.float32)
  np.testing.assert_allclose(np.delete(out, 2, axis=0), alone, atol=1e-5)


def _gpt_tree(d, layers=2, seed=0):
  key = jax.random.key(seed)
  shapes = {"qkv": (d, 3 * d), "out": (d, d), "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d)}
  tree = {}
  for layer in range(layers):
    keys = jax.random.split(jax.random.fold_in(key, layer), 5)
    tree[f"layer_{layer}"] = {
        k: jax.random.normal(kk, s) for kk, (k, s) in zip(keys, shapes.items(), strict=False)
    }
    tree[f"layer_{layer}"]["bias"] = jax.random.normal(keys[4], (d,))
  tree["layer_1"]["out"] = jnp.zeros((d, d))  # a zero leaf inside a batched group
  return tree


@pytest.mark.parametrize("polar", [ol.Polar(), ol.Polar(dtype=jnp.bfloat16)], ids=["f32", "bf16"])
def test_scale_by_norm_batched_equals_per_leaf(polar):
  tree = _gpt_tree(32)
  norms = jax.tree.map(
      lambda g: ol.norms.Spectral(polar=polar) if g.ndim == 2 else ol.norms.BiasRMS(), tree
  )
  def run(batch):
    tx = ol.scale_by_norm(norms, batch=batch)
    return jax.jit(lambda t: tx.update(t, tx.init(t))[0])(tree)

  batched, per_leaf = run(True), run(False)
  # Batched and single dots may sum in another order: bfloat16 iterates then differ
  # by an ulp or two (2^-8 relative) in about 1% of the entries.
  atol = 1e-5 if polar.dtype is None else 1e-2
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(batched), jax.tree.leaves(per_leaf), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, err_msg=str(path))
    if np.any(np.asarray(b)):
      assert _rel(a, b) < (1e-5 if polar.dtype is None else 1e-2), path
  np.testing.assert_array_equal(np.asarray(batched["layer_1"]["out"]), 0.0)


def _eqns(jaxpr):
  """Every equation of a jaxpr, recursing into sub-jaxprs (loops, conds, pjit)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def _count(fn, x):
  eqns = list(_eqns(jax.make_jaxpr(fn)(x).jaxpr))
  names = [e.primitive.name for e in eqns]
  return names.count("while"), [e for e in eqns if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("restart_every", [None, 2])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(2, 24, 64), (64, 24)], ids=["wide", "tall"])
def test_iteration_is_a_loop_not_unrolled(method, restart_every, shape):
  x = jnp.ones(shape)
  counts = []
  for steps in (5, 10):
    fn = functools.partial(polar_lib.polar, method=method, steps=steps,
                           restart_every=restart_every)
    n_while, dots = _count(fn, x)
    assert n_while >= 1
    counts.append(len(dots))
  assert counts[0] == counts[1], counts
  assert counts[0] <= 7


@pytest.mark.parametrize("method", METHODS)
def test_precision_reaches_every_matmul(method):
  fn = functools.partial(
      polar_lib.polar, method=method, precision=jax.lax.Precision.HIGHEST, dtype=jnp.bfloat16
  )
  _, dots = _count(fn, jnp.ones((24, 64)))
  assert dots
  for eqn in dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2
    assert eqn.params["preferred_element_type"] == jnp.float32
  # bfloat16 iterates: the products of X are bfloat16 (the Gram matrix stays float32).
  assert any(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)


def test_auto_threshold():
  assert polar_lib.choose_method((256, 256)) == "newton_schulz"
  assert polar_lib.choose_method((256, 384)) == "newton_schulz"
  assert polar_lib.choose_method((256, 512)) == "gram_newton_schulz"
  assert polar_lib.choose_method((1024, 256)) == "gram_newton_schulz"
  # 16-bit iterates keep a float32 Gram matrix: the Gram iteration pays from aspect 3.
  assert polar_lib.choose_method((256, 512), jnp.bfloat16) == "newton_schulz"
  assert polar_lib.choose_method((256, 768), jnp.bfloat16) == "gram_newton_schulz"


def test_auto_keeps_standard_iteration_at_accelerator_default_precision():
  # TF32 / bf16-pass products would accumulate rounding in the Gram matrix.
  assert polar_lib.choose_method((128, 512), backend="gpu") == "newton_schulz"
  assert polar_lib.choose_method((128, 512), backend="tpu") == "newton_schulz"
  assert polar_lib.choose_method((128, 512), precision="highest", backend="gpu") == (
      "gram_newton_schulz"
  )
  assert polar_lib.choose_method((128, 512), backend="cpu") == "gram_newton_schulz"


def _round_to_tf32(a):
  """Round float32 to 10 mantissa bits (TF32), nearest-even, as a GPU's default matmul does."""
  if a.dtype != jnp.float32:
    return a
  bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
  lsb = (bits >> 13) & 1
  bits = (bits + jnp.uint32(0xFFF) + lsb) & jnp.uint32(0xFFFFE000)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


@pytest.mark.parametrize("shape", [(512, 128), (128, 512)])
def test_gram_iteration_stays_bounded_under_emulated_tf32(monkeypatch, shape):
  """The shape and conditioning of an MLP gradient that blew up on an H100 at TF32.

  Products at default precision are emulated with TF32-rounded inputs; the Gram
  iteration must stay within the standard iteration's band. (The emulation did
  not reproduce the GPU blow-up even without restarts, so on accelerators
  ``auto`` keeps the standard iteration; see ``choose_method``.)
  """
  exact = polar_lib._matmul

  def tf32_matmul(precision):
    mm = exact(precision)
    if precision is None:  # the accelerator default: inputs rounded to TF32
      return lambda a, b: mm(_round_to_tf32(a), _round_to_tf32(b))
    return mm

  monkeypatch.setattr(polar_lib, "_matmul", tf32_matmul)
  m, n = min(shape), max(shape)
  u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (n, m)))
  v, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (m, m)))
  s = jnp.logspace(0, -np.log10(92.0), m)
  g = (u * s) @ v.T
  g = g if shape[0] == n else g.T
  for restart_every in (None, 3):
    out = polar_lib.polar(g, method="gram_newton_schulz", restart_every=restart_every)
    sv = np.linalg.svd(np.asarray(out), compute_uv=False)
    ref = np.linalg.svd(np.asarray(polar_lib.polar(g, method="newton_schulz")), compute_uv=False)
    assert np.all(np.isfinite(sv))
    assert sv.max() <= max(1.15, ref.max() + 0.02), (restart_every, sv.max())
    assert sv.min() >= ref.min() - 0.05, (restart_every, sv.min(), ref.min())
