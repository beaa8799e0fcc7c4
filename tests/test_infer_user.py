"""infer_rules on the calls users write: train mode, (output, state), grouped convs, own rules.

Routing tables are written by hand; the grouped-convolution geometry is checked
against a NumPy SVD oracle, one matrix per group.
"""

import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src.spec import path_str

H, O = 48.0, 160.0  # infer_rules' default hidden and output radii (docs/radii.md)
SPEC, SPEC_IN, ROW, BIAS = (norms.Spectral(), norms.Spectral(input_layer=True), norms.RowNorm(),
                            norms.BiasRMS())
CONV_VIEW = ol.MatrixSpec((0, 1, 2), (3,))


def _table(rules, params):
  """``{path: (norm, radius, role, spec)}`` for every leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    p = path_str(path)
    g = rules.group_for(p, leaf)
    out[p] = (g.norm, g.radius, g.role, g.spec)
  return out


def _vec(role="vector"):
  return (BIAS, 1.0, role, None)


def _init(model, *args):
  """The model's variables as ``jax.ShapeDtypeStruct``s (enough to trace; nothing runs)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))


# -- part 1: the model output in what the function returns -----------------------------


class BNCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Conv(16, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


BNCNN_TABLE = {
    "Conv_0/kernel": (norms.SpectralConv(), H * 9, "input", CONV_VIEW),
    "Conv_0/bias": _vec(),
    "BatchNorm_0/scale": _vec("gain"), "BatchNorm_0/bias": _vec(),
    "Conv_1/kernel": (norms.SpectralConv(), H * 9, "hidden", CONV_VIEW),
    "Conv_1/bias": _vec(),
    "BatchNorm_1/scale": _vec("gain"), "BatchNorm_1/bias": _vec(),
    "Dense_0/kernel": (ROW, O, "output", None),
    "Dense_0/bias": _vec(),
}


def test_linen_batchnorm_train_call_returning_updates():
  model, x = BNCNN(), jnp.zeros((2, 8, 8, 1))
  variables = _init(model, x)
  params, stats = variables["params"], variables["batch_stats"]

  def train(p, stats, x, key):  # (logits, {"batch_stats": ...}): the statistics are no output
    return model.apply({"params": p, "batch_stats": stats}, x, train=True,
                       mutable=["batch_stats"], rngs={"dropout": key})

  key = jax.random.key(1)
  assert _table(ol.infer_rules(train, params, stats, x, key), params) == BNCNN_TABLE

  def loss(p, stats, x, y, key):  # a has_aux loss: (loss, (logits, updates))
    logits, updates = train(p, stats, x, key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, updates)

  y = jnp.zeros((2,), jnp.int32)
  assert _table(ol.infer_rules(loss, params, stats, x, y, key), params) == BNCNN_TABLE


class NNXNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.fc = nnx.Linear(8 * 8 * 8, 32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.conv(x)))
    x = self.drop(x.reshape(x.shape[0], -1))
    return self.head(jax.nn.relu(self.fc(x))), x  # logits and features


def test_nnx_batchnorm_and_dropout_in_train_mode():
  model = nnx.eval_shape(lambda: NNXNet(nnx.Rngs(0)))  # abstract arrays: enough to trace
  model.train()  # batch statistics and dropout masks from the batch
  params = nnx.state(model, nnx.Param)
  expected = {
      "conv/kernel": (norms.SpectralConv(), H * 9, "input", CONV_VIEW), "conv/bias": _vec(),
      "bn/scale": _vec("gain"), "bn/bias": _vec(),
      "fc/kernel": (SPEC, H, "hidden", None), "fc/bias": _vec(),
      "head/kernel": (ROW, O, "output", None), "head/bias": _vec(),
  }
  assert _table(ol.infer_rules(model, jnp.zeros((2, 8, 8, 1))), params) == expected


