"""Norm-transfer laws (Filatov et al., arXiv:2510.03871) against formulas written here in NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from optax_lmo._src import transfer as sch

# (B0, D0, B, D): B in 4096-token sequences, D in tokens.
POINTS = [(32, 2**30, 128, 2**33), (256, 1e11, 16, 3e9), (64, 2.5e9, 64, 1.38e11)]


def np_log2_lr(b, d, a=0.62, e=-0.56, c=9.8):
  return a * math.log2(b) + e * math.log2(d) + c


class TransferLawTest(parameterized.TestCase):

  def test_nt_sanity_point(self):
    # [NT]: B = 128 sequences, D = 2^33 tokens -> log2 lr* = 0.62*7 - 0.56*33 + 9.8 = -4.34.
    lr = sch.optimal_lr(128, 2**33)
    self.assertEqual(lr.dtype, jnp.float32)
    self.assertAlmostEqual(math.log2(float(lr)), -4.34, places=5)

  def test_sequence_length_converts_batch_units(self):
    # 512 sequences of 1024 tokens is 128 sequences of 4096 tokens.
    np.testing.assert_allclose(
        sch.optimal_lr(512, 2**33, sequence_length=1024), sch.optimal_lr(128, 2**33), rtol=1e-6
    )

  @parameterized.parameters(*POINTS)
  def test_ratio_form_matches_formula_and_absolute_law(self, b0, d0, b, d):
    lr0 = 2.0 ** np_log2_lr(b0, d0)
    # Python ints above 2^31 cannot cross a jit boundary (int32): pass floats there.
    got = jax.jit(sch.transfer_lr)(*(float(x) for x in (lr0, b0, d0, b, d)))
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(sch.transfer_lr(lr0, b0, d0, b, d), got, rtol=1e-6)
    np.testing.assert_allclose(got, lr0 * (b / b0) ** 0.62 * (d / d0) ** -0.56, rtol=1e-5)
    np.testing.assert_allclose(got, 2.0 ** np_log2_lr(b, d), rtol=1e-5)
    np.testing.assert_allclose(got, sch.optimal_lr(b, d), rtol=1e-5)

  def test_custom_exponents(self):
    got = sch.transfer_lr(0.1, 8, 1e9, 32, 4e9, batch_exponent=0.5, tokens_exponent=-0.25)
    np.testing.assert_allclose(got, 0.1 * 4**0.5 * 4**-0.25, rtol=1e-6)

  def test_laws_pick_the_exponents_and_numbers_override_them(self):
    b0, d0, b, d = 16 * 128, 2.048e6, 64 * 128, 8.192e6
    for law, (a, e) in sch.LAWS.items():
      np.testing.assert_allclose(sch.transfer_lr(0.01, b0, d0, b, d, law=law),
                                 0.01 * (b / b0) ** a * (d / d0) ** e, rtol=1e-5)
    np.testing.assert_allclose(sch.transfer_lr(0.01, b0, d0, b, d),  # "nt" by default
                               sch.transfer_lr(0.01, b0, d0, b, d, law="nt"), rtol=0)
    a_scion = sch.LAWS["scion"][0]
    np.testing.assert_allclose(sch.transfer_lr(0.01, b0, d0, b, d, law="scion", tokens_exponent=0),
                               0.01 * (b / b0) ** a_scion, rtol=1e-5)
    np.testing.assert_allclose(sch.transfer_lr(0.01, b0, d0, b, d, law="scion", batch_exponent=1,
                                               tokens_exponent=-1), 0.01 * 4 / 4, rtol=1e-5)

  def test_unknown_law_is_refused_naming_the_choices(self):
    with self.assertRaisesRegex(ValueError, r"unknown law='muon'; choose from \['nt', 'scion'\]"):
      sch.transfer_lr(0.01, 16, 1e6, 64, 1e6, law="muon")

  @parameterized.parameters(*POINTS)
  def test_transfer_batch(self, b0, d0, b, d):
    del b
    np.testing.assert_allclose(sch.transfer_batch(b0, d0, d), b0 * (d / d0) ** 0.45, rtol=1e-5)

  def test_batch_and_lr_together_give_d_to_minus_0_28(self):
    # B* ~ D^0.45 and lr ~ B^0.62 D^-0.56 give lr* ~ D^(0.62*0.45 - 0.56) = D^-0.281.
    b0, d0 = 64, 2**30
    for d in (2**32, 2**36, 2**40):
      b = sch.transfer_batch(b0, d0, d)
      lr = sch.transfer_lr(1.0, b0, d0, b, d)
      slope = math.log2(float(lr)) / math.log2(d / d0)
      self.assertAlmostEqual(slope, 0.62 * 0.45 - 0.56, places=5)
      self.assertAlmostEqual(slope, -0.28, places=2)


class ScheduleTest(parameterized.TestCase):

  def test_composes_with_warmup_cosine_under_jit(self):
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=100)
    sched = sch.norm_transfer_schedule(
        2**-6, 128, 2**33, proxy=(32, 2**30), base_schedule=unit
    )
    peak = 2**-6 * 4**0.62 * 8**-0.56
    steps = jnp.arange(0, 101)
    got = jax.jit(jax.vmap(sched))(steps)
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(got, peak * np.asarray(jax.vmap(unit)(steps)), rtol=1e-5, atol=1e-9)
    self.assertEqual(float(got[0]), 0.0)
    np.testing.assert_allclose(jnp.max(got), peak, rtol=1e-5)
    np.testing.assert_allclose(got[10], peak, rtol=1e-5)  # peak at the end of warmup

  def test_linear_decay_tail(self):
    # The Scion reference shape: constant, then linear decay over the last 28% of steps.
    unit = optax.join_schedules(
        [optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 28)], [72]
    )
    sched = sch.norm_transfer_schedule(None, 128, 2**33, base_schedule=unit)
    peak = 2.0 ** np_log2_lr(128, 2**33)
    np.testing.assert_allclose(jax.jit(sched)(0), peak, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(sched)(86), peak / 2, rtol=1e-5)
    self.assertAlmostEqual(float(sched(100)), 0.0)

  def test_constant_without_base_schedule(self):
    sched = sch.norm_transfer_schedule(0.01, 64, 1e10, proxy=(64, 1e10))
    for step in (0, 5, 10_000):
      np.testing.assert_allclose(sched(step), 0.01, rtol=1e-6)

  def test_drives_an_optax_optimizer_under_jit(self):
    sched = sch.norm_transfer_schedule(
        0.1, 8, 1e9, proxy=(8, 1e9), base_schedule=optax.linear_schedule(1.0, 0.0, 4)
    )
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=sched)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    step = jax.jit(opt.update)
    grads = {"w": jnp.ones(3)}
    seen = []
    for _ in range(3):
      updates, state = step(grads, state, params)
      seen.append(float(-updates["w"][0]))
    np.testing.assert_allclose(seen, [0.1, 0.075, 0.05], rtol=1e-6)
    self.assertEqual(state.hyperparams["learning_rate"].dtype, jnp.float32)

  @parameterized.parameters((0.1, None), (None, (8, 1e9)))
  def test_half_specified_proxy_raises(self, lr, proxy):
    with self.assertRaisesRegex(ValueError, "proxy"):
      sch.norm_transfer_schedule(lr, 16, 1e10, proxy=proxy)


class GroupMultiplierTest(absltest.TestCase):

  def test_nt_preset(self):
    m = sch.group_lr_multipliers()
    self.assertEqual(m, {"input": 1.0, "hidden": 0.125, "output": 1.0})
    self.assertEqual(list(m), ["input", "hidden", "output"])
    m["hidden"] = 5.0  # a fresh dict each call
    self.assertEqual(sch.group_lr_multipliers("nt")["hidden"], 0.125)
    self.assertEqual(set(sch.group_lr_multipliers("uniform").values()), {1.0})

  def test_unknown_preset(self):
    with self.assertRaisesRegex(ValueError, "preset"):
      sch.group_lr_multipliers("adam")


def _sweep(a, b, c, noise, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for batch in (8, 32, 128, 512):
    for tokens in (2**27, 2**29, 2**31, 2**33, 2**35):
      log2_lr = a * math.log2(batch) + b * math.log2(tokens) + c + noise * rng.standard_normal()
      out.append((batch, tokens, 2.0**log2_lr))
  return out


class FitTest(parameterized.TestCase):

  def test_exact_data_recovers_nt_constants(self):
    fit = sch.fit_transfer_exponents(_sweep(0.62, -0.56, 9.8, noise=0.0))
    np.testing.assert_allclose(fit[:3], (0.62, -0.56, 9.8), atol=1e-9)
    self.assertLess(fit.rms_residual, 1e-9)

  @parameterized.parameters((0.62, -0.56, 9.8), (0.5, -0.3, 4.0), (0.8, -0.7, 14.0))
  def test_noisy_data_recovers_exponents(self, a, b, c):
    fit = sch.fit_transfer_exponents(_sweep(a, b, c, noise=0.1, seed=1))
    self.assertAlmostEqual(fit.batch_exponent, a, delta=0.03)
    self.assertAlmostEqual(fit.tokens_exponent, b, delta=0.02)
    self.assertAlmostEqual(fit.log2_constant, c, delta=0.6)
    self.assertAlmostEqual(fit.rms_residual, 0.1, delta=0.05)
    # The fitted law predicts the noise-free optimum well inside an octave.
    pred = math.log2(float(fit.lr(1024, 2**36)))
    self.assertAlmostEqual(pred, a * 10 + b * 36 + c, delta=0.25)

  def test_single_batch_size_with_fixed_batch_exponent(self):
    sweep = [(64, d, 2.0 ** np_log2_lr(64, d)) for d in (1e9, 1e10, 1e11)]
    with self.assertRaisesRegex(ValueError, "batch_exponent=0.62"):
      sch.fit_transfer_exponents(sweep)
    fit = sch.fit_transfer_exponents(sweep, batch_exponent=0.62)
    self.assertEqual(fit.batch_exponent, 0.62)
    np.testing.assert_allclose(fit[1:3], (-0.56, 9.8), atol=1e-9)

  def test_bad_results(self):
    with self.assertRaisesRegex(ValueError, "triples"):
      sch.fit_transfer_exponents([(1, 2)])
    with self.assertRaisesRegex(ValueError, "positive"):
      sch.fit_transfer_exponents([(8, 1e9, 0.0), (16, 1e9, 0.1), (8, 1e10, 0.1)])


if __name__ == "__main__":
  absltest.main()
