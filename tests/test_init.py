"""``ol.init_params``: where each leaf starts, at any radius.

Properties checked: the unit init maps RMS-1 inputs to RMS-1 outputs (dense and
conv, by NumPy), never leaves its ball, and a transformer written here (not the
example's) starts no more than 0.5 nats above Flax's own init (at ``ln V``) at small
and large radii, where the init on the ball's boundary does not.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms


def _rms(x):
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


@pytest.mark.parametrize("d_in,d_out", [(16, 16), (16, 48)])
@pytest.mark.parametrize("radius", [0.5, 3.0, 50.0])
def test_unit_init_of_a_dense_kernel_keeps_the_rms_and_stays_in_the_ball(d_in, d_out, radius):
  g = ol.Group(norms.Spectral(), radius)
  w = ol.init_params([("w", g)], {"w": jnp.zeros((d_in, d_out))}, jax.random.key(0))["w"]
  assert float(g.norm.norm(w)) == pytest.approx(min(radius, 1.0), rel=1e-5)
  x = np.random.default_rng(0).normal(size=(5, d_in))
  gain = min(radius, 1.0)  # d_in <= d_out: exactly RMS-preserving at unit norm
  for row in x:
    assert _rms(row @ np.asarray(w)) == pytest.approx(gain * _rms(row), rel=1e-4)


def test_unit_init_of_a_conv_kernel_keeps_the_patch_rms():
  """A 3x3 kernel from 1 to 16 channels: the 9-entry patch's RMS is the output's."""
  g = ol.Group(norms.SpectralConv(), 27.0)
  k = ol.init_params([("k", g)], {"k": jnp.zeros((3, 3, 1, 16))}, jax.random.key(0))["k"]
  assert float(g.norm.norm(k)) == pytest.approx(3.0, rel=1e-5)  # sqrt(taps) < 27
  m = np.asarray(k).reshape(9, 16)
  for patch in np.random.default_rng(1).normal(size=(5, 9)):
    assert _rms(patch @ m) == pytest.approx(_rms(patch), rel=1e-4)


@pytest.mark.parametrize("n,radius", [(128, 10.0), (128, 3000.0)])
@pytest.mark.parametrize("head", [norms.RowNorm(), norms.Sign()])
def test_unit_init_of_a_head_gives_small_logits(n, radius, head):
  w = ol.init_params([("w", ol.Group(head, radius))], {"w": jnp.zeros((n, 65))},
                     jax.random.key(0))["w"]
  x = np.random.default_rng(0).normal(size=(64, n))  # RMS 1 features, as after a final norm
  assert _rms(x @ np.asarray(w)) < 2.0 / math.sqrt(n)


def test_scale_is_checked():
  with pytest.raises(ValueError, match="scale must be one of"):
    ol.init_params(None, {"w": jnp.zeros((4, 4))}, jax.random.key(0), scale="boundary")


class _Block(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    q, k, v = jnp.split(nn.Dense(3 * self.width, use_bias=False)(h), 3, axis=-1)
    a = jax.nn.softmax(jnp.einsum("bld,bmd->blm", q, k) / math.sqrt(self.width), axis=-1)
    x = x + nn.Dense(self.width, use_bias=False)(jnp.einsum("blm,bmd->bld", a, v))
    h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
    return x + nn.Dense(self.width)(nn.gelu(h))


class _Transformer(nn.Module):
  vocab: int = 64
  width: int = 32

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.width)(tokens)
    for _ in range(2):
      x = _Block(self.width)(x)
    return nn.Dense(self.vocab, use_bias=False)(nn.LayerNorm()(x))


def _first_loss(model, params, tokens):
  logits = model.apply({"params": params}, tokens[:, :-1])
  return float(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean())


@pytest.mark.parametrize("hidden,output", [(3.0, 10.0), (6.0, 20.0), (50.0, 3000.0)])
def test_a_transformer_starts_near_flax_init_at_any_radius(hidden, output):
  model = _Transformer()
  tokens = jax.random.randint(jax.random.key(0), (8, 17), 0, model.vocab)
  params = model.init(jax.random.key(1), tokens[:, :-1])["params"]
  apply = lambda p, t: model.apply({"params": p}, t)
  rules = ol.infer_rules(apply, params, tokens[:, :-1], hidden_radius=hidden,
                         output_radius=output)
  flax_loss = _first_loss(model, params, tokens)
  unit = _first_loss(model, ol.init_params(rules, params, jax.random.key(2)), tokens)
  # Never far above Flax's start; in fact at the uniform-prediction loss (Flax's head starts
  # with logits of RMS about 1, half a nat above it).
  assert unit < flax_loss + 0.5, (unit, flax_loss)
  assert abs(unit - math.log(model.vocab)) < 0.1, unit
  boundary = _first_loss(model, ol.init_params(rules, params, jax.random.key(2),
                                               scale="radius"), tokens)
  if output >= 20:  # on the boundary the logits grow with the output radius
    assert boundary > flax_loss + 1.0, boundary