MLP = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(16), nn.relu, nn.Dense(10)])
MLP_TABLE = {
    "layers_0/kernel": (SPEC_IN, H, "input", None), "layers_0/bias": _vec(),
    "layers_2/kernel": (SPEC, H, "hidden", None), "layers_2/bias": _vec(),
    "layers_4/kernel": (ROW, O, "output", None), "layers_4/bias": _vec(),
}


def _mlp():
  x = jnp.zeros((4, 8))
  return _init(MLP, x)["params"], x


def test_loss_with_weight_decay_and_aux_routes_the_layer_before_the_loss():
  params, x = _mlp()
  y = jnp.zeros((4,), jnp.int32)

  def loss(p, x, y):  # an L2 penalty on every leaf does not make it an output layer
    logits = MLP.apply({"params": p}, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    l2 = sum(jnp.sum(w**2) for w in jax.tree.leaves(p))
    return ce + 1e-4 * l2, {"logits": logits, "acc": jnp.mean(jnp.argmax(logits, -1) == y)}

  assert _table(ol.infer_rules(loss, params, x, y), params) == MLP_TABLE


def test_output_argument_picks_the_model_output():
  params, x = _mlp()
  apply = lambda p, x: {"features": x, "scores": MLP.apply({"params": p}, x)}
  with pytest.raises(ValueError, match=r"cannot tell which part.*'scores': f(loat)?32\[4,10\]"
                                       r".*output=lambda out"):
    ol.infer_rules(apply, params, x)
  by_key = ol.infer_rules(apply, params, x, output=lambda out: out["scores"])
  assert _table(by_key, params) == MLP_TABLE
  named = lambda p, x: {"features": x, "logits": MLP.apply({"params": p}, x)}
  assert _table(ol.infer_rules(named, params, x), params) == MLP_TABLE  # logits: read as is
  swapped = lambda p, x: (jnp.zeros(()), MLP.apply({"params": p}, x))
  assert _table(ol.infer_rules(swapped, params, x, output=1), params) == MLP_TABLE
  with pytest.raises(ValueError, match=r"holds no floating-point array"):
    ol.infer_rules(lambda p, x: jnp.argmax(MLP.apply({"params": p}, x), -1), params, x)


# -- part 2: grouped convolutions ------------------------------------------------------


def _polar(m):
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  return u @ vt


@pytest.mark.parametrize("shape,groups", [((3, 3, 2, 8), 4), ((1, 5, 1, 6), 6)])
def test_grouped_conv_lmo_is_the_polar_factor_of_each_group(shape, groups):
  kh, kw, cig, c_out = shape
  cog, taps = c_out // groups, kh * kw
  nrm = norms.SpectralConv(groups=groups, polar=ol.Polar(method="svd"))

  @jax.jit
  def run(g):
    u = nrm.lmo(g)
    return u, nrm.dual_norm(g), nrm.norm(u), nrm.norm(nrm.init(jax.random.key(1), shape))

  g = jax.random.normal(jax.random.key(0), shape)
  u, dual, norm_u, norm_init = jax.tree.map(lambda a: np.asarray(a, np.float64), run(g))
  g = np.asarray(g, np.float64)
  for k in range(groups):  # group k: out-features [k cog, (k+1) cog), all c_in / G inputs
    block = g[..., k * cog:(k + 1) * cog].reshape(taps * cig, cog)
    want = np.sqrt(cog / cig) / taps * _polar(block)
    np.testing.assert_allclose(u[..., k * cog:(k + 1) * cog].reshape(taps * cig, cog), want,
                               atol=1e-5)
    sigma = np.linalg.svd(block, compute_uv=False)  # dual norm: the nuclear norm / factor
    np.testing.assert_allclose(dual[k], np.sqrt(cog / cig) / taps * sigma.sum(),
                               rtol=1e-5)
  np.testing.assert_allclose(norm_u, np.ones(groups), rtol=1e-5)  # norm(lmo(G)) = 1
  inner = (g * u).reshape(taps * cig, groups, cog).sum(axis=(0, 2))  # <G, lmo(G)> = dual
  np.testing.assert_allclose(inner, dual, rtol=1e-5)
  np.testing.assert_allclose(norm_init, np.ones(groups), rtol=1e-5)
  assert nrm.describe_view(shape) == f"{groups}x{taps * cig}x{cog}"


def test_grouped_conv_per_tap_and_bad_groups():
  nrm = norms.SpectralConv(groups=2, convention="per_tap", polar=ol.Polar(method="svd"))
  g = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
  u, norm_u = jax.jit(lambda g: (nrm.lmo(g), nrm.norm(nrm.lmo(g))))(g)
  g, u = np.asarray(g, np.float64), np.asarray(u, np.float64)
  for k in range(2):
    for t in range(9):
      tap = g[t // 3, t % 3, :, 2 * k:2 * k + 2]
      np.testing.assert_allclose(u[t // 3, t % 3, :, 2 * k:2 * k + 2], _polar(tap) / 9,
                                 atol=1e-5)
  np.testing.assert_allclose(norm_u, [1.0, 1.0], rtol=1e-5)
  with pytest.raises(ValueError, match=r"^dw: SpectralConv\(groups=3\) needs one out-feature"):
    norms.SpectralConv(groups=3).view((3, 3, 1, 8), path="dw")


class GroupedNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), feature_group_count=16, name="depthwise")(x))
    x = nn.relu(nn.Conv(32, (1, 1), feature_group_count=4, name="grouped")(x))
    return nn.Dense(10, name="head")(x.mean((1, 2)))


