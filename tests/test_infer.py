"""infer_rules on real models: the full inferred table against tables written by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import optax_lmo as ol
from benchmarks.gpt import model as gpt_model
from optax_lmo import norms
from optax_lmo._src.spec import path_str

H, O = 48.0, 160.0  # infer_rules' default hidden and output radii (docs/radii.md)
SPEC, SPEC_IN = norms.Spectral(), norms.Spectral(input_layer=True)
CONV, ROW, SIGN, COL, BIAS = (norms.SpectralConv(), norms.RowNorm(), norms.Sign(),
                              norms.ColNorm(), norms.BiasRMS())


def _table(rules, params):
  """``{path: (norm, radius, role, spec, (fan_in, fan_out))}`` for every leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    p = path_str(path)
    g = rules.group_for(p, leaf)
    view = g.norm.view(np.shape(leaf), g.spec, p)
    out[p] = (g.norm, g.radius, g.role, g.spec, (view.fan_in, view.fan_out))
    assert g.evidence, p
  return out


def _row(norm, radius, role, fan_in=(0,), fan_out=(1,), spec=None):
  return (norm, radius, role, spec, (tuple(fan_in), tuple(fan_out)))


def _mat(norm, radius, role, fan_in, fan_out):
  """A row whose spec is stated (not the 2-D default)."""
  return _row(norm, radius, role, fan_in, fan_out, ol.MatrixSpec(fan_in, fan_out))


def _vec(role, n=1, batch=()):
  fan_out = tuple(a for a in range(n) if a not in batch)
  spec = ol.MatrixSpec((), fan_out) if batch else None
  return (BIAS, 1.0, role, spec, ((), fan_out))


def _linen(model, *args, **kw):
  params = model.init(jax.random.key(0), *args, **kw)["params"]
  return params, lambda p, *a: model.apply({"params": p}, *a, **kw)


def test_default_radii_agree_everywhere():
  """infer_rules, default_rules and the GPT trainer's model share the documented radii."""
  import inspect

  for fn in (ol.infer_rules, ol.default_rules):
    sig = inspect.signature(fn).parameters
    got = tuple(sig[k].default for k in ("embed_radius", "hidden_radius", "output_radius",
                                          "bias_radius"))
    assert got == (1.0, H, O, 1.0), fn.__name__
  cfg = gpt_model.GPTConfig()
  assert (cfg.embed_radius, cfg.hidden_radius, cfg.output_radius) == (1.0, H, O)


def test_linen_mlp_on_real_inputs():
  model = nn.Sequential([nn.Dense(48), nn.relu, nn.Dense(32), nn.relu, nn.Dense(10)])
  x = jnp.zeros((4, 64))
  params, apply = _linen(model, x)
  expected = {
      "layers_0/kernel": _row(SPEC_IN, H, "input"),
      "layers_0/bias": _vec("vector"),
      "layers_2/kernel": _row(SPEC, H, "hidden"),
      "layers_2/bias": _vec("vector"),
      "layers_4/kernel": _row(ROW, O, "output"),
      "layers_4/bias": _vec("vector"),
  }
  assert _table(ol.infer_rules(apply, params, x), params) == expected

  def loss(p, x, y):  # the output passes through log-softmax and a label gather
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  rules = ol.infer_rules(loss, params, x, jnp.zeros((4,), jnp.int32))
  assert _table(rules, params) == expected
  sign = ol.infer_rules(apply, params, x, output_norm="sign", hidden_radius=5.0)
  assert _table(sign, params)["layers_4/kernel"] == _row(SIGN, O, "output")
  assert _table(sign, params)["layers_2/kernel"] == _row(SPEC, 5.0, "hidden")


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
    x = nn.Conv(16, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_linen_cnn_with_batchnorm():
  model, x = CNN(), jnp.zeros((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), x)
  params, stats = variables["params"], variables["batch_stats"]
  conv = ((0, 1, 2), (3,))
  expected = {
      "Conv_0/kernel": _mat(CONV, H * 9, "input", *conv),  # hidden_radius x taps
      "Conv_0/bias": _vec("vector"),
      "BatchNorm_0/scale": _vec("gain"),
      "BatchNorm_0/bias": _vec("vector"),
      "Conv_1/kernel": _mat(CONV, H * 9, "hidden", *conv),
      "Conv_1/bias": _vec("vector"),
      "BatchNorm_1/scale": _vec("gain"),
      "BatchNorm_1/bias": _vec("vector"),
      "Dense_0/kernel": _row(ROW, O, "output"),
      "Dense_0/bias": _vec("vector"),
  }
  evaluate = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x)
  assert _table(ol.infer_rules(evaluate, params, x), params) == expected
  train = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])[0]
  assert _table(ol.infer_rules(train, params, x), params) == expected


