"""Weight-norm diagnostics against NumPy formulas (Filatov et al. 2025) and a NumPy SVD."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src import diagnostics as diag

# ---- NumPy references, written from Filatov et al. 2025 (Flax layout W: (d_in, d_out)) ----


def np_rms_to_inf(w):
  return np.sqrt(w.shape[0]) * np.max(np.linalg.norm(w, axis=0))


def np_one_to_rms(w):
  return np.max(np.linalg.norm(w, axis=1)) / np.sqrt(w.shape[1])


def np_rms_to_rms(w):
  return np.sqrt(w.shape[0] / w.shape[1]) * np.linalg.svd(w, compute_uv=False)[0]


def np_sup(w):
  return np.max(np.abs(w))


REFS = {"rms_to_inf": np_rms_to_inf, "one_to_rms": np_one_to_rms,
        "rms_to_rms": np_rms_to_rms, "sup": np_sup}
FNS = {"rms_to_inf": diag.rms_to_inf, "one_to_rms": diag.one_to_rms,
       "rms_to_rms": diag.rms_to_rms, "sup": diag.sup_norm}
NAMES = sorted(REFS)


def _randn(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape)


def _ill_conditioned(d_in, d_out, seed=0, top=(1.0,)):
  """U diag(s) V^T with singular values from 1 down to 1e-6 (and an optional top cluster)."""
  rng = np.random.default_rng(seed)
  k = min(d_in, d_out)
  u, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
  v, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
  s = np.logspace(0, -6, k)
  s[: len(top)] = top
  return (u * s) @ v.T


@jax.jit
def _all(w):
  return {name: fn(w) for name, fn in FNS.items()}


def _check_all(testcase, got, w, rtol):
  for name in NAMES:
    testcase.assertEqual(got[name].dtype, jnp.float32, name)
    np.testing.assert_allclose(got[name], REFS[name](w), rtol=rtol, err_msg=name)


class MatrixNormTest(parameterized.TestCase):

  @parameterized.parameters((16, 48), (48, 16), (33, 33), (1, 7), (7, 1))
  def test_matches_numpy(self, *shape):
    w = _randn(shape, seed=sum(shape))
    got = _all(jnp.asarray(w, jnp.float32))
    self.assertEqual(got["rms_to_rms"].shape, ())
    _check_all(self, got, w, rtol=1e-5)

  @parameterized.named_parameters(
      ("random_tall", _randn((96, 40), 1)),
      ("random_wide", _randn((40, 96), 2)),
      ("random_square", _randn((64, 64), 3)),
      ("ill_conditioned", _ill_conditioned(80, 50, 4)),
      ("close_top_pair", _ill_conditioned(50, 80, 5, top=(1.0, 0.999, 0.998))),
      ("repeated_top", _ill_conditioned(64, 64, 6, top=(1.0, 1.0, 1.0))),
  )
  def test_power_iteration_vs_svd(self, w):
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    scale = np.sqrt(w.shape[0] / w.shape[1])
    got = jax.jit(diag.rms_to_rms)(jnp.asarray(w, jnp.float32)) / scale
    np.testing.assert_allclose(got, sigma, rtol=1e-3)
    self.assertLessEqual(float(got), sigma * (1 + 1e-5))  # a lower bound up to rounding

  @parameterized.named_parameters(
      ("random", _randn((64, 48), 7), 1000),
      ("ill_conditioned", _ill_conditioned(80, 50, 8), None),
  )
  def test_plain_power_iteration_vs_svd(self, w, iters):
    fn = jax.jit(lambda x: diag.rms_to_rms(x, iters=iters, squaring=False))
    np.testing.assert_allclose(fn(jnp.asarray(w, jnp.float32)), np_rms_to_rms(w), rtol=1e-3)

  def test_zero_matrix_is_zero_without_nan(self):
    zero = jnp.zeros((12, 20))
    got = _all(zero)
    got["plain"] = jax.jit(lambda x: diag.rms_to_rms(x, squaring=False))(zero)
    for name, value in got.items():
      self.assertEqual(float(value), 0.0, name)

  @parameterized.parameters(1e-20, 1e20)
  def test_scale_invariant_without_underflow(self, c):
    # Squares of 1e-20 underflow and of 1e20 overflow in float32: pre-scaling must avoid both.
    w = _randn((24, 40), 9).astype(np.float32)
    got = _all(jnp.asarray(w * np.float32(c)))
    _check_all(self, {k: v / c for k, v in got.items()}, w.astype(np.float64), rtol=1e-5)

  def test_rms_to_rms_deterministic(self):
    w = jnp.asarray(_randn((30, 50), 10), jnp.float32)
    self.assertEqual(float(diag.rms_to_rms(w)), float(diag.rms_to_rms(w)))
    np.testing.assert_allclose(diag.rms_to_rms(w), jax.jit(diag.rms_to_rms)(w), rtol=1e-6)

  def test_bfloat16_leaf(self):
    w = jnp.asarray(_randn((16, 24), 11), jnp.bfloat16)
    _check_all(self, _all(w), np.asarray(w, np.float64), rtol=1e-4)


class BatchedViewTest(parameterized.TestCase):

  # (shape, spec, hand-written NumPy view (batch, d_in, d_out), batch shape)
  @parameterized.named_parameters(
      ("stacked", (3, 8, 12), ol.MatrixSpec(fan_in=(1,), fan_out=(2,)), lambda x: x, (3,)),
      ("transposed", (12, 3, 8), ol.MatrixSpec(fan_in=(2,), fan_out=(0,)),
       lambda x: np.transpose(x, (1, 2, 0)), (3,)),
      ("heads_fan_in", (4, 5, 16), ol.MatrixSpec(fan_in=(0, 1), fan_out=(2,)),
       lambda x: x.reshape(1, 20, 16), ()),
      ("two_batch_axes", (2, 3, 6, 10), ol.MatrixSpec(fan_in=(-2,), fan_out=(-1,)),
       lambda x: x.reshape(6, 6, 10), (2, 3)),
  )
  def test_per_matrix(self, shape, spec, np_view, batch_shape):
    w = _randn(shape, 12)
    mats = np_view(w)
    got = jax.jit(lambda x: {n: f(x, spec) for n, f in FNS.items()})(jnp.asarray(w, jnp.float32))
    for name in NAMES:
      self.assertEqual(got[name].shape, batch_shape, name)
      want = np.array([REFS[name](m) for m in mats]).reshape(batch_shape)
      np.testing.assert_allclose(got[name], want, rtol=1e-4, err_msg=name)

  @parameterized.parameters("rms_to_inf", "one_to_rms", "rms_to_rms")
  def test_ndim3_without_spec_names_the_path(self, name):
    with self.assertRaisesRegex(ValueError, "blocks/0/qkv/kernel: ndim 3 needs a MatrixSpec"):
      FNS[name](jnp.zeros((2, 3, 4)), path="blocks/0/qkv/kernel")

  def test_sup_norm_any_leaf_without_spec(self):
    w = _randn((2, 3, 4), 13)
    self.assertAlmostEqual(float(diag.sup_norm(jnp.asarray(w))), np.max(np.abs(w)), places=5)


def _params():
  return {
      "embed": {"embedding": jnp.asarray(_randn((20, 8), 20), jnp.float32)},
      "blocks": {"mlp": {"kernel": jnp.asarray(_randn((3, 8, 16), 21), jnp.float32)}},
      "fc": {"kernel": jnp.asarray(_randn((8, 16), 22), jnp.float32),
             "bias": jnp.zeros(16)},
      "head": {"kernel": jnp.asarray(_randn((16, 20), 23), jnp.float32)},
  }


class NormReportTest(parameterized.TestCase):

  def test_default_reports_2d_leaves(self):
    params = _params()
    report = diag.norm_report(params)
    order = ["rms_to_rms", "one_to_rms", "rms_to_inf", "sup"]
    expected = [f"{p}/{n}" for p in ("embed/embedding", "fc/kernel", "head/kernel") for n in order]
    self.assertEqual(list(report), expected)  # tree order; 1-D and 3-D leaves skipped
    flat = {"head/kernel": params["head"]["kernel"], "embed/embedding":
            params["embed"]["embedding"], "fc/kernel": params["fc"]["kernel"]}
    for key, value in report.items():
      path, name = key.rsplit("/", 1)
      np.testing.assert_allclose(value, REFS[name](np.asarray(flat[path], np.float64)),
                                 rtol=1e-4, err_msg=key)

  def test_callable_rules_and_jit(self):
    params = _params()
    stacked = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))
    rules = lambda path, leaf: stacked if path.startswith("blocks/") else None  # noqa: E731
    report = jax.jit(lambda p: diag.norm_report(p, rules, norms=("rms_to_rms", "sup")))(params)
    self.assertEqual(sorted(report), sorted(
        f"{p}/{n}" for p in ("embed/embedding", "blocks/mlp/kernel", "fc/kernel", "head/kernel")
        for n in ("rms_to_rms", "sup")))
    mats = np.asarray(params["blocks"]["mlp"]["kernel"], np.float64)
    self.assertEqual(report["blocks/mlp/kernel/rms_to_rms"].shape, (3,))
    np.testing.assert_allclose(report["blocks/mlp/kernel/rms_to_rms"],
                               [np_rms_to_rms(m) for m in mats], rtol=1e-4)

  def test_optax_lmo_rules(self):
    params = _params()
    params["conv"] = {"kernel": jnp.asarray(_randn((3, 3, 4, 6), 24), jnp.float32)}
    rules = ol.Rules(
        (
            (r"blocks/.*kernel$", ol.Group(norms.Spectral(),
                                           spec=ol.MatrixSpec(fan_in=(1,), fan_out=(2,)))),
            (r"conv/kernel$", ol.Group(norms.SpectralConv())),
            (r"bias$", ol.Group(norms.BiasRMS())),
            (r"head/kernel$", ol.Group(norms.Spectral(), role="output")),
            (r".", ol.Group(norms.Spectral())),
        )
    )
    report = diag.norm_report(params, rules)
    self.assertEqual(report["blocks/mlp/kernel/rms_to_inf"].shape, (3,))
    self.assertNotIn("fc/bias/sup", report)
    conv = np.asarray(params["conv"]["kernel"], np.float64).reshape(36, 6)  # (kh kw c_in, c_out)
    np.testing.assert_allclose(report["conv/kernel/one_to_rms"], np_one_to_rms(conv), rtol=1e-5)
    self.assertEqual(list(report)[0], "head/kernel/rms_to_inf")  # the output layer first
    # An output norm marks the output layer too, wherever it sits.
    rules = ol.Rules(((r"fc/kernel$", ol.Group(norms.RowNorm())), (r".", ol.Group(None))))
    self.assertEqual(list(diag.norm_report(params, rules))[0], "fc/kernel/rms_to_inf")

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "Unknown norm names"):
      diag.norm_report(_params(), norms=("spectral",))
    with self.assertRaisesRegex(TypeError, "rules"):
      diag.norm_report(_params(), rules=3)


if __name__ == "__main__":
  absltest.main()
