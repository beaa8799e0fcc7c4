"""Third-party translation, recommender and graph models, re-typed for ``test_wild_models.py``.

From the MLCommons AlgoPerf benchmark (github.com/mlcommons/algorithmic-efficiency,
``algoperf/workloads/``): the WMT translation Transformer of ``wmt/wmt_jax`` (Flax's
``examples/wmt``, shared embeddings, float token ids as its workload feeds them),
DLRM-small of ``criteo1tb/criteo1tb_jax`` (one embedding table, categorical
features passed as floats) and the graph network of ``ogbg/ogbg_jax``, whose jraph
``GraphNetwork`` (github.com/google-deepmind/jraph, ``jraph/_src/models.py``) is
re-typed here with ``jax.ops.segment_sum``: jraph is not a dependency.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

# -- WMT Transformer ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int = 16
  emb_dim: int = 16
  num_heads: int = 2
  num_layers: int = 1
  qkv_dim: int = 16
  mlp_dim: int = 32
  max_len: int = 16
  attention_temp: float = 1.0
  deterministic: bool = False
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.normal(stddev=1e-6)


def shift_right(x):
  return jnp.pad(x, ((0, 0), (1, 0)), constant_values=x.dtype.type(0))[:, :-1]


def sinusoid(max_len, d):
  """The fixed position table of ``sinusoidal_init`` (no parameter): ``(1, max_len, d)``."""
  position = jnp.arange(max_len)[:, None]
  div = jnp.exp(jnp.arange(d // 2) * -jnp.log(10_000.0) / (d // 2 - 1))
  return jnp.concatenate([jnp.sin(position * div), jnp.cos(position * div)], axis=1)[None]


class MlpBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    y = nn.relu(nn.Dense(cfg.mlp_dim, kernel_init=cfg.kernel_init, bias_init=cfg.bias_init)(x))
    y = nn.Dropout(0.1)(y, deterministic=cfg.deterministic)
    y = nn.Dense(x.shape[-1], kernel_init=cfg.kernel_init, bias_init=cfg.bias_init)(y)
    return nn.Dropout(0.1)(y, deterministic=cfg.deterministic)


def _attention(cfg, name=None):
  return nn.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads, qkv_features=cfg.qkv_dim, kernel_init=cfg.kernel_init,
      bias_init=cfg.bias_init, use_bias=False, broadcast_dropout=False, dropout_rate=0.0,
      deterministic=cfg.deterministic, name=name)


class Encoder1DBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, inputs, mask):
    cfg = self.config
    x = nn.LayerNorm()(inputs)
    x = _attention(cfg)(cfg.attention_temp * x, x, mask=mask)
    x = nn.Dropout(0.1)(x, deterministic=cfg.deterministic) + inputs
    return x + MlpBlock(cfg)(nn.LayerNorm()(x))


class EncoderDecoder1DBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, targets, encoded, decoder_mask, encoder_decoder_mask):
    cfg = self.config
    x = nn.LayerNorm()(targets)
    x = _attention(cfg)(cfg.attention_temp * x, x, mask=decoder_mask)
    x = nn.Dropout(0.1)(x, deterministic=cfg.deterministic) + targets
    y = nn.LayerNorm()(x)
    y = _attention(cfg)(cfg.attention_temp * y, encoded, mask=encoder_decoder_mask)
    y = nn.Dropout(0.1)(y, deterministic=cfg.deterministic) + x
    return y + MlpBlock(cfg)(nn.LayerNorm()(y))


class Encoder(nn.Module):
  config: TransformerConfig
  shared_embedding: Any = None

  @nn.compact
  def __call__(self, inputs, encoder_mask):
    cfg = self.config
    x = self.shared_embedding(inputs.astype("int32"))
    x = x + sinusoid(cfg.max_len, x.shape[-1])[:, :x.shape[1], :]
    x = nn.Dropout(0.1)(x, deterministic=cfg.deterministic)
    for lyr in range(cfg.num_layers):
      x = Encoder1DBlock(cfg, name=f"encoderblock_{lyr}")(x, encoder_mask)
    return nn.LayerNorm(name="encoder_layernorm")(x)


class Decoder(nn.Module):
  config: TransformerConfig
  shared_embedding: Any = None

  @nn.compact
  def __call__(self, encoded, targets, decoder_mask, encoder_decoder_mask):
    cfg = self.config
    y = self.shared_embedding(shift_right(targets.astype("int32")))
    y = y + sinusoid(cfg.max_len, y.shape[-1])[:, :y.shape[1], :]
    y = nn.Dropout(0.1)(y, deterministic=cfg.deterministic)
    for lyr in range(cfg.num_layers):
      y = EncoderDecoder1DBlock(cfg, name=f"encoderdecoderblock_{lyr}")(
          y, encoded, decoder_mask, encoder_decoder_mask)
    y = nn.LayerNorm(name="encoderdecoder_layernorm")(y)
    return self.shared_embedding.attend(y.astype(jnp.float32)) / jnp.sqrt(y.shape[-1])


class Transformer(nn.Module):
  """Encoder-decoder translation model; masks from the (float) ids: ``inputs > 0``."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.shared_embedding = nn.Embed(cfg.vocab_size, cfg.emb_dim,
                                     embedding_init=nn.initializers.normal(stddev=1.0))
    self.encoder = Encoder(cfg, shared_embedding=self.shared_embedding)
    self.decoder = Decoder(cfg, shared_embedding=self.shared_embedding)

  def __call__(self, inputs, targets):
    encoded = self.encoder(inputs, nn.make_attention_mask(inputs > 0, inputs > 0))
    decoder_mask = nn.combine_masks(nn.make_attention_mask(targets > 0, targets > 0),
                                    nn.make_causal_mask(targets))
    return self.decoder(encoded, targets, decoder_mask,
                        nn.make_attention_mask(targets > 0, inputs > 0))


