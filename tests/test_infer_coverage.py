"""infer_rules on each structural primitive, on masks and ids along the data path, on the
values models return and on example arguments that do not fit.

Every expectation is written by hand from the function traced: which product a
leaf meets, what its other operand is, which axes it contracts.
"""

import dataclasses
import re
import warnings

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn
from flax import nnx

import optax_lmo as ol
from optax_lmo import norms

H, O = 48.0, 160.0
X = jnp.ones((2, 4))


def group(rules, params, path):
  g = rules.group_for(path, params[path])
  view = g.norm.view(params[path].shape, g.spec, path)
  return type(g.norm).__name__, g.role, (tuple(view.fan_in), tuple(view.fan_out))


# -- raw input travels along the data path ------------------------------------------------


class Masked(nn.Module):
  """Dense, a padding mask multiplied in, Dense, head (the Conformer's pattern)."""

  @nn.compact
  def __call__(self, x, paddings):
    h = nn.relu(nn.Dense(16)(x)) * (1 - paddings)[..., None]
    h = nn.relu(nn.Dense(8)(h))
    return nn.Dense(3)(h)


@pytest.mark.parametrize("mask", ["float input", "constant"])
def test_a_float_padding_mask_does_not_make_the_next_product_an_input_layer(mask):
  model, x, paddings = Masked(), jnp.ones((2, 5, 8)), jnp.zeros((2, 5))
  params = model.init(jax.random.key(0), x, paddings)["params"]
  if mask == "float input":
    rules = ol.infer_rules(lambda p, x, m: model.apply({"params": p}, x, m), params, x, paddings)
  else:
    rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x, paddings), params, x)
  roles = {k: rules.group_for(f"{k}/kernel", v["kernel"]).role for k, v in params.items()}
  assert roles == {"Dense_0": "input", "Dense_1": "hidden", "Dense_2": "output"}


def test_raw_input_times_a_mask_of_raw_or_integer_data_stays_raw():
  params = {"w": jnp.ones((4, 8)), "head": jnp.ones((8, 3))}
  head = lambda p, x: jnp.tanh(x @ p["w"]) @ p["head"]
  m = jnp.ones((2, 4))
  for fn, args in [(lambda p, x, m: head(p, x * (1 - m)), (X, m)),  # float mask on the input
                   (lambda p, x, m: head(p, x * m.astype(jnp.float32)), (X, m.astype(int)))]:
    rules = ol.infer_rules(fn, params, *args)
    assert group(rules, params, "w") == ("Spectral", "input", ((0,), (1,)))


def test_float_ids_masking_attention_do_not_make_its_output_an_input_layer():
  params = {"embed": jnp.ones((10, 8)), "q": jnp.ones((8, 8)), "k": jnp.ones((8, 8)),
            "out": jnp.ones((8, 8))}

  def apply(p, ids):  # the WMT example's masks come from float ids: ids > 0
    x = p["embed"][ids.astype(jnp.int32)]
    logits = (x @ p["q"]) @ jnp.swapaxes(x @ p["k"], 1, 2)
    weights = jax.nn.softmax(jnp.where((ids > 0)[:, None, :], logits, -1e9))
    return (weights @ x) @ p["out"] @ p["embed"].T

  rules = ol.infer_rules(apply, params, jnp.ones((2, 5)))
  assert {k: group(rules, params, k)[1] for k in params} == {
      "embed": "tied", "q": "hidden", "k": "hidden", "out": "hidden"}


# -- structural primitives -----------------------------------------------------------------

HEAD = jnp.ones((8, 3))


def _stack(fn):  # fn(p, x) -> an (n, 8) activation from the leaf "w"; a head makes the output
  return lambda p, x: jnp.tanh(fn(p, x)) @ p["head"]


@jax.custom_vjp
def _vjp_matmul(a, b):
  return a @ b


_vjp_matmul.defvjp(lambda a, b: (a @ b, (a, b)), lambda r, g: (g @ r[1].T, r[0].T @ g))


@jax.custom_jvp
def _jvp_matmul(a, b):
  return a @ b


_jvp_matmul.defjvp(lambda p, t: (p[0] @ p[1], t[0] @ p[1] + p[0] @ t[1]))

