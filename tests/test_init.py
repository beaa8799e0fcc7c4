"""``ol.init_params``: where each leaf starts, at any radius.

Properties checked, by NumPy: the default init keeps the RMS of a layer's input
on average (dense, conv, head), never leaves its ball, and a transformer written
here (not the example's) starts within 0.5 nats of Flax's own init at small and
large radii, where the init on the ball's boundary does not.
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

DENSE = [(norms.Spectral(), (16, 48)), (norms.Spectral(), (64, 16)), (norms.RowNorm(), (64, 10)),
         (norms.Sign(), (64, 10)), (norms.Spectral(input_layer=True), (64, 16)),
         (norms.SpectralConv(), (3, 3, 4, 16)),
         (norms.SpectralConv(convention="per_tap"), (3, 3, 4, 16)),
         (norms.Frobenius(), (32, 8))]


def _gain(w) -> float:
  """The RMS of ``x @ W`` over RMS-1 Gaussian inputs of ``W``'s fan-in (all axes but the last)."""
  m = np.asarray(w, np.float64).reshape(-1, np.shape(w)[-1])
  x = np.random.default_rng(0).normal(size=(4096, m.shape[0]))
  return float(np.sqrt(np.mean(np.square(x @ m))))


@pytest.mark.parametrize("norm,shape", DENSE, ids=[f"{type(n).__name__}{s}" for n, s in DENSE])
def test_default_init_keeps_the_rms_of_the_input(norm, shape):
  w = ol.init_params([("w", ol.Group(norm, 1e4))], {"w": jnp.zeros(shape)},
                     jax.random.key(0))["w"]
  assert _gain(w) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("norm,shape", DENSE, ids=[f"{type(n).__name__}{s}" for n, s in DENSE])
@pytest.mark.parametrize("radius", [0.1, 1e4])
def test_default_init_never_leaves_the_ball(norm, shape, radius):
  g = ol.Group(norm, radius)
  w = ol.init_params([("w", g)], {"w": jnp.zeros(shape)}, jax.random.key(0))["w"]
  assert float(jnp.max(norm.norm(w))) <= radius * (1 + 1e-5)
  if radius < 1:  # capped: then on the sphere, the reference's init
    ref = ol.init_params([("w", g)], {"w": jnp.zeros(shape)}, jax.random.key(0), scale="radius")
    np.testing.assert_allclose(w, ref["w"], rtol=1e-5, atol=1e-7)


def test_embedding_rows_have_rms_one():
  w = ol.init_params([("e", ol.Group(norms.ColNorm(), 50.0))], {"e": jnp.zeros((65, 32))},
                     jax.random.key(0))["e"]
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(w)), axis=1)), 1.0, rtol=1e-5)


class _TiedWithPositions(nn.Module):
  """GPT-2's layout: token table tied to the head, a learned position table added to it."""

  @nn.compact
  def __call__(self, ids):
    wte = nn.Embed(65, 32, name="wte")
    x = wte(ids) + nn.Embed(16, 32, name="wpe")(jnp.arange(ids.shape[-1]))
    x = nn.LayerNorm(name="ln")(nn.Dense(32, name="fc")(x))
    return wte.attend(x)


def test_a_table_added_to_a_tied_embedding_starts_at_its_row_rms():
  model, ids = _TiedWithPositions(), jnp.zeros((2, 16), jnp.int32)
  params = model.init(jax.random.key(0), ids)["params"]
  rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x), params, ids)
  roles = {r["path"]: r["role"] for r in ol.describe(rules, params)}
  assert roles["wte/embedding"] == "tied" and roles["wpe/embedding"] == "embedding"
  new = ol.init_params(rules, params, jax.random.key(1))
  row_rms = lambda w: np.sqrt(np.mean(np.square(np.asarray(w, np.float64)), axis=1))
  np.testing.assert_allclose(row_rms(new["wte"]["embedding"]), 1 / math.sqrt(32), rtol=1e-5)
  np.testing.assert_allclose(row_rms(new["wpe"]["embedding"]), 1 / math.sqrt(32), rtol=1e-5)
  # The head keeps the RMS of its (normalized) input: logits of RMS 1.
  x = np.random.default_rng(0).normal(size=(4096, 32))
  logits = x @ np.asarray(new["wte"]["embedding"], np.float64).T
  assert float(np.sqrt(np.mean(logits**2))) == pytest.approx(1.0, rel=0.05)
  # Without a tied table the position table's rows keep RMS 1 (test_embedding_rows_have_rms_one).
  radius = ol.init_params(rules, params, jax.random.key(1), scale="radius")
  assert float(np.max(row_rms(radius["wpe"]["embedding"]))) == pytest.approx(1.0, rel=1e-5)


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
  ours = _first_loss(model, ol.init_params(rules, params, jax.random.key(2)), tokens)
  assert abs(ours - flax_loss) < 0.5, (ours, flax_loss)
  boundary = _first_loss(model, ol.init_params(rules, params, jax.random.key(2),
                                               scale="radius"), tokens)
  if output >= 20:  # on the boundary the logits grow with the output radius
    assert boundary > flax_loss + 1.0, boundary


def test_normalization_scales_are_kept_by_name_rules_too():
  """A LayerNorm/RMSNorm ``scale`` named as Flax names it is a gain under ``default_rules``
  (zeroing it would silence the layer); a bias starts at zero."""
  params = {"ln": {"scale": jnp.ones(8), "bias": jnp.full(8, 3.0)},
            "dense": {"kernel": jnp.ones((8, 8))}, "head": {"kernel": jnp.ones((8, 2))}}
  new = ol.init_params(ol.default_rules(), params, jax.random.key(0))
  np.testing.assert_array_equal(new["ln"]["scale"], np.ones(8))
  np.testing.assert_array_equal(new["ln"]["bias"], np.zeros(8))