# -- DLRM-small --------------------------------------------------------------------------


def dot_interact(features):
  """The upper triangle of each example's feature Gram matrix."""
  b = features.shape[0]
  xactions = jnp.matmul(features, jnp.transpose(features, [0, 2, 1]))
  indices = jnp.array(jnp.triu_indices(xactions.shape[-1]))
  n = indices.shape[1]
  indices = jnp.tile(indices, [1, b])
  batch = jnp.reshape(jnp.tile(jnp.reshape(jnp.arange(b), [-1, 1]), [1, n]), [1, -1])
  return jnp.reshape(xactions[tuple(jnp.concatenate((batch, indices), 0))], [b, -1])


class DlrmSmall(nn.Module):
  vocab_size: int = 64
  num_dense_features: int = 13
  num_sparse_features: int = 26
  mlp_bottom_dims: tuple = (16, 8)
  mlp_top_dims: tuple = (16, 8, 1)
  embed_dim: int = 8

  @nn.compact
  def __call__(self, x, train, dropout_rate=0.1):
    bottom, cat = jnp.split(x, [self.num_dense_features], 1)
    cat = jnp.asarray(cat, dtype=jnp.int32)
    for dim in self.mlp_bottom_dims:
      bottom = nn.relu(nn.Dense(dim)(bottom))
    b = bottom.shape[0]
    stack = jnp.reshape(bottom, [b, -1, self.embed_dim])
    table = self.param("embedding_table", nn.initializers.uniform(1.0),
                       [self.vocab_size, self.embed_dim])
    embedded = jnp.reshape(table[jnp.reshape(cat, [-1]) % self.vocab_size],
                           [b, -1, self.embed_dim])
    top = jnp.concatenate([bottom, dot_interact(jnp.concatenate([stack, embedded], 1))], -1)
    for i, dim in enumerate(self.mlp_top_dims):
      top = nn.Dense(dim)(top)
      if i < len(self.mlp_top_dims) - 1:
        top = nn.relu(top)
      if i == len(self.mlp_top_dims) - 2:
        top = nn.Dropout(dropout_rate, deterministic=not train)(top)
    return top


# -- Graph network -----------------------------------------------------------------------


class GraphsTuple(NamedTuple):
  nodes: jax.Array
  edges: jax.Array
  receivers: jax.Array
  senders: jax.Array
  globals: jax.Array
  n_node: jax.Array
  n_edge: jax.Array


def graph_network(update_edge_fn, update_node_fn, update_global_fn):
  """jraph's ``GraphNetwork`` with its default ``segment_sum`` aggregations."""

  def apply(g: GraphsTuple) -> GraphsTuple:
    nodes, edges, receivers, senders, globals_, n_node, n_edge = g
    sum_n_node, sum_n_edge = nodes.shape[0], senders.shape[0]
    repeat = lambda x, n, total: jnp.repeat(x, n, axis=0, total_repeat_length=total)
    edges = update_edge_fn(edges, nodes[senders], nodes[receivers],
                           repeat(globals_, n_edge, sum_n_edge))
    nodes = update_node_fn(nodes, jax.ops.segment_sum(edges, senders, sum_n_node),
                           jax.ops.segment_sum(edges, receivers, sum_n_node),
                           repeat(globals_, n_node, sum_n_node))
    graph_idx = jnp.arange(n_node.shape[0])
    node_gr = repeat(graph_idx, n_node, sum_n_node)
    edge_gr = repeat(graph_idx, n_edge, sum_n_edge)
    globals_ = update_global_fn(jax.ops.segment_sum(nodes, node_gr, n_node.shape[0]),
                                jax.ops.segment_sum(edges, edge_gr, n_node.shape[0]), globals_)
    return g._replace(nodes=nodes, edges=edges, globals=globals_)

  return apply


def _mlp(hidden_dims, train, dropout_rate):
  def fn(*args):  # jraph.concatenated_args: the arguments side by side
    x = jnp.concatenate(args, axis=-1)
    for dim in hidden_dims:
      x = nn.relu(nn.LayerNorm()(nn.Dense(dim)(x)))
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return x

  return fn


class GNN(nn.Module):
  """Node and edge embeddings, message passing, a Dense decoder of the graph's globals."""

  num_outputs: int = 4
  latent_dim: int = 8
  hidden_dims: tuple = (8,)
  num_message_passing_steps: int = 2

  @nn.compact
  def __call__(self, graph, train, dropout_rate=0.1):
    graph = graph._replace(globals=jnp.zeros([graph.n_node.shape[0], self.num_outputs]))
    graph = graph._replace(nodes=nn.Dense(self.latent_dim, name="node_embedding")(graph.nodes),
                           edges=nn.Dense(self.latent_dim, name="edge_embedding")(graph.edges))
    for _ in range(self.num_message_passing_steps):
      mlp = lambda: _mlp(self.hidden_dims, train, dropout_rate)
      graph = graph_network(mlp(), mlp(), mlp())(graph)
    return nn.Dense(self.num_outputs)(graph.globals)


def small_graph():
  """Two graphs of 3 and 2 nodes: float node (9) and edge (3) features, int structure."""
  return GraphsTuple(nodes=jnp.ones((5, 9)), edges=jnp.ones((4, 3)),
                     receivers=jnp.array([1, 2, 0, 4]), senders=jnp.array([0, 1, 2, 3]),
                     globals=jnp.zeros((2, 4)), n_node=jnp.array([3, 2]),
                     n_edge=jnp.array([3, 1]))