W = jnp.ones((4, 8))
INPUT = ("Spectral", "input", ((0,), (1,)))
HIDDEN = ("Spectral", "hidden", ((0,), (1,)))
COVERED = {  # name: (leaf, function, the leaf's (norm, role, (fan_in, fan_out)))
    "broadcast_in_dim": (W, lambda p, x: jnp.einsum("bd,bdk->bk", x, jnp.broadcast_to(
        p["w"], (2, 4, 8))), INPUT),
    "tile": (W[:, :4], lambda p, x: x @ jnp.tile(p["w"], (1, 2)), INPUT),
    "pad": (W[:3], lambda p, x: x @ jnp.pad(p["w"], ((0, 1), (0, 0))), INPUT),
    "rev": (W, lambda p, x: x @ jnp.flip(p["w"], 0), INPUT),
    "dynamic_slice": (jnp.ones((6, 8)), lambda p, x: x @ jax.lax.dynamic_slice(
        p["w"], ((x[0, 0] > 0).astype(jnp.int32), 0), (4, 8)), INPUT),  # at a data index
    "dynamic_update_slice": (W[:2], lambda p, x: x @ jax.lax.dynamic_update_slice(
        jnp.zeros((4, 8)), p["w"], (1, 0)), INPUT),
    "scatter (masking)": (W, lambda p, x: x @ p["w"].at[0].set(0.0), INPUT),
    "select_n": (W, lambda p, x: x @ jnp.where(jnp.arange(8) < 4, p["w"], 0.0), INPUT),
    "device_put": (W, lambda p, x: x @ jax.device_put(p["w"]), INPUT),
    "optimization_barrier": (W, lambda p, x: (lambda w, x: x @ w)(
        *jax.lax.optimization_barrier((p["w"], x))), INPUT),
    "jit": (W, lambda p, x: jax.jit(lambda w, x: x @ w)(p["w"], x), INPUT),
    "remat": (W, lambda p, x: jax.checkpoint(lambda w, x: x @ w)(p["w"], x), INPUT),
    "custom_jvp": (W, lambda p, x: _jvp_matmul(x, p["w"]), INPUT),
    "custom_vjp": (W, lambda p, x: _vjp_matmul(x, p["w"]), INPUT),
    "cond": (W, lambda p, x: jax.lax.cond(x.sum() > 0, lambda h: h @ p["w"],
                                          lambda h: -h @ p["w"], x), INPUT),
    "while": (jnp.ones((8, 8)), lambda p, x: jax.lax.fori_loop(  # a trip count from data
        0, x.sum().astype(jnp.int32), lambda i, h: jnp.tanh(h @ p["w"]), jnp.tile(x, (1, 2))),
              ("Spectral", "input", ((0,), (1,)))),
    "scan": (jnp.ones((3, 8, 8)), lambda p, x: jax.lax.scan(
        lambda h, w: (jnp.tanh(h @ w), None), jnp.tile(x, (1, 2)), p["w"])[0],
             ("Spectral", "input", ((1,), (2,)))),  # the scanned axis is a batch axis
    "gather (an embedding)": (jnp.ones((10, 8)), lambda p, x: p["w"][x.astype(jnp.int32)[:, 0]],
                              ("ColNorm", "embedding", ((0,), (1,)))),
    "concatenate (a learned token)": (jnp.ones((1, 4)), lambda p, x: jnp.concatenate(
        [p["w"], x], 0) @ jnp.ones((4, 8)), ("BiasRMS", "vector", ((), (0, 1)))),
    "dynamic_update_slice (a learned token)": (jnp.ones((1, 4)), lambda p, x: (
        jax.lax.dynamic_update_slice(x, p["w"], (0, 0)) @ jnp.ones((4, 8))),
                                               ("BiasRMS", "vector", ((), (0, 1)))),
}


@pytest.mark.parametrize("name", sorted(COVERED))
def test_a_covered_primitive_keeps_the_leaf_view(name):
  leaf, fn, want = COVERED[name]
  params = {"w": leaf, "head": HEAD}
  rules = ol.infer_rules(_stack(fn), params, X)
  assert group(rules, params, "w") == want
  assert rules.group_for("head", HEAD).role == "output"