def test_conv_radius_counts_taps_or_is_given():
  model = nn.Sequential([nn.Conv(4, (3, 5)), nn.relu, nn.Conv(6, (1, 1)), lambda x: x.mean((1, 2)),
                         nn.Dense(3)])
  x = jnp.zeros((2, 8, 8, 2))
  params, apply = _linen(model, x)
  radius = lambda r: {p: v[1] for p, v in _table(r, params).items() if p.endswith("kernel")}
  assert radius(ol.infer_rules(apply, params, x, hidden_radius=2.0)) == {
      "layers_0/kernel": 2.0 * 15, "layers_2/kernel": 2.0, "layers_4/kernel": O}
  assert radius(ol.infer_rules(apply, params, x, conv_radius=5.0)) == {
      "layers_0/kernel": 5.0, "layers_2/kernel": 5.0, "layers_4/kernel": O}


class TiedGPT(nn.Module):
  """One pre-norm block; multi-head DenseGeneral kernels; output tied to the embedding."""

  vocab: int = 50
  d: int = 32
  heads: int = 4

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(self.vocab, self.d, name="embed")
    x = embed(tokens)
    h = nn.LayerNorm(name="ln1")(x)
    qkv = nn.DenseGeneral((3, self.heads, self.d // self.heads), use_bias=False, name="qkv")(h)
    o = nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + nn.DenseGeneral(self.d, axis=(-2, -1), use_bias=False, name="out")(o)
    mlp = nn.remat(MLPBlock)(4 * self.d, name="mlp")
    x = x + mlp(nn.LayerNorm(name="ln2")(x))
    return embed.attend(nn.LayerNorm(name="ln_f")(x))


class MLPBlock(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(x.shape[-1], name="fc_out")(nn.gelu(nn.Dense(self.hidden, name="fc_in")(x)))


def test_tied_gpt_with_multihead_kernels():
  tokens = jnp.zeros((2, 6), jnp.int32)
  params, apply = _linen(TiedGPT(), tokens)
  expected = {
      "embed/embedding": _mat(SIGN, O, "tied", (1,), (0,)),  # d_in = width, as the output
      "ln1/scale": _vec("gain"), "ln1/bias": _vec("vector"),
      "qkv/kernel": _mat(SPEC, H, "hidden", (0,), (1, 2, 3)),  # (d, 3, heads, head_dim)
      "out/kernel": _mat(SPEC, H, "hidden", (0, 1), (2,)),  # (heads, head_dim, d)
      "ln2/scale": _vec("gain"), "ln2/bias": _vec("vector"),
      "mlp/fc_in/kernel": _row(SPEC, H, "hidden"), "mlp/fc_in/bias": _vec("vector"),
      "mlp/fc_out/kernel": _row(SPEC, H, "hidden"), "mlp/fc_out/bias": _vec("vector"),
      "ln_f/scale": _vec("gain"), "ln_f/bias": _vec("vector"),
  }
  assert _table(ol.infer_rules(apply, params, tokens), params) == expected


class Layer(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.relu(nn.Dense(x.shape[-1])(x)), None


class ScanMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, name="inp")(x))
    stack = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
    x, _ = stack(name="stack")(x, None)
    return nn.Dense(10, name="head")(x)


STACKED = {
    "inp/kernel": _row(SPEC_IN, H, "input"), "inp/bias": _vec("vector"),
    "head/kernel": _row(ROW, O, "output"), "head/bias": _vec("vector"),
}


def test_linen_scan_stacks_layers_on_a_batch_axis():
  x = jnp.zeros((4, 16))
  params, apply = _linen(ScanMLP(), x)
  assert params["stack"]["Dense_0"]["kernel"].shape == (3, 32, 32)
  expected = dict(STACKED)
  expected["stack/Dense_0/kernel"] = _mat(SPEC, H, "hidden", (1,), (2,))
  expected["stack/Dense_0/bias"] = _vec("vector", 2, batch=(0,))
  assert _table(ol.infer_rules(apply, params, x), params) == expected


class Block(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(32, 32, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.fc(x))


class NNXStack(nnx.Module):
  def __init__(self, rngs):
    self.inp = nnx.Linear(16, 32, rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(x, block):
      return block(x)

    return self.head(step(jax.nn.relu(self.inp(x)), self.blocks))


def test_nnx_vmap_and_scan_stack_layers_on_a_batch_axis():
  model = NNXStack(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  expected = dict(STACKED)
  expected["blocks/fc/kernel"] = _mat(SPEC, H, "hidden", (1,), (2,))
  expected["blocks/fc/bias"] = _vec("vector", 2, batch=(0,))
  assert _table(ol.infer_rules(model, jnp.zeros((4, 16))), params) == expected


def test_fori_loop_over_a_stacked_leaf():
  params = {"w": jnp.zeros((3, 8, 8)), "head": jnp.zeros((8, 2))}

  def apply(p, x):
    x = jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"][i]), jnp.tanh(x))
    return x @ p["head"]

  table = _table(ol.infer_rules(apply, params, jnp.zeros((4, 8))), params)
  assert table["w"] == _mat(SPEC_IN, H, "input", (1,), (2,))  # the loop's first input is x
  assert table["head"] == _row(ROW, O, "output")


class MoE(nn.Module):
  """Dense input, a softly routed einsum mixture of experts, a dense head."""

  experts: int = 4
  d: int = 16

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.d, name="inp")(x))
    gates_BxE = jax.nn.softmax(nn.Dense(self.experts, use_bias=False, name="router")(x))
    w_ExDxF = self.param("experts_w", nn.initializers.lecun_normal(batch_axis=(0,)),
                         (self.experts, self.d, 2 * self.d))
    x_ExBxD = jnp.einsum("be,bd->ebd", gates_BxE, x)  # soft dispatch: each expert its own input
    h_ExBxF = jax.nn.relu(jnp.einsum("ebd,edf->ebf", x_ExBxD, w_ExDxF))
    w_ExFxD = self.param("experts_out", nn.initializers.lecun_normal(batch_axis=(0,)),
                         (self.experts, 2 * self.d, self.d))
    y_ExBxD = jnp.einsum("ebf,efd->ebd", h_ExBxF, w_ExFxD)
    x = x + jnp.sum(y_ExBxD, axis=0)
    return nn.Dense(3, name="head")(x)


def test_einsum_mixture_of_experts():
  x = jnp.zeros((4, 8))
  params, apply = _linen(MoE(), x)
  expected = {
      "inp/kernel": _row(SPEC_IN, H, "input"), "inp/bias": _vec("vector"),
      "router/kernel": _row(SPEC, H, "hidden"),
      "experts_w": _mat(SPEC, H, "hidden", (1,), (2,)),  # experts = batch axis
      "experts_out": _mat(SPEC, H, "hidden", (1,), (2,)),
      "head/kernel": _row(ROW, O, "output"), "head/bias": _vec("vector"),
  }
  assert _table(ol.infer_rules(apply, params, x), params) == expected


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("output_norm", ["rownorm", "sign"])
def test_example_gpt_routes_as_its_docstring_table(rotary, output_norm):
  """The trainer's GPT, traced: each leaf as benchmarks/gpt/model.py's table says (by hand)."""
  cfg = gpt_model.GPTConfig(vocab_size=40, seq_len=12, width=32, depth=2, heads=2,
                            rotary=rotary, output_norm=output_norm)
  model = gpt_model.GPT(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  head = {"rownorm": norms.RowNorm(), "sign": norms.Sign()}[output_norm]
  want = {"embed/embedding": (norms.ColNorm(), 1.0, (40, 32)),
          "final_norm/scale": (norms.BiasRMS(), 1.0, (32,)),
          "head/kernel": (head, O, (32, 40))}
  if not rotary:
    want["pos_embed/embedding"] = (norms.ColNorm(), 1.0, (12, 32))
  for i in range(2):
    want.update({f"blocks/{i}/norm1/scale": (norms.BiasRMS(), 1.0, (32,)),
                 f"blocks/{i}/norm2/scale": (norms.BiasRMS(), 1.0, (32,)),
                 f"blocks/{i}/attn/qkv/kernel": (norms.Spectral(), H, (32, 96)),
                 f"blocks/{i}/attn/out/kernel": (norms.Spectral(), H, (32, 32)),
                 f"blocks/{i}/mlp/fc_in/kernel": (norms.Spectral(), H, (32, 128)),
                 f"blocks/{i}/mlp/fc_out/kernel": (norms.Spectral(), H, (128, 32))})
  for rules in (ol.infer_rules(model, jnp.zeros((2, 12), jnp.int32), output_norm=output_norm),
                gpt_model.rules(cfg)):  # on the model, and the trainer's (an abstract model)
    got = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      p = path_str(path)
      g = rules.group_for(p, leaf)
      shown = "x".join(map(str, leaf.shape if leaf.ndim == 2 else (1, *leaf.shape)))
      assert g.norm.describe_view(leaf.shape, g.spec) == shown, p  # Flax layout, one matrix
      got[p] = (g.norm, g.radius, leaf.shape)
    assert got == want


def test_unused_matrix_leaf_is_an_error():
  params = {"w": jnp.zeros((8, 4)), "spare": jnp.zeros((8, 8))}
  apply = lambda p, x: x @ p["w"]
  with pytest.raises(ValueError, match=r"spare: a matrix leaf that the traced function never"):
    ol.infer_rules(apply, params, jnp.zeros((2, 8)))


def test_unknown_op_is_an_error_naming_leaf_and_op():
  params = {"w": jnp.zeros((8, 4)), "h": jnp.zeros((4, 4))}
  apply = lambda p, x: (x @ jnp.sort(p["w"], axis=0)) @ p["h"]
  with pytest.raises(ValueError, match=r"^w: used by an op the tracer does not know: sort"):
    ol.infer_rules(apply, params, jnp.zeros((2, 8)))


def test_strict_false_falls_back_to_names_and_says_so():
  params = {"w": jnp.zeros((8, 4)), "head": jnp.zeros((4, 3)), "spare": jnp.zeros((5, 5))}
  apply = lambda p, x: (x @ jnp.sort(p["w"], axis=0)) @ p["head"]
  with pytest.warns(UserWarning, match=r"^(w|spare): "):
    rules = ol.infer_rules(apply, params, jnp.zeros((2, 8)), strict=False)
  table = _table(rules, params)
  assert table["head"] == _row(ROW, O, "output")
  w, spare = rules.group_for("w", params["w"]), rules.group_for("spare", params["spare"])
  assert w.evidence.startswith("name fallback: used by an op the tracer does not know: sort")
  assert spare.evidence.startswith("name fallback: a matrix leaf that the traced function never")
  assert isinstance(w.norm, norms.Spectral) and w.radius == H  # default_rules, same radii


def test_incompatible_roles_are_an_error():
  params = {"w": jnp.zeros((8, 8))}
  apply = lambda p, x: jnp.tanh(x @ p["w"]) @ p["w"]  # one matrix as input and as output
  with pytest.raises(ValueError, match=r"^w: used in incompatible roles.*input.*output"):
    ol.infer_rules(apply, params, jnp.zeros((2, 8)))


def test_rules_drive_scion():
  x, y = jnp.ones((4, 64)), jnp.zeros((4,), jnp.int32)
  model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
  params, apply = _linen(model, x)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
  tx = ol.scion(0.1, rules=ol.infer_rules(apply, params, x))
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(jax.grad(loss)(params), state, params)
  new = optax.apply_updates(params, updates)
  assert loss(new) < loss(params)


def _norm_of(g, leaf):
  return np.asarray(g.norm.norm(leaf, g.spec))


@pytest.mark.parametrize("which", ["mlp", "cnn", "gpt", "moe"])
def test_init_params_at_radius_puts_every_matrix_on_its_sphere(which):
  if which == "mlp":
    x = jnp.zeros((2, 64))
    params, apply = _linen(nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)]), x)
  elif which == "cnn":
    x = jnp.zeros((2, 8, 8, 1))
    params, apply = _linen(nn.Sequential([nn.Conv(8, (3, 3)), nn.relu, nn.Conv(4, (3, 3))]), x)
  elif which == "gpt":
    x = jnp.zeros((2, 6), jnp.int32)
    params, apply = _linen(TiedGPT(), x)
  else:
    x = jnp.zeros((2, 8))
    params, apply = _linen(MoE(), x)
  rules = ol.infer_rules(apply, params, x)
  new = ol.init_params(rules, params, jax.random.key(1), scale="radius")
  flat = jax.tree_util.tree_flatten_with_path(new)[0]
  old = jax.tree.leaves(params)
  for (path, leaf), before in zip(flat, old, strict=True):
    p = path_str(path)
    g = rules.group_for(p, leaf)
    assert leaf.shape == before.shape and leaf.dtype == before.dtype, p
    if g.role == "gain":  # normalization gains are kept: zero would silence the layer
      np.testing.assert_array_equal(leaf, before)
    elif isinstance(g.norm, norms.BiasRMS):
      np.testing.assert_array_equal(leaf, np.zeros_like(before))
    else:
      np.testing.assert_allclose(_norm_of(g, leaf), g.radius, rtol=2e-5, err_msg=p)


def test_init_params_leaves_norm_none_unchanged_and_draws_per_matrix():
  params = {"stack": jnp.ones((3, 8, 16)), "other": jnp.full((4, 4), 7.0)}
  rules = [("stack", ol.Group(SPEC, 2.0, spec=ol.MatrixSpec((1,), (2,)))),
           ("other", ol.Group(None))]
  new = ol.init_params(rules, params, jax.random.key(0), scale="radius")
  np.testing.assert_array_equal(new["other"], params["other"])
  np.testing.assert_allclose(SPEC.norm(new["stack"], ol.MatrixSpec((1,), (2,))), [2.0] * 3,
                             rtol=2e-5)
  m = np.asarray(new["stack"], np.float64)  # semi-orthogonal x sqrt(d_out/d_in) x radius, by hand
  for k in range(3):
    s = np.linalg.svd(m[k], compute_uv=False)
    np.testing.assert_allclose(s, 2.0 * np.sqrt(16 / 8), rtol=2e-5)
  assert not np.allclose(m[0], m[1])


def test_shape_dtype_structs_are_enough():
  model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
  x = jnp.zeros((4, 64))
  params, apply = _linen(model, x)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  a = ol.infer_rules(apply, abstract, jax.ShapeDtypeStruct(x.shape, x.dtype))
  assert _table(a, params) == _table(ol.infer_rules(apply, params, x), params)

