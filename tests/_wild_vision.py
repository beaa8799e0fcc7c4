"""Third-party vision models, re-typed for ``test_wild_models.py``: architecture only, tiny sizes.

From the MLCommons AlgoPerf benchmark (github.com/mlcommons/algorithmic-efficiency,
``algoperf/workloads/``): the ViT with a MAP head of ``imagenet_vit/imagenet_jax``
(forked there from google/big_vision via init2winit), the fastMRI U-Net of
``fastmri/fastmri_jax`` (from init2winit, after facebookresearch/fastMRI) and the
ResNet of ``imagenet_resnet/imagenet_jax`` (Flax's ``examples/imagenet``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

# -- ViT with a multihead-attention-pooling head -----------------------------------------


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
  """MoCo v3's fixed 2-D sine-cosine position embedding (no parameter)."""
  y, x = jnp.mgrid[:h, :w]
  omega = 1.0 / (temperature ** (jnp.arange(width // 4) / (width // 4 - 1)))
  y = jnp.einsum("m,d->md", y.flatten(), omega)
  x = jnp.einsum("m,d->md", x.flatten(), omega)
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None]


class MlpBlock(nn.Module):
  mlp_dim: int | None = None
  use_glu: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    inits = {"kernel_init": nn.initializers.xavier_uniform(),
             "bias_init": nn.initializers.normal(stddev=1e-6)}
    d = x.shape[2]
    x = nn.gelu(nn.Dense(self.mlp_dim or 4 * d, **inits)(x))
    if self.use_glu:
      x = x * nn.Dense(self.mlp_dim, **inits)(x)
    x = nn.Dropout(0.0)(x, train)
    return nn.Dense(d, **inits)(x)


class Encoder1DBlock(nn.Module):
  mlp_dim: int | None = None
  num_heads: int = 2
  use_glu: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    y = nn.LayerNorm(name="LayerNorm_0")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads,
                                        kernel_init=nn.initializers.xavier_uniform(),
                                        deterministic=train,
                                        name="MultiHeadDotProductAttention_1")(y)
    x = x + nn.Dropout(0.0)(y, train)
    y = nn.LayerNorm(name="LayerNorm_2")(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, use_glu=self.use_glu, name="MlpBlock_3")(y, train)
    return x + nn.Dropout(0.0)(y, train)


class Encoder(nn.Module):
  depth: int
  mlp_dim: int | None = None
  num_heads: int = 2
  use_glu: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    for lyr in range(self.depth):
      x = Encoder1DBlock(name=f"encoderblock_{lyr}", mlp_dim=self.mlp_dim,
                         num_heads=self.num_heads, use_glu=self.use_glu)(x, train=train)
    return nn.LayerNorm(name="encoder_layernorm")(x)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe token attends over the patches."""

  mlp_dim: int | None = None
  num_heads: int = 2

  @nn.compact
  def __call__(self, x):
    n, _, d = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), x.dtype)
    probe = jnp.tile(probe, [n, 1, 1])
    x = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, use_bias=True,
                                        kernel_init=nn.initializers.xavier_uniform())(probe, x)
    y = nn.LayerNorm()(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim)(y)
    return x[:, 0]


class ViT(nn.Module):
  num_classes: int = 5
  patch_size: tuple = (4, 4)
  width: int = 16
  depth: int = 1
  mlp_dim: int | None = 32
  num_heads: int = 2
  rep_size: int | bool = True
  use_glu: bool = True
  use_map: bool = True

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(self.width, self.patch_size, strides=self.patch_size, padding="VALID",
                name="conv_patch_extract")(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c]) + posemb_sincos_2d(h, w, c)
    x = nn.Dropout(0.0)(x, not train)
    x = Encoder(depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                use_glu=self.use_glu, name="Transformer")(x, train=not train)
    x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim)(x) if self.use_map else \
        jnp.mean(x, axis=1)
    if self.rep_size:
      rep = self.width if self.rep_size is True else self.rep_size
      x = nn.tanh(nn.Dense(rep, name="pre_logits")(x))
    return nn.Dense(self.num_classes, name="head", kernel_init=nn.initializers.zeros)(x)


# -- U-Net -------------------------------------------------------------------------------


def _instance_norm2d(x, axes, epsilon=1e-5):
  mean = jnp.mean(x, axes, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean))
  return (x - mean) / jnp.sqrt(var + epsilon)


class ConvBlock(nn.Module):
  out_channels: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=True):
    act = functools.partial(jax.nn.leaky_relu, negative_slope=0.2)
    for _ in range(2):
      x = nn.Conv(self.out_channels, (3, 3), strides=(1, 1), use_bias=False)(x)
      x = act(_instance_norm2d(x, (1, 2)))
      x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    return x


class TransposeConvBlock(nn.Module):
  out_channels: int

  @nn.compact
  def __call__(self, x):
    x = nn.ConvTranspose(self.out_channels, (2, 2), strides=(2, 2), use_bias=False)(x)
    return jax.nn.leaky_relu(_instance_norm2d(x, (1, 2)), negative_slope=0.2)


class UNet(nn.Module):
  """Down by average pooling, up by transposed convolutions, skips by concatenation."""

  num_channels: int = 4
  num_pool_layers: int = 2
  out_channels = 1

  @nn.compact
  def __call__(self, x, train=True, dropout_rate=0.0):
    block = functools.partial(ConvBlock, dropout_rate=dropout_rate)
    down = [block(self.num_channels)]
    ch = self.num_channels
    for _ in range(self.num_pool_layers - 1):
      down.append(block(ch * 2))
      ch *= 2
    conv = block(ch * 2)
    up_conv, up_transpose = [], []
    for _ in range(self.num_pool_layers - 1):
      up_transpose.append(TransposeConvBlock(ch))
      up_conv.append(block(ch))
      ch //= 2
    up_transpose.append(TransposeConvBlock(ch))
    up_conv.append(block(ch))
    stack, out = [], jnp.expand_dims(x, -1)
    for layer in down:
      out = layer(out, train)
      stack.append(out)
      out = nn.avg_pool(out, window_shape=(2, 2), strides=(2, 2))
    out = conv(out, train)
    for transpose, conv in zip(up_transpose, up_conv, strict=True):
      skip = stack.pop()
      out = transpose(out)
      pad = ((0, 0), (0, int(out.shape[-3] != skip.shape[-3])),
             (0, int(out.shape[-2] != skip.shape[-2])), (0, 0))
      if any(p[1] for p in pad):
        out = jnp.pad(out, pad, mode="reflect")
      out = conv(jnp.concatenate((out, skip), axis=-1), train)
    return nn.Conv(self.out_channels, kernel_size=(1, 1), strides=(1, 1))(out).squeeze(-1)


# -- ResNet ------------------------------------------------------------------------------


class ResNetBlock(nn.Module):
  filters: int
  conv: type
  norm: type
  act: object
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.constant(0.0))(self.conv(self.filters, (3, 3))(y))
    if residual.shape != y.shape or self.strides != (1, 1):
      residual = self.conv(self.filters, (1, 1), self.strides, name="Conv_proj")(residual)
      residual = self.norm(name="BatchNorm_proj")(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  stage_sizes: tuple = (1, 1)
  num_classes: int = 5
  num_filters: int = 4

  @nn.compact
  def __call__(self, x, update_batch_norm=True, use_running_average_bn=None):
    conv = functools.partial(nn.Conv, use_bias=False)
    if use_running_average_bn is None:
      use_running_average_bn = not update_batch_norm
    norm = functools.partial(nn.BatchNorm, use_running_average=use_running_average_bn,
                             momentum=0.9, epsilon=1e-5)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="Conv_init")(x)
    x = nn.relu(norm(name="BatchNorm_init")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = ResNetBlock(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm,
                        act=nn.relu)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal())(x)