def test_depthwise_and_grouped_convs_are_routed_per_group():
  x = jnp.zeros((2, 8, 8, 3))
  model = GroupedNet()
  params = _init(model, x)["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  rules = ol.infer_rules(apply, params, x)
  table = _table(rules, params)
  assert table["Conv_0/kernel"] == (norms.SpectralConv(), H * 9, "input", CONV_VIEW)
  assert table["depthwise/kernel"] == (norms.SpectralConv(groups=16), H * 9, "hidden", CONV_VIEW)
  assert table["grouped/kernel"] == (norms.SpectralConv(groups=4), H, "hidden", CONV_VIEW)
  assert table["head/kernel"] == (ROW, O, "output", None)
  views = {r["path"]: r["view"] for r in ol.describe(rules, params)}
  assert views["depthwise/kernel"] == "16x9x1" and views["grouped/kernel"] == "4x4x8"
  dw = rules.group_for("depthwise/kernel", None)
  norm = jax.jit(lambda k: dw.norm.norm(
      ol.init_params(rules, params, k, scale="radius")["depthwise"]["kernel"]))
  np.testing.assert_allclose(norm(jax.random.key(1)), np.full(16, H * 9), rtol=1e-5)


def _sharded_worker() -> dict:
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  g = {"dw": jax.random.normal(jax.random.key(0), (3, 3, 2, 16)),
       "w": jax.random.normal(jax.random.key(1), (16, 32))}
  tx = ol.scale_by_norm({"dw": norms.SpectralConv(groups=8), "w": SPEC})
  update = jax.jit(lambda g: tx.update(g, tx.init(g))[0])
  ref = jax.device_get(update(jax.device_put(g, jax.devices()[0])))
  out = {}
  for at in ("Auto", "Explicit"):
    mesh = jax.make_mesh((4,), ("x",), axis_types=(getattr(AxisType, at),))
    placed = {"dw": jax.device_put(g["dw"], NamedSharding(mesh, P(None, None, None, "x"))),
              "w": jax.device_put(g["w"], NamedSharding(mesh, P("x")))}
    with jax.set_mesh(mesh):
      u = update(placed)
    out[at] = {"err": max(float(np.abs(np.asarray(u[k]) - ref[k]).max()) for k in g),
               "same_sharding": all(u[k].sharding.is_equivalent_to(placed[k].sharding,
                                                                   placed[k].ndim) for k in g)}
  return out


def test_grouped_conv_sharded_over_its_out_features():
  from _simulated import run_worker

  out = run_worker(__file__, devices=4, timeout=120)
  for at, r in out.items():
    assert r["err"] < 1e-5 and r["same_sharding"], (at, r)


# -- part 2: own rules first, and the leaves the trace does not decide -----------------


def _sorted_model():
  params = {"w": jnp.zeros((8, 4)), "head": jnp.zeros((4, 3)), "k": jnp.zeros((2, 2, 8))}

  def apply(p, x):
    x = x + jnp.fft.fft(p["k"]).real.sum()  # an op the tracer does not know
    return (x @ jnp.sort(p["w"], axis=0)) @ p["head"]

  return params, apply, jnp.zeros((2, 8))


def test_own_rules_listed_first_win_and_the_rest_is_inferred():
  params, apply, x = _sorted_model()
  mine = [("^w$", ol.Group(SPEC, 2.0, role="hidden")),
          (r"^k$", ol.Group(norms.Frobenius(), 0.5, evidence="kept as is")),
          ("head", ol.Group(norms.Sign(), 99.0))]
  rules = ol.infer_rules(apply, params, x, rules=mine[:2])
  assert _table(rules, params) == {"w": (SPEC, 2.0, "hidden", None),
                                   "k": (norms.Frobenius(), 0.5, None, None),
                                   "head": (ROW, O, "output", None)}
  assert rules.group_for("w", params["w"]).evidence == "user rule '^w$'"
  assert rules.group_for("k", params["k"]).evidence == "kept as is"
  everything = ol.infer_rules(apply, params, x, rules=ol.Rules(mine))  # a Rules of pairs
  assert _table(everything, params)["head"] == (norms.Sign(), 99.0, None, None)
  with pytest.raises(TypeError, match=r"takes \(regex, Group\) pairs"):
    ol.infer_rules(apply, params, x, rules=ol.default_rules())


def test_strict_error_names_every_undecided_leaf_once_with_the_fix():
  params, apply, x = _sorted_model()
  with pytest.raises(ValueError) as e:
    ol.infer_rules(apply, params, x)
  lines = str(e.value).splitlines()
  assert lines[0] == "infer_rules: the trace does not decide 2 leaves:"
  assert lines[1:3] == ["  k: used by an op the tracer does not know: fft",
                        "  w: used by an op the tracer does not know: sort"]
  assert 'rules=[(r"^k$", ol.Group(...)),' in str(e.value) and '(r"^w$", ol.Group' in str(e.value)
  assert "head:" not in str(e.value) and "^head" not in str(e.value)  # decided: not named
  with pytest.raises(ValueError, match=r"^w: used by an op the tracer does not know: sort\."):
    ol.infer_rules(apply, params, x, rules=[("^k$", ol.Group(norms.Frobenius()))])


def test_non_strict_warns_per_leaf_and_marks_the_fallback():
  params, apply, x = _sorted_model()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rules = ol.infer_rules(apply, params, x, strict=False)
  messages = sorted(str(w.message) for w in caught)
  assert len(messages) == 2
  unknown = "used by an op the tracer does not know"
  assert re.match(rf"^k: {unknown}: fft; it gets Frobenius at radius 48", messages[0])
  assert re.match(rf"^w: {unknown}: sort; it gets Spectral at radius 48", messages[1])
  assert all(w.filename == __file__ for w in caught)  # points at the caller
  k, w = rules.group_for("k", params["k"]), rules.group_for("w", params["w"])
  assert (k.norm, k.radius) == (norms.Frobenius(), H)  # ndim 3: the names cannot view it
  assert k.evidence == "Frobenius fallback: used by an op the tracer does not know: fft"
  assert (w.norm, w.radius) == (SPEC, H)  # default_rules by name, at the inferred radii
  assert w.evidence == "name fallback: used by an op the tracer does not know: sort"
  assert _table(rules, params)["head"] == (ROW, O, "output", None)


if __name__ == "__main__" and "--worker" in sys.argv:
  import json

  print(json.dumps(_sharded_worker()))
