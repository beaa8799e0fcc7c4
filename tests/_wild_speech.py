"""Third-party speech models, re-typed for ``test_wild_models.py``: architecture only, tiny sizes.

From the MLCommons AlgoPerf benchmark (github.com/mlcommons/algorithmic-efficiency,
``algoperf/workloads/librispeech_{conformer,deepspeech}/librispeech_jax/``): the
Conformer and the DeepSpeech encoders. Their parameter-free front end (log-mel
features) and SpecAugment act on the data only and are left out: the models take
the features. Padding masks are float arrays (``1.0`` at a padded frame), applied
as ``x * (1 - paddings)``, as the authors write them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

xavier = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
  vocab_size: int = 8
  encoder_dim: int = 16
  num_attention_heads: int = 2
  num_encoder_layers: int = 1
  convolution_kernel_size: int = 5
  feed_forward_expansion_factor: int = 4
  batch_norm_momentum: float = 0.999
  batch_norm_epsilon: float = 0.001
  num_lstm_layers: int = 1
  num_ffn_layers: int = 1


class LayerNorm(nn.Module):
  """``(x - mean) / std * (1 + scale) + bias``, scale and bias initialized to zeros."""

  dim: int = 0
  epsilon: float = 1e-6

  def setup(self):
    self.scale = self.param("scale", nn.initializers.zeros, [self.dim])
    self.bias = self.param("bias", nn.initializers.zeros, [self.dim])

  def __call__(self, x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * (1 + self.scale) + self.bias


class BatchNorm(nn.Module):
  """Batch norm over the unpadded frames (lingvo's), gain ``1 + scale``."""

  dim: int = 0
  momentum: float = 0.999
  epsilon: float = 0.001

  def setup(self):
    self.ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s), self.dim)
    self.ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s), self.dim)
    self.gamma = self.param("scale", nn.initializers.zeros, self.dim)
    self.beta = self.param("bias", nn.initializers.zeros, self.dim)

  def __call__(self, x, paddings, train):
    padding = jnp.expand_dims(paddings, -1)
    axes = list(range(x.ndim - 1))
    if train:
      mask = 1.0 - padding
      count = jnp.maximum(jnp.sum(jnp.ones_like(x) * mask, axis=axes, keepdims=True), 1.0)
      mean = jnp.sum(x * mask, axis=axes, keepdims=True) / count
      var = jnp.sum((x - mean) * (x - mean) * mask, axis=axes, keepdims=True) / count
      m = self.momentum
      self.ra_mean.value = m * self.ra_mean.value + (1 - m) * mean
      self.ra_var.value = m * self.ra_var.value + (1 - m) * var
    else:
      mean, var = self.ra_mean.value, self.ra_var.value
    inv = (1 + self.gamma) / jnp.sqrt(var + self.epsilon)
    return ((x - mean) * inv + self.beta) * (1.0 - padding)


