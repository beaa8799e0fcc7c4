"""A decoder-only GPT in Flax NNX, routed by ``optax_lmo.infer_rules`` on its own computation.

Parameter paths and what the trace makes of them::

  embed/embedding            (vocab, d)      token embedding    -> ColNorm
  pos_embed/embedding        (seq, d)        learned positions  -> ColNorm (rotary: absent)
  blocks/i/norm1/scale       (d,)                               -> BiasRMS
  blocks/i/attn/qkv/kernel   (d, 3d)                            -> Spectral (its view: blocks)
  blocks/i/attn/out/kernel   (d, d)                             -> Spectral
  blocks/i/norm2/scale       (d,)                               -> BiasRMS
  blocks/i/mlp/fc_in/kernel  (d, 4d)                            -> Spectral
  blocks/i/mlp/fc_out/kernel (4d, d)                            -> Spectral
  final_norm/scale           (d,)                               -> BiasRMS
  head/kernel                (d, vocab)      untied output head -> RowNorm (or Sign)

Pre-norm blocks (RMSNorm), causal attention with rotary or learned positions, and
a GELU MLP whose activation can be scaled by sqrt(2) to keep its variance [S].
``GPT(tokens, max_logits=True)`` also returns each attention head's largest logit,
which :func:`qk_clip` (``--qk-clip``) uses to cap them.

``GPTConfig.blocks`` (``--blocks``) is ``infer_rules(blocks=)``: the fused qkv
kernel's matrices for the rules and both inits that read them: ``fused`` one
``d x 3d`` matrix, ``split`` q, k and v, ``per_head`` every head of each (the
trace reads the cut from the model's ``jnp.split`` and reshape into heads).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_lmo

INITS = ("scion", "rms", "standard")
BLOCKS = ("fused", "split", "per_head")  # infer_rules(blocks=)
QKV_KERNEL = r"(^|/)attn/qkv/kernel$"


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Shape and initialization of the model."""

  vocab_size: int = 128  # number of token ids (the tokenizer's vocabulary size)
  seq_len: int = 128  # longest context; the size of the learned position table
  width: int = 128  # model width d (residual stream)
  depth: int = 4  # number of transformer blocks
  heads: int = 4  # attention heads; must divide width
  rotary: bool = True  # rotary position embedding (True) or a learned table pos_embed (False)
  scale_gelu: bool = True  # multiply the GELU output by sqrt(2) to keep its variance [S]
  init: str = "rms"  # "rms": ol.init_params; "scion": on each ball's sphere; "standard": Flax
  embed_radius: float = 1.0  # radius of the embedding ball (rules, inits)
  hidden_radius: float = 48.0  # radius of the hidden-matrix ball (rules, inits)
  output_radius: float = 160.0  # radius of the output-head ball (rules, inits)
  output_norm: str = "rownorm"  # output-head geometry for the scion init: "rownorm" or "sign"
  head_init_scale: float = 1.0  # the initial head kernel times this (0: a zero head)
  dtype: str = "float32"  # activation (compute) dtype; parameters are always float32
  blocks: str = "fused"  # the qkv kernel as one matrix, as q, k and v, or per head (BLOCKS)

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"heads={self.heads} must divide width={self.width}.")
    if self.rotary and (self.width // self.heads) % 2:
      raise ValueError(f"rotary needs an even head dimension, got {self.width // self.heads}.")
    if self.init not in INITS:
      raise ValueError(f"init must be one of {INITS}, got {self.init!r}.")
    if self.output_norm not in ("rownorm", "sign"):
      raise ValueError(f"output_norm must be 'rownorm' or 'sign', got {self.output_norm!r}.")
    if self.blocks not in BLOCKS:
      raise ValueError(f"blocks must be one of {BLOCKS}, got {self.blocks!r}.")


def _rotary(x_BxLxHxK: jax.Array) -> jax.Array:
  """Rotary position embedding (half-split form) on the last axis."""
  _, l, _, k = x_BxLxHxK.shape
  half = k // 2
  freq_F = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxF = jnp.arange(l, dtype=jnp.float32)[:, None] * freq_F[None, :]
  cos_Lx1xF = jnp.cos(angle_LxF)[:, None, :].astype(x_BxLxHxK.dtype)
  sin_Lx1xF = jnp.sin(angle_LxF)[:, None, :].astype(x_BxLxHxK.dtype)
  x1, x2 = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
  return jnp.concatenate([x1 * cos_Lx1xF - x2 * sin_Lx1xF, x1 * sin_Lx1xF + x2 * cos_Lx1xF], -1)


class Attention(nnx.Module):
  """Causal multi-head self-attention with a fused qkv projection."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.width, jnp.dtype(cfg.dtype)
    self.heads, self.rotary = cfg.heads, cfg.rotary
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dt, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array, *, max_logits: bool = False):
    """The attention output; with ``max_logits``, also each head's largest logit ``(H,)``."""
    b, l, d = x_BxLxD.shape
    h = self.heads
    qkv_BxLx3D = self.qkv(x_BxLxD)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        t.reshape(b, l, h, d // h) for t in jnp.split(qkv_BxLx3D, 3, axis=-1)
    )
    if self.rotary:
      q_BxLxHxK, k_BxLxHxK = _rotary(q_BxLxHxK), _rotary(k_BxLxHxK)
    if not max_logits:
      o_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True)
      return self.out(o_BxLxHxK.reshape(b, l, d))
    o_BxLxHxK, max_H = _attention_with_max_logits(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    return self.out(o_BxLxHxK.reshape(b, l, d)), max_H


def _attention_with_max_logits(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
  """Causal attention written out, and each head's largest logit (without gradient).

  The attention as XLA's ``dot_product_attention`` computes it; the largest logit
  ``q . k / sqrt(K)`` is over the batch, the queries and each query's unmasked keys.
  """
  l, k = q_BxLxHxK.shape[1], q_BxLxHxK.shape[-1]
  logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK,
                              preferred_element_type=jnp.float32) / math.sqrt(k)
  causal_LxL = jnp.tril(jnp.ones((l, l), bool))
  logits_BxHxLxL = jnp.where(causal_LxL, logits_BxHxLxL, jnp.finfo(jnp.float32).min)
  max_H = jax.lax.stop_gradient(logits_BxHxLxL.max(axis=(0, 2, 3)))
  probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1).astype(v_BxLxHxK.dtype)
  return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL, v_BxLxHxK), max_H