def test_parameters_joined_by_concatenate_each_get_the_products_role_and_their_own_view():
  params = {"i": jnp.ones((4, 3)), "f": jnp.ones((4, 5)), "wh": jnp.ones((8, 8)), "head": HEAD}

  def apply(p, x):  # an OptimizedLSTMCell's gate kernels, joined along the fan-out
    h = jnp.tanh(x @ jnp.concatenate([p["i"], p["f"]], axis=-1))
    return jnp.tanh(h @ p["wh"]) @ p["head"]

  rules = ol.infer_rules(apply, params, X)
  assert group(rules, params, "i") == INPUT and group(rules, params, "f") == INPUT
  assert group(rules, params, "wh") == HIDDEN
  assert "joined by concatenate" in rules.group_for("i", params["i"]).evidence
  params = {"w0": jnp.ones((4, 8)), "wx": jnp.ones((4, 8)), "wh": jnp.ones((8, 8)), "head": HEAD}

  def joined_fan_in(p, x):  # [x, h] @ [Wx; Wh]: one product of raw input and hidden state
    h = jnp.tanh(x @ p["w0"])
    xh = jnp.concatenate([x, h], -1)
    return jnp.tanh(xh @ jnp.concatenate([p["wx"], p["wh"]], axis=0)) @ p["head"]

  rules = ol.infer_rules(joined_fan_in, params, X)
  assert group(rules, params, "w0") == INPUT
  assert group(rules, params, "wx") == HIDDEN and group(rules, params, "wh") == HIDDEN


def test_a_tiled_probe_token_in_a_product_with_a_kernel_is_a_vector():
  params = {"probe": jnp.ones((1, 1, 8)), "wq": jnp.ones((8, 8)), "wk": jnp.ones((4, 8)),
            "head": HEAD}

  def apply(p, x):  # a MAP head: the probe is the query's activation, tiled over the batch
    q = jnp.tile(p["probe"], [x.shape[0], 1, 1]) @ p["wq"]
    k = (x @ p["wk"])[:, None, :]
    return (jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2)) @ k)[:, 0] @ p["head"]

  rules = ol.infer_rules(apply, params, X)
  assert group(rules, params, "probe") == ("BiasRMS", "vector", ((), (0, 1, 2)))
  assert group(rules, params, "wq") == HIDDEN  # its input is a parameter, not raw input
  assert "a learned token" in rules.group_for("probe", params["probe"]).evidence


NOT_COVERED = {  # name: (leaf, function, the reason the error gives)
    "sort": (W, lambda p, x: x @ jnp.sort(p["w"], axis=0), "op the tracer does not know: sort"),
    "cumsum": (W, lambda p, x: x @ jnp.cumsum(p["w"], axis=0),
               r"used only by reductions \(cumsum\)"),
    "scatter (a parameter into an array)": (
        jnp.ones(4), lambda p, x: x @ jnp.zeros((4, 8)).at[jnp.arange(4), jnp.arange(4)].set(
            p["w"]), r"scatter \(a parameter's entries written into another array\)"),
}


def test_a_vector_used_only_through_a_cumulative_op_is_a_vector():
  params = {"w": W, "cuts": jnp.ones(3)}  # ordinal regression: ordered thresholds
  apply = lambda p, x: (x @ p["w"])[:, :1] - jnp.cumsum(jax.nn.softplus(p["cuts"]))
  g = ol.infer_rules(apply, params, X).group_for("cuts", params["cuts"])
  assert (type(g.norm).__name__, g.role) == ("BiasRMS", "vector")
  assert g.evidence == "used only by reductions (cumsum); vector"


@pytest.mark.parametrize("name", sorted(NOT_COVERED))
def test_a_primitive_that_changes_the_geometry_is_refused_naming_the_leaf(name):
  leaf, fn, why = NOT_COVERED[name]
  with pytest.raises(ValueError, match=rf"^w: .*{why}.*rules=\[\(r\"\^w\$\""):
    ol.infer_rules(_stack(fn), {"w": leaf, "head": HEAD}, X)


# -- undecided leaves: one error, and the vector fallback -----------------------------------