class Conv2dSubsampling(nn.Module):
  """A strided 3x3 convolution; the paddings are subsampled by a convolution with ones."""

  input_channels: int = 0
  output_channels: int = 0

  def setup(self):
    self.kernel = self.param("kernel", xavier, (3, 3, self.input_channels, self.output_channels))
    self.bias = self.param("bias", nn.initializers.zeros, (self.output_channels,))

  def __call__(self, x, paddings):
    y = jax.lax.conv_general_dilated(
        x, self.kernel, (2, 2), "SAME", rhs_dilation=(1, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[3] // self.input_channels)
    y = nn.relu(y + jnp.reshape(self.bias, (1,) * (y.ndim - 1) + (-1,)))
    n = paddings.shape[1]
    pad_len = (n + 1) // 2 * 2 - n
    out_padding = jax.lax.conv_general_dilated(
        paddings[:, :, None], jnp.ones([1, 1, 1]), (2,), [(0, pad_len)],
        dimension_numbers=("NHC", "HIO", "NHC"))
    out_padding = jnp.squeeze(out_padding, -1)
    return y * (1.0 - out_padding[:, :, None, None]), out_padding


def sinusoid(length, dim):
  """The Conformer's fixed positional embedding (no parameter)."""
  position = jnp.arange(length, dtype=jnp.float32)[None, :, None]
  inc = math.log(10_000.0) / max(dim // 2 - 1, 1)
  inv = jnp.exp(jnp.arange(dim // 2, dtype=jnp.float32) * -inc)[None, None, :]
  return jnp.concatenate([jnp.sin(position * inv), jnp.cos(position * inv)], axis=2)


class Subsample(nn.Module):
  encoder_dim: int = 0
  positions: bool = True  # the Conformer adds a fixed sinusoid; DeepSpeech does not

  @nn.compact
  def __call__(self, x, paddings, train):
    y, paddings = Conv2dSubsampling(1, self.encoder_dim)(jnp.expand_dims(x, -1), paddings)
    y, paddings = Conv2dSubsampling(self.encoder_dim, self.encoder_dim)(y, paddings)
    b, t, f, c = y.shape
    y = nn.Dense(self.encoder_dim, kernel_init=xavier)(jnp.reshape(y, (b, t, f * c)))
    if self.positions:
      y = y + sinusoid(t, self.encoder_dim)
    return nn.Dropout(0.1, deterministic=not train)(y), paddings


# -- Conformer ---------------------------------------------------------------------------


class FeedForwardModule(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, padding_mask, train):
    cfg = self.config
    x = LayerNorm(dim=cfg.encoder_dim)(x)
    x = nn.swish(nn.Dense(cfg.encoder_dim * cfg.feed_forward_expansion_factor,
                          kernel_init=xavier)(x))
    x = nn.Dropout(0.1, deterministic=not train)(x) * padding_mask
    x = nn.Dense(cfg.encoder_dim, kernel_init=xavier)(x) * padding_mask
    return nn.Dropout(0.1, deterministic=not train)(x)


class QueryScaler(nn.Module):
  """Scales each query dimension by a learned ``softplus``, ``1.4427 * softplus(scale)``."""

  dim: int = 0

  def setup(self):
    self.scale = self.param("scale", nn.initializers.zeros, [self.dim])

  def __call__(self, x):
    return x * (jnp.array(1.442695041, x.dtype) * jax.nn.softplus(self.scale))


def dot_product_attention(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                          dropout_rng=None, dropout_rate=0.0, deterministic=False,
                          dtype=jnp.float32, precision=None, temperature=1.0, **_):
  """Flax's attention with the query scaled by :class:`QueryScaler` first."""
  query = QueryScaler(dim=query.shape[-1])(query)
  weights = nn.attention.dot_product_attention_weights(
      query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
      dtype, precision)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value) * temperature


class MultiHeadedSelfAttention(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, paddings, train):
    cfg = self.config
    mask_paddings = 1 - paddings
    mask = nn.make_attention_mask(mask_paddings > 0, mask_paddings > 0, dtype=jnp.float32)
    x = LayerNorm(dim=cfg.encoder_dim)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=cfg.num_attention_heads, qkv_features=cfg.encoder_dim, decode=False,
        kernel_init=xavier, bias_init=nn.initializers.zeros, use_bias=True,
        broadcast_dropout=False, attention_fn=dot_product_attention, dropout_rate=0.0,
        deterministic=not train)(x, mask=mask)
    return nn.Dropout(0.1, deterministic=not train)(y)


class ConvolutionBlock(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, paddings, train):
    cfg = self.config
    x = LayerNorm(dim=cfg.encoder_dim)(x)
    gated = nn.Dense(cfg.encoder_dim, kernel_init=xavier)(x)
    x = gated * jax.nn.sigmoid(nn.Dense(cfg.encoder_dim, kernel_init=xavier)(x))
    x = x * (1 - jnp.expand_dims(paddings, -1))
    x = nn.Conv(cfg.encoder_dim, (cfg.convolution_kernel_size,), strides=(1,), padding="SAME",
                feature_group_count=cfg.encoder_dim, use_bias=False, kernel_init=xavier)(x)
    x = BatchNorm(cfg.encoder_dim, cfg.batch_norm_momentum, cfg.batch_norm_epsilon)(
        x, paddings, train)
    x = nn.Dense(cfg.encoder_dim, kernel_init=xavier)(nn.swish(x))
    return nn.Dropout(0.1, deterministic=not train)(x)


class ConformerBlock(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, paddings, train):
    cfg = self.config
    padding_mask = jnp.expand_dims(1 - paddings, -1)
    x = x + 0.5 * FeedForwardModule(cfg)(x, padding_mask, train)
    x = x + MultiHeadedSelfAttention(cfg)(x, paddings, train)
    x = x + ConvolutionBlock(cfg)(x, paddings, train)
    x = x + 0.5 * FeedForwardModule(cfg)(x, padding_mask, train)
    return LayerNorm(dim=cfg.encoder_dim)(x)


class Conformer(nn.Module):
  """Conformer encoder and its CTC projection; returns ``(logits, paddings)``."""

  config: SpeechConfig

  @nn.compact
  def __call__(self, features, paddings, train):
    cfg = self.config
    x, paddings = Subsample(cfg.encoder_dim)(features, paddings, train)
    for _ in range(cfg.num_encoder_layers):
      x = ConformerBlock(cfg)(x, paddings, train)
    x = LayerNorm(cfg.encoder_dim)(x)
    return nn.Dense(cfg.vocab_size, kernel_init=xavier)(x), paddings


# -- DeepSpeech --------------------------------------------------------------------------


@jax.vmap
def flip_sequences(inputs, lengths):
  """Reverses each sequence's first ``length`` steps, keeping the padding at the end."""
  n = inputs.shape[0]
  return inputs[(jnp.arange(n - 1, -1, -1) + lengths) % n]


class GenericRNNSequenceEncoder(nn.Module):
  """Scans one ``OptimizedLSTMCell`` over time (one direction)."""

  hidden_size: int

  def setup(self):
    self.cell = nn.OptimizedLSTMCell(features=self.hidden_size)

  @functools.partial(nn.transforms.scan, variable_broadcast="params",
                     in_axes=(1, flax.core.axes_scan.broadcast), out_axes=1,
                     split_rngs={"params": False})
  def unroll_cell(self, carry, inputs, deterministic):
    carry, output = self.cell(carry, inputs)
    return carry, (carry, output)

  def __call__(self, inputs, lengths, initial_state, reverse=False):
    if reverse:
      inputs = flip_sequences(inputs, lengths)
    _, (_, outputs) = self.unroll_cell(initial_state, inputs, True)
    return flip_sequences(outputs, lengths) if reverse else outputs


class GenericRNN(nn.Module):
  """Bidirectional layers: forward and reversed encoders, their outputs concatenated."""

  hidden_size: int

  @nn.compact
  def __call__(self, inputs, lengths):
    init = nn.OptimizedLSTMCell(self.hidden_size, parent=None).initialize_carry(
        jax.random.PRNGKey(0), (inputs.shape[0], 1))
    fwd = GenericRNNSequenceEncoder(self.hidden_size, name=f"{self.name}SequenceEncoder_0")(
        inputs, lengths, init)
    bwd = GenericRNNSequenceEncoder(self.hidden_size, name=f"{self.name}SequenceEncoder_1")(
        inputs, lengths, init, reverse=True)
    return jnp.concatenate([fwd, bwd], axis=-1)


class LSTM(nn.Module):
  hidden_size: int

  @nn.compact
  def __call__(self, inputs, lengths):
    return GenericRNN(self.hidden_size, name="LSTM")(inputs, lengths)


class BatchRNN(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, paddings, train):
    cfg = self.config
    lengths = jnp.sum(1 - paddings, axis=-1, dtype=jnp.int32)
    x = BatchNorm(cfg.encoder_dim, cfg.batch_norm_momentum, cfg.batch_norm_epsilon)(
        x, paddings, train)
    return LSTM(cfg.encoder_dim // 2)(x, lengths)


class DeepSpeechFeedForward(nn.Module):
  config: SpeechConfig

  @nn.compact
  def __call__(self, x, paddings, train):
    cfg = self.config
    padding_mask = jnp.expand_dims(1 - paddings, -1)
    x = BatchNorm(cfg.encoder_dim, cfg.batch_norm_momentum, cfg.batch_norm_epsilon)(
        x, paddings, train)
    x = nn.relu(nn.Dense(cfg.encoder_dim, kernel_init=xavier)(x)) * padding_mask
    return nn.Dropout(0.1, deterministic=not train)(x)


class DeepSpeech(nn.Module):
  """DeepSpeech2: subsampling, residual bidirectional LSTMs and feed-forwards, CTC projection."""

  config: SpeechConfig

  @nn.compact
  def __call__(self, features, paddings, train):
    cfg = self.config
    x, paddings = Subsample(cfg.encoder_dim, positions=False)(features, paddings, train)
    for _ in range(cfg.num_lstm_layers):
      x = x + BatchRNN(cfg)(x, paddings, train)
    for _ in range(cfg.num_ffn_layers):
      x = x + DeepSpeechFeedForward(cfg)(x, paddings, train)
    x = LayerNorm(cfg.encoder_dim)(x)
    return nn.Dense(cfg.vocab_size, kernel_init=xavier)(x), paddings


def speech_batch(batch: int = 2, frames: int = 16, bins: int = 8):
  """``(features, paddings)``: float features and a float padding mask (the last frames pad)."""
  paddings = np.zeros((batch, frames), np.float32)
  paddings[:, frames - 3:] = 1.0
  return jnp.ones((batch, frames, bins)), jnp.asarray(paddings)