class MLP(nnx.Module):
  """``fc_out(gelu(fc_in(x)))``, optionally times sqrt(2)."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.width, jnp.dtype(cfg.dtype)
    self.gain = math.sqrt(2.0) if cfg.scale_gelu else 1.0
    self.fc_in = nnx.Linear(d, 4 * d, use_bias=False, dtype=dt, rngs=rngs)
    self.fc_out = nnx.Linear(4 * d, d, use_bias=False, dtype=dt, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    h_BxLxF = jax.nn.gelu(self.fc_in(x_BxLxD)) * self.gain
    return self.fc_out(h_BxLxF)


class Block(nnx.Module):
  """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.width, jnp.dtype(cfg.dtype)
    self.norm1 = nnx.RMSNorm(d, dtype=dt, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = nnx.RMSNorm(d, dtype=dt, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array, *, max_logits: bool = False):
    """The block's output; with ``max_logits``, also its heads' largest logits (``Attention``)."""
    a = self.attn(self.norm1(x_BxLxD), max_logits=max_logits)
    a_BxLxD, max_H = a if max_logits else (a, None)
    x_BxLxD = x_BxLxD + a_BxLxD
    x_BxLxD = x_BxLxD + self.mlp(self.norm2(x_BxLxD))
    return (x_BxLxD, max_H) if max_logits else x_BxLxD


class GPT(nnx.Module):
  """Decoder-only transformer: token ids ``(B, L)`` -> float32 logits ``(B, L, vocab)``."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.width, jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, d, dtype=dt, rngs=rngs)
    self.pos_embed = None if cfg.rotary else nnx.Embed(cfg.seq_len, d, dtype=dt, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final_norm = nnx.RMSNorm(d, dtype=dt, rngs=rngs)
    self.head = nnx.Linear(d, cfg.vocab_size, use_bias=False, dtype=dt, rngs=rngs)
    if cfg.init in ("rms", "scion"):  # the library's init: inside each ball, or on its sphere
      params = nnx.state(self, nnx.Param)
      scale = "rms" if cfg.init == "rms" else "radius"
      nnx.update(self, optax_lmo.init_params(rules(cfg), params, rngs.params(), scale=scale))
    if cfg.head_init_scale != 1.0:
      self.head.kernel.set_value(self.head.kernel.get_value() * cfg.head_init_scale)

  def __call__(self, tokens_BxL: jax.Array, frozen_below: int = 0, *, max_logits: bool = False):
    """Logits; no gradient reaches the blocks ``< frozen_below`` (nor, if > 0, the embeddings).

    With ``max_logits``: ``(logits, {"blocks/i/attn": (H,) largest attention logits})``, what
    :func:`qk_clip` takes (the attention is then written out instead of fused).
    """
    x_BxLxD = self.embed(tokens_BxL)
    if self.pos_embed is not None:
      x_BxLxD = x_BxLxD + self.pos_embed(jnp.arange(tokens_BxL.shape[1]))[None]
    found = {}
    for i, block in enumerate(self.blocks):
      if i == frozen_below > 0:  # the backward pass stops here (progressive.py)
        x_BxLxD = jax.lax.stop_gradient(x_BxLxD)
      if max_logits:
        x_BxLxD, found[f"blocks/{i}/attn"] = block(x_BxLxD, max_logits=True)
      else:
        x_BxLxD = block(x_BxLxD)
    logits_BxLxV = self.head(self.final_norm(x_BxLxD)).astype(jnp.float32)
    return (logits_BxLxV, found) if max_logits else logits_BxLxV


@functools.cache
def rules(cfg: GPTConfig) -> optax_lmo.Rules:
  """``optax_lmo.infer_rules`` on this model's own call, at ``cfg``'s radii, head norm and
  ``blocks``: what the optimizers and both library inits read. Traced once per config on
  an abstract model (nothing runs)."""
  abstract = nnx.eval_shape(lambda: GPT(dataclasses.replace(cfg, init="standard"),
                                        rngs=nnx.Rngs(0)))
  tokens = jax.ShapeDtypeStruct((1, cfg.seq_len), jnp.int32)
  return optax_lmo.infer_rules(abstract, tokens, embed_radius=cfg.embed_radius,
                               hidden_radius=cfg.hidden_radius, output_radius=cfg.output_radius,
                               output_norm=cfg.output_norm, blocks=cfg.blocks)


def muon_rules(cfg: GPTConfig, radius: float = 1.0) -> optax_lmo.Rules:
  """Muon's routing of this model: its hidden matrices (their view from :func:`rules`) at
  ``radius``; the embeddings, head and gains to the fallback optimizer (AdamW)."""
  inferred = rules(cfg)

  def group(path, leaf):
    g = inferred.group_for(path, leaf)
    if g.role == "hidden":
      return dataclasses.replace(g, radius=radius)
    return optax_lmo.Group(None, role=g.role, evidence=g.evidence)

  return optax_lmo.Rules(group, strict=True)


def qk_clip(cfg: GPTConfig, tau: float) -> optax.GradientTransformationExtraArgs:
  """``ol.contrib.qk_clip`` for this model's fused ``[q | k | v]`` kernels (``--qk-clip``).

  Chained after the optimizer; its ``update`` takes ``max_logits``, the second
  output of ``GPT(..., max_logits=True)``.
  """
  return optax_lmo.contrib.qk_clip(tau, query=(QKV_KERNEL, 0, 3), key=(QKV_KERNEL, 1, 3),
                                   heads=cfg.heads)


def optax_muon_dims(params):
  """optax.contrib.muon's routing: hidden 2-D kernels to Muon; embeddings, head, gains to AdamW."""

  def dims(path, x):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    skip = x.ndim != 2 or re.search(r"(^|/)(pos_)?embed/|(^|/)head/", name)
    return None if skip else optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)

  return jax.tree_util.tree_map_with_path(dims, params)