def test_every_undecided_leaf_is_named_in_one_error():
  params = {f"w{i}": jnp.ones((4, 8)) for i in range(3)} | {"head": HEAD}
  apply = lambda p, x: sum(jnp.tanh(x @ jnp.sort(p[f"w{i}"], 0)) for i in range(3)) @ p["head"]
  with pytest.raises(ValueError) as e:
    ol.infer_rules(apply, params, X)
  lines = str(e.value).splitlines()
  assert lines[0] == "infer_rules: the trace does not decide 3 leaves:"
  assert lines[1:4] == [f"  w{i}: used by an op the tracer does not know: sort" for i in range(3)]
  assert all(f'(r"^w{i}$", ol.Group(...))' in str(e.value) for i in range(3))
  assert "strict=False" in lines[-1]


def test_a_vector_shaped_leaf_falls_back_to_biasrms_not_frobenius():
  params = {"token": jnp.ones((1, 1, 8)), "w": jnp.ones((4, 8)), "head": HEAD}
  apply = lambda p, x: jnp.tanh(x @ p["w"] + jnp.sort(p["token"], -1)[0]) @ p["head"]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rules = ol.infer_rules(apply, params, X, strict=False)
  g = rules.group_for("token", params["token"])
  assert (g.norm, g.radius, g.role) == (norms.BiasRMS(), 1.0, "vector")
  assert g.evidence == "vector fallback: used by an op the tracer does not know: sort"
  assert [str(w.message).split(";")[0] for w in caught] == [
      "token: used by an op the tracer does not know: sort"]


# -- what the model returns -----------------------------------------------------------------

MLP = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
MLP_PARAMS = MLP.init(jax.random.key(0), X)["params"]


@dataclasses.dataclass(frozen=True)
class Output:  # like transformers' ModelOutput: a frozen dataclass
  logits: jax.Array
  hidden: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Scores:
  scores: jax.Array


@pytest.mark.parametrize("wrap", [
    lambda y: Output(y, y), lambda y: {"logits": y, "aux": 0}, lambda y: ((y, y[:, 0]), {}),
    lambda y: (Output(y), {"batch_stats": {}})], ids=["dataclass", "mapping", "nested", "pair"])
def test_logits_are_read_from_model_outputs(wrap):
  rules = ol.infer_rules(lambda p, x: wrap(MLP.apply({"params": p}, x)), MLP_PARAMS, X)
  assert rules.group_for("layers_2/kernel", MLP_PARAMS["layers_2"]["kernel"]).role == "output"


def test_an_output_without_logits_is_refused_with_the_fix_and_no_crash():
  apply = lambda p, x: Scores(MLP.apply({"params": p}, x))
  with pytest.raises(ValueError, match=r"cannot tell which part .* it returned Scores\(scores="
                                       r"f32\[2,3\]\)\. Pass output="):
    ol.infer_rules(apply, MLP_PARAMS, X)
  rules = ol.infer_rules(apply, MLP_PARAMS, X, output=lambda out: out.scores)
  assert rules.group_for("layers_2/kernel", MLP_PARAMS["layers_2"]["kernel"]).role == "output"


# -- example arguments that do not fit ------------------------------------------------------


def test_example_arguments_that_do_not_fit_say_so_and_which_call_failed():
  def apply(p, x):
    return MLP.apply({"params": p}, x)

  with pytest.raises(ValueError, match=r"^infer_rules: the example arguments do not fit the"
                                       r" model: apply\(params, f32\[2,5\]\) failed in"
                                       r" Dense.__call__ \(.*linear.py:\d+\) with") as e:
    ol.infer_rules(apply, MLP_PARAMS, jnp.ones((2, 5)))
  assert e.value.__cause__ is not None  # the model's own error, chained
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=re.escape("Linear(f32[2,5]) failed in Linear.__call__")
                     + r".*dot_general requires contracting dimensions") as e:
    ol.infer_rules(model, jnp.ones((2, 5)))
  assert isinstance(e.value.__cause__, TypeError)
  with pytest.raises(TypeError, match=r"cannot be traced on the example arguments.*Python"
                                      r" values \(train=True\)"):
    ol.infer_rules(lambda p, x: apply(p, x) if x.sum() > 0 else x, MLP_PARAMS, X)
