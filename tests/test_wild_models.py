"""infer_rules on third-party models, traced with their authors' training calls.

Each model is code we did not write: Hugging Face ``transformers``' Flax GPT-2,
BERT, ViT and BART (random tiny configs, nothing downloaded), and models of the
MLCommons AlgoPerf benchmark re-typed in ``_wild_*.py`` (their origins are noted
there). Each is traced the way its authors call it in training (train mode,
dropout keys, ``mutable=["batch_stats"]``, float padding masks, float token ids
where they feed them), under the default ``strict=True``, and every leaf is
compared with a table written by hand from reading the model's code: path regex
(the first match wins) -> norm, radius, role and matrix view.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _wild_other import GNN, DlrmSmall, Transformer, TransformerConfig, small_graph
from _wild_speech import Conformer, DeepSpeech, SpeechConfig, speech_batch
from _wild_vision import ResNet, UNet, ViT

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src.spec import path_str

H, O = 48.0, 160.0  # infer_rules' default hidden and output radii
KEY = jax.random.key(0)


def _whole(ndim):
  return (), tuple(range(ndim))


def vec(role="vector"):
  """Biases, gains, tokens and added tables: BiasRMS on the whole leaf."""
  return lambda ndim: (norms.BiasRMS(), 1.0, role, _whole(ndim))


def dense(role="hidden", fan_in=(0,), fan_out=(1,)):
  norm = {"hidden": norms.Spectral(), "input": norms.Spectral(input_layer=True),
          "output": norms.RowNorm()}[role]
  return lambda ndim: (norm, O if role == "output" else H, role, (fan_in, fan_out))


def conv(role, taps, groups=1, spatial=2):
  fan_in, fan_out = tuple(range(spatial + 1)), (spatial + 1,)
  norm = norms.RowNorm() if role == "output" else norms.SpectralConv(groups=groups)
  return lambda ndim: (norm, O if role == "output" else H * taps, role, (fan_in, fan_out))


def embedding():
  return lambda ndim: (norms.ColNorm(), 1.0, "embedding", ((0,), (1,)))


def tied():  # the output product contracts the width (axis 1) with the activations
  return lambda ndim: (norms.Sign(), O, "tied", ((1,), (0,)))


GAIN, VEC = vec("gain"), vec()
NORMS = [(r"(LayerNorm|layernorm|layer_norm|ln_\w+|BatchNorm\w*|normalization)\w*/scale$", GAIN),
         (r"/bias$", VEC)]


def mismatches(rules, params, table) -> list[str]:
  """Every leaf whose inferred group differs from the first matching row, or matches none;
  every row that matches no leaf (a table that checks nothing)."""
  bad, used = [], set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    p, shape = path_str(path), tuple(leaf.shape)
    row = next((k for k, (pattern, _) in enumerate(table) if re.search(pattern, p)), None)
    if row is None:
      bad.append(f"{p}: no row of the table matches")
      continue
    used.add(row)
    g = rules.group_for(p, leaf)
    view = g.norm.view(shape, g.spec, p)
    got = (g.norm, g.radius, g.role, (tuple(view.fan_in), tuple(view.fan_out)))
    want = table[row][1](len(shape))
    if got != want:
      bad.append(f"{p}: got {got}, want {want} ({g.evidence})")
  bad += [f"row {table[k][0]!r} matches no leaf" for k in range(len(table)) if k not in used]
  return bad


def check(table, fn, params, *args, **kwargs):
  rules = ol.infer_rules(fn, params, *args, **kwargs)  # strict: an undecided leaf raises
  assert mismatches(rules, params, table) == []
  return rules


def _variables(model, *args, **kwargs):
  return jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, *args, **kwargs))


# -- AlgoPerf: speech, with float padding masks -------------------------------------------

SPEECH_FRONT = [
    (r"Subsample_0/Conv2dSubsampling_0/kernel$", conv("input", 9)),  # on the features
    (r"Subsample_0/Conv2dSubsampling_1/kernel$", conv("hidden", 9)),
    (r"Subsample_0/Dense_0/kernel$", dense("hidden")),  # its input is masked, not raw
    (r"^Dense_0/kernel$", dense("output")),  # the CTC projection
]
ATTENTION = [  # flax MultiHeadDotProductAttention: (d, heads, d_head) in, (heads, d_head, d) out
    (r"MultiHeadDotProductAttention_\d/(query|key|value)/kernel$", dense("hidden", (0,), (1, 2))),
    (r"MultiHeadDotProductAttention_\d/out/kernel$", dense("hidden", (0, 1), (2,))),
]


def _speech_train(model):
  features, paddings = speech_batch()
  v = _variables(model, features, paddings, train=False)

  def train(p, stats, features, paddings, key):  # the workload's model_fn in training
    return model.apply({"params": p, "batch_stats": stats}, features, paddings, train=True,
                       rngs={"dropout": key}, mutable=["batch_stats"])

  return train, v["params"], v["batch_stats"], features, paddings, KEY


def test_conformer_with_float_padding_masks():
  table = SPEECH_FRONT + ATTENTION + [
      (r"QueryScaler_0/scale$", GAIN),  # x * softplus(scale)
      (r"ConvolutionBlock_0/Conv_0/kernel$", conv("hidden", 5, groups=16, spatial=1)),
      (r"(FeedForwardModule_\d|ConvolutionBlock_0)/Dense_\d/kernel$", dense("hidden")),
  ] + NORMS
  check(table, *_speech_train(Conformer(SpeechConfig())))


def test_deepspeech_bidirectional_optimized_lstm():
  table = SPEECH_FRONT + [  # OptimizedLSTMCell joins its four gate kernels by concatenate
      (r"cell/i[ifgo]/kernel$", dense("hidden")),  # on batch-normalized activations
      (r"cell/h[ifgo]/kernel$", dense("hidden")),
      (r"DeepSpeechFeedForward_0/Dense_0/kernel$", dense("hidden")),
  ] + NORMS
  check(table, *_speech_train(DeepSpeech(SpeechConfig())))


# -- AlgoPerf: vision ----------------------------------------------------------------------


def test_vit_with_map_head_and_glu():
  model, x = ViT(), jnp.ones((2, 8, 8, 3))
  table = ATTENTION + [
      (r"conv_patch_extract/kernel$", conv("input", 16)),
      (r"MAPHead_0/probe$", VEC),  # a learned token, tiled over the batch
      (r"MlpBlock_\d/Dense_\d/kernel$", dense("hidden")),
      (r"pre_logits/kernel$", dense("hidden")),
      (r"^head/kernel$", dense("output")),
  ] + NORMS
  params = _variables(model, x)["params"]
  check(table, lambda p, x, key: model.apply({"params": p}, x, rngs={"dropout": key},
                                             train=True), params, x, KEY)


def test_unet_with_transposed_convs_and_reflect_padding():
  model, x = UNet(), jnp.ones((2, 10, 10))  # odd sizes: the up path pads by reflection
  table = [
      (r"^ConvBlock_0/Conv_0/kernel$", conv("input", 9)),
      (r"^ConvBlock_\d/Conv_\d/kernel$", conv("hidden", 9)),
      (r"^TransposeConvBlock_\d/ConvTranspose_0/kernel$", conv("hidden", 4)),
      (r"^Conv_0/kernel$", conv("output", 1)),  # the 1x1 convolution to one channel
      (r"^Conv_0/bias$", VEC),
  ]
  params = _variables(model, x, train=False)["params"]
  check(table, lambda p, x, key: model.apply({"params": p}, x, rngs={"dropout": key},
                                             train=True, dropout_rate=0.1), params, x, KEY)


def test_resnet_with_batchnorm_statistics():
  model, x = ResNet(), jnp.ones((2, 16, 16, 3))
  table = [
      (r"^Conv_init/kernel$", conv("input", 49)),
      (r"Conv_proj/kernel$", conv("hidden", 1)),
      (r"ResNetBlock_\d/Conv_\d/kernel$", conv("hidden", 9)),
      (r"^Dense_0/kernel$", dense("output")),
  ] + NORMS
  v = _variables(model, x)

  def train(p, stats, x):  # the workload's model_fn with update_batch_norm=True
    return model.apply({"params": p, "batch_stats": stats}, x, update_batch_norm=True,
                       mutable=["batch_stats"], use_running_average_bn=None)

  check(table, train, v["params"], v["batch_stats"], x)


# -- AlgoPerf: translation with float ids, a recommender, a graph network -----------------


def test_wmt_transformer_with_shared_embeddings_and_float_ids():
  model = Transformer(TransformerConfig())
  inputs = targets = jnp.ones((2, 6), jnp.float32)  # float ids, as the workload feeds them
  table = ATTENTION + [
      (r"^shared_embedding/embedding$", tied()),  # looked up, and attended for the logits
      (r"MlpBlock_0/Dense_\d/kernel$", dense("hidden")),
  ] + NORMS
  params = _variables(model, inputs, targets)["params"]
  check(table, lambda p, i, t, key: model.apply({"params": p}, i, t, rngs={"dropout": key}),
        params, inputs, targets, KEY)


def test_dlrm_small_with_an_embedding_table():
  model, x = DlrmSmall(), jnp.ones((2, 13 + 26))  # dense features, then categorical ids
  table = [
      (r"^embedding_table$", embedding()),  # rows gathered by the (cast) ids
      (r"^Dense_0/kernel$", dense("input")),  # the bottom MLP on the dense features
      (r"^Dense_[123]/kernel$", dense("hidden")),
      (r"^Dense_4/kernel$", dense("output")),  # the click logit
      (r"/bias$", VEC),
  ]
  params = _variables(model, x, train=False)["params"]
  check(table, lambda p, x, key: model.apply({"params": p}, x, train=True,
                                             rngs={"dropout": key}, dropout_rate=0.1),
        params, x, KEY)


def test_graph_network_with_segment_sums():
  model, graph = GNN(), small_graph()
  table = [
      (r"^(node|edge)_embedding/kernel$", dense("input")),  # on the float features
      (r"^Dense_[0-5]/kernel$", dense("hidden")),  # edge, node and global MLPs
      (r"^Dense_6/kernel$", dense("output")),  # the decoder of the globals
  ] + NORMS
  params = _variables(model, graph, train=False)["params"]
  check(table, lambda p, g, key: model.apply({"params": p}, g, rngs={"dropout": key},
                                             train=True, dropout_rate=0.1),
        params, graph, KEY)


# -- Hugging Face transformers: Flax models from random configs ---------------------------


@pytest.fixture(scope="module")
def hf():
  transformers = pytest.importorskip("transformers")
  warnings.filterwarnings("ignore", module="transformers")
  return transformers


HF_ATTENTION = [(r"(query|key|value|[qkv]_proj|out_proj|attention/output/dense)/kernel$",
                 dense("hidden"))]


def _hf_train(model):
  return lambda p, *args, **kw: model(*args, params=p, train=True, dropout_rng=KEY, **kw)


def test_hf_gpt2_conv1d_layout_and_tied_embedding(hf):
  model = hf.FlaxGPT2LMHeadModel(hf.GPT2Config(vocab_size=64, n_positions=16, n_embd=32,
                                               n_layer=1, n_head=4), seed=0)
  ids = jnp.ones((2, 8), jnp.int32)
  conv1d = dense("hidden", (1,), (0,))  # Conv1D stores (features, in): fan-out first
  table = [
      (r"wte/embedding$", tied()),
      (r"wpe/embedding$", embedding()),  # gathered by the position ids
      (r"(c_attn|c_proj|c_fc)/kernel$", conv1d),
  ] + NORMS
  rules = check(table, _hf_train(model), model.params, ids, attention_mask=jnp.ones_like(ids))
  # QK-clip on the real layout: the routing's fan-out (axis 0) holds [q | k | v] and the heads.
  tx = ol.contrib.qk_clip(1.0, query=(r"c_attn/kernel$", 0, 3), key=(r"c_attn/kernel$", 1, 3),
                          heads=4, rules=rules)
  params = model.params
  zero = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zero, tx.init(params), params,
                   max_logits={"transformer/h/0/attn": jnp.full((4,), 4.0)})  # all at 4 x tau
  old = params["transformer"]["h"]["0"]["attn"]["c_attn"]
  new = optax.apply_updates(params, u)["transformer"]["h"]["0"]["attn"]["c_attn"]
  for leaf in ("kernel", "bias"):  # q and k rows scaled by sqrt(1/4), the v rows untouched
    np.testing.assert_allclose(new[leaf][:64], old[leaf][:64] / 2, rtol=1e-6)
    np.testing.assert_array_equal(new[leaf][64:], old[leaf][64:])


def test_hf_bert_masked_lm(hf):
  model = hf.FlaxBertForMaskedLM(hf.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16), seed=0)
  ids = jnp.ones((2, 8), jnp.int32)
  table = HF_ATTENTION + [
      (r"word_embeddings/embedding$", tied()),  # the MLM decoder is its transpose
      (r"(position|token_type)_embeddings/embedding$", embedding()),
      (r"(intermediate|output|transform)/dense/kernel$", dense("hidden")),
      (r"^cls/predictions/bias$", VEC),
  ] + NORMS
  check(table, _hf_train(model), model.params, ids, attention_mask=jnp.ones_like(ids))


def test_hf_vit_with_cls_token(hf):
  model = hf.FlaxViTForImageClassification(hf.ViTConfig(
      image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
      num_attention_heads=4, intermediate_size=64, num_labels=5), seed=0)
  table = HF_ATTENTION + [
      (r"patch_embeddings/projection/kernel$", conv("input", 16)),
      (r"embeddings/cls_token$", VEC),  # concatenated in front of the patches
      (r"embeddings/position_embeddings$", VEC),  # added elementwise
      (r"(intermediate|output)/dense/kernel$", dense("hidden")),
      (r"^classifier/kernel$", dense("output")),
  ] + NORMS
  check(table, _hf_train(model), model.params, jnp.ones((2, 3, 8, 8)))


def test_hf_bart_translation_with_shared_embeddings(hf):
  model = hf.FlaxBartForConditionalGeneration(hf.BartConfig(
      vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
      max_position_embeddings=16), seed=0)
  ids = jnp.ones((2, 8), jnp.int32)
  table = HF_ATTENTION + [
      (r"^model/shared/embedding$", tied()),
      (r"embed_positions/embedding$", embedding()),
      (r"fc[12]/kernel$", dense("hidden")),
      (r"^final_logits_bias$", VEC),
  ] + NORMS
  check(table, _hf_train(model), model.params, ids, attention_mask=jnp.ones_like(ids),
        decoder_input_ids=ids)
