"""QK-clip against a NumPy attention: clipped heads end at ``tau``, the others move bit for bit.

Each check takes a step of an optimizer alone, measures the per-head maximum
logit of the stepped weights with a NumPy causal attention, then takes the same
step chained with :func:`~optax_lmo.contrib.qk_clip` given those logits: the
clipped heads' logits must come out at ``tau``, their query and key blocks
scaled by ``sqrt(tau / S)``, and everything else equal to the step alone. The
mesh check runs this module as a subprocess with 8 simulated CPU devices
(``python tests/test_qk_clip.py --worker``).
"""

from __future__ import annotations

import itertools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _simulated import run_worker
from flax import linen as nn

import optax_lmo as ol

B, L, D, H, K = 2, 5, 8, 2, 4  # batch, positions, width, heads, head dim (H * K == D)
LAYERS = 2
LAYOUTS = ("separate", "fused", "explicit")
N_DEVICES = 8
SPECS = {"rows": ("x",), "cols": (None, "x")}  # each leaf's partition spec on the mesh
AXIS_TYPES = ("Auto", "Explicit")


def make_params(layout: str, seed: int = 0) -> dict:
  """Two attention layers (plus an unrelated leaf) in one of the three kernel layouts."""
  keys = iter(jax.random.split(jax.random.key(seed), 4 * LAYERS + 1))
  normal = lambda shape: jax.random.normal(next(keys), shape)
  blocks = []
  for _ in range(LAYERS):
    if layout == "separate":  # Flax's head-merged (d_model, n_heads * d_head) kernels
      attn = {name: {"kernel": normal((D, H * K))} for name in ("q_proj", "k_proj", "v_proj")}
    elif layout == "fused":  # one [q | k | v] kernel
      attn = {"qkv": {"kernel": normal((D, 3 * H * K))}}
    else:  # an explicit heads axis: (d_model, n_heads, d_head)
      attn = {name: {"kernel": normal((D, H, K))} for name in ("query", "key", "value")}
    blocks.append({"attn": attn, "mlp": {"kernel": normal((D, D))}})
  return {"blocks": blocks, "head": {"kernel": normal((D, 16))}}


def clip(layout: str, tau) -> optax.GradientTransformationExtraArgs:
  if layout == "separate":
    return ol.contrib.qk_clip(tau, query=r"q_proj/kernel$", key=r"k_proj/kernel$", heads=H)
  if layout == "fused":
    return ol.contrib.qk_clip(tau, query=(r"attn/qkv/kernel$", 0, 3),
                              key=(r"attn/qkv/kernel$", 1, 3), heads=H)
  return ol.contrib.qk_clip(tau, query=r"attn/query/kernel$", key=r"attn/key/kernel$",
                            heads_axis=-2)


def qk(layout: str, attn: dict) -> tuple[np.ndarray, np.ndarray]:
  """The layer's query and key weights as float64 ``(D, H, K)`` arrays."""
  if layout == "separate":
    q, k = attn["q_proj"]["kernel"], attn["k_proj"]["kernel"]
  elif layout == "fused":
    q, k = np.split(np.asarray(attn["qkv"]["kernel"]), 3, axis=1)[:2]
  else:
    q, k = attn["query"]["kernel"], attn["key"]["kernel"]
  return (np.asarray(q, np.float64).reshape(D, H, K), np.asarray(k, np.float64).reshape(D, H, K))


def max_logits(layout: str, params, x_BxLxD: np.ndarray) -> dict[str, np.ndarray]:
  """Per layer ``blocks/i``: each head's largest causal logit ``q . k / sqrt(K)``, in NumPy."""
  out = {}
  for i, block in enumerate(params["blocks"]):
    wq, wk = qk(layout, block["attn"])
    q = np.einsum("bld,dhk->bhlk", x_BxLxD, wq)
    k = np.einsum("bld,dhk->bhlk", x_BxLxD, wk)
    logits = np.einsum("bhik,bhjk->bhij", q, k) / np.sqrt(K)
    logits = np.where(np.tril(np.ones((L, L), bool)), logits, -np.inf)
    out[f"blocks/{i}"] = logits.max(axis=(0, 2, 3))
  return out


def step(tx, params, **extra):
  grads = jax.tree.map(jnp.cos, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params, **extra)
  return optax.apply_updates(params, updates)


X = np.random.default_rng(0).standard_normal((B, L, D))


def clipped_step(layout: str, base, tau_from=np.median):
  """``(params, stepped alone, stepped and clipped, logits before the clip, tau)``."""
  params = make_params(layout)
  alone = step(base, params)
  s = max_logits(layout, alone, X)
  tau = float(tau_from(np.concatenate(list(s.values()))))
  both = step(optax.chain(base, clip(layout, tau)), params,
              max_logits={k: jnp.asarray(v, jnp.float32) for k, v in s.items()})
  return params, alone, both, s, tau


@pytest.mark.parametrize("layout", LAYOUTS)
def test_clipped_heads_end_at_tau_and_the_rest_are_bitwise_the_plain_step(layout):
  _, alone, both, before, tau = clipped_step(layout, optax.sgd(0.5))
  after = max_logits(layout, both, X)
  clipped = {k: v > tau for k, v in before.items()}
  assert 0 < sum(c.sum() for c in clipped.values()) < LAYERS * H  # both kinds present
  for name, c in clipped.items():
    np.testing.assert_allclose(after[name][c], tau, rtol=1e-5)
    np.testing.assert_array_equal(after[name][~c], before[name][~c])
  for i, (a, b) in enumerate(zip(alone["blocks"], both["blocks"], strict=True)):
    (aq, ak), (bq, bk) = qk(layout, a["attn"]), qk(layout, b["attn"])
    c = clipped[f"blocks/{i}"]
    scale = np.sqrt(tau / before[f"blocks/{i}"])
    for wa, wb in ((aq, bq), (ak, bk)):
      np.testing.assert_array_equal(wb[:, ~c], wa[:, ~c])  # bit for bit
      np.testing.assert_allclose(wb[:, c], wa[:, c] * scale[c][None, :, None], rtol=1e-5,
                                 atol=1e-6)
    rest = lambda blk: [x for path, x in jax.tree_util.tree_leaves_with_path(blk)
                        if not any(getattr(p, "key", None) in ("q_proj", "k_proj", "query", "key")
                                   for p in path)]
    for xa, xb in zip(rest(a), rest(b), strict=True):
      if xa.shape[-1] == 3 * H * K:  # the fused kernel: its value third is untouched
        xa, xb = xa[:, 2 * H * K:], xb[:, 2 * H * K:]
      np.testing.assert_array_equal(xb, xa)
  np.testing.assert_array_equal(both["head"]["kernel"], alone["head"]["kernel"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nothing_above_tau_is_the_plain_step_bit_for_bit(layout):
  _, alone, both, _, _ = clipped_step(layout, optax.sgd(0.5), tau_from=lambda s: 2 * s.max())
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(both), strict=True):
    np.testing.assert_array_equal(b, a)


def test_chained_after_scion_it_clips_and_passes_the_rest_through():
  _, alone, both, before, tau = clipped_step("separate", ol.scion(0.1))
  after = max_logits("separate", both, X)
  for name in before:
    assert np.all(after[name] <= tau * (1 + 1e-5)), (name, after[name], tau)
  np.testing.assert_array_equal(both["blocks"][0]["mlp"]["kernel"],
                                alone["blocks"][0]["mlp"]["kernel"])


def test_tau_can_be_injected():
  params, _, both, before, tau = clipped_step("separate", optax.sgd(0.5))
  injected = optax.inject_hyperparams(ol.contrib.qk_clip, static_args=("heads", "heads_axis"))(
      tau=tau, query=r"q_proj/kernel$", key=r"k_proj/kernel$", heads=H)
  got = step(optax.chain(optax.sgd(0.5), injected), params,
             max_logits={k: jnp.asarray(v, jnp.float32) for k, v in before.items()})
  for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_logit_clips_nothing(value):
  params = make_params("separate")
  tx = optax.chain(optax.sgd(0.5), clip("separate", 1.0))
  got = step(tx, params, max_logits={f"blocks/{i}": jnp.full(H, value) for i in range(LAYERS)})
  for a, b in zip(jax.tree.leaves(step(optax.sgd(0.5), params)), jax.tree.leaves(got),
                  strict=True):
    np.testing.assert_array_equal(b, a)


# -- a kernel stored fan-out first, with biases (GPT-2's Conv1D) ----------------------


class Conv1D(nn.Module):
  """transformers' FlaxConv1D: the kernel is stored ``(features, in)``, applied transposed."""

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(0.02), (self.features, x.shape[-1]))
    bias = self.param("bias", nn.initializers.normal(0.02), (self.features,))
    return jax.lax.dot_general(x, kernel.T, (((x.ndim - 1,), (0,)), ((), ()))) + bias


class GPT2Attention(nn.Module):
  """GPT-2's causal attention on one fused ``c_attn`` projection, then ``c_proj``."""

  heads: int

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    q, k, v = (t.reshape(b, n, self.heads, d // self.heads)
               for t in jnp.split(Conv1D(3 * d, name="c_attn")(x), 3, axis=2))
    o = nn.dot_product_attention(q, k, v, mask=nn.make_causal_mask(jnp.ones((b, n))))
    return Conv1D(d, name="c_proj")(o.reshape(b, n, d))


def gpt2_logits(attn: dict, x: np.ndarray, heads: int) -> np.ndarray:
  """Each head's largest causal logit, by hand in NumPy: ``q = x W_q^T + b_q``."""
  w, bias = np.asarray(attn["c_attn"]["kernel"], np.float64), np.asarray(attn["c_attn"]["bias"])
  d = x.shape[-1]
  q, k = (x @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d] for i in (0, 1))
  q, k = (t.reshape(*t.shape[:2], heads, d // heads) for t in (q, k))
  logits = np.einsum("bihk,bjhk->bhij", q, k) / np.sqrt(d // heads)
  causal = np.tril(np.ones(logits.shape[-2:], bool))
  return np.where(causal, logits, -np.inf).max(axis=(0, 2, 3))


def test_a_fan_out_first_kernel_and_its_biases_are_clipped_along_the_routings_fan_out():
  heads, d, tau = 2, 24, 5.0  # 24 = 3 x 8: the fan-in axis would split too, silently
  model, x = GPT2Attention(heads), np.random.default_rng(1).standard_normal((2, 6, d))
  params = model.init(jax.random.key(0), jnp.asarray(x, jnp.float32))["params"]
  params = jax.tree.map(lambda a: a * 100.0, params)  # logits far above tau
  rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x), params,
                         jnp.asarray(x, jnp.float32))
  view = rules.group_for("c_attn/kernel", params["c_attn"]["kernel"])
  assert (view.spec.fan_in, view.spec.fan_out) == ((1,), (0,))  # read as 24 x 72
  before = gpt2_logits(params, x, heads)
  assert np.all(before > 20 * tau), before
  fused = dict(query=(r"c_attn/kernel$", 0, 3), key=(r"c_attn/kernel$", 1, 3), heads=heads)
  tx = ol.contrib.qk_clip(tau, rules=rules, **fused)
  zero = jax.tree.map(jnp.zeros_like, params)
  u, _ = jax.jit(tx.update)(zero, tx.init(params), params,
                            max_logits={"": jnp.asarray(before, jnp.float32)})
  after = optax.apply_updates(params, u)
  np.testing.assert_allclose(gpt2_logits(after, x, heads), tau, rtol=1e-5)
  np.testing.assert_array_equal(after["c_proj"]["kernel"], params["c_proj"]["kernel"])
  for leaf in ("kernel", "bias"):  # the value third moves with nothing
    np.testing.assert_array_equal(after["c_attn"][leaf][2 * d:], params["c_attn"][leaf][2 * d:])
  with pytest.raises(ValueError, match=r"c_attn/kernel: heads_axis=-1 is not the fan-out axis 0"):
    ol.contrib.qk_clip(tau, rules=rules, heads_axis=-1, **fused).init(params)


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_tau_is_refused_at_construction(tau):
  with pytest.raises(ValueError, match="qk_clip: tau must be a finite number > 0"):
    clip("separate", tau)


@pytest.mark.parametrize("kw, message", [
    (dict(query=r"nothing$"), r"query='nothing\$' matches no parameter.*blocks/0/attn/"),
    (dict(heads=3), r"blocks/0/attn/q_proj/kernel: axis -1 of shape \(8, 8\) does not split"),
    (dict(heads_axis=2), r"blocks/0/attn/q_proj/kernel: heads_axis=2 is out of range"),
    (dict(key=r"(k|v)_proj/kernel$"), r"query matches 2 projection\(s\) and key 4"),
    (dict(key=r"q_proj/kernel$"), r"q_proj/kernel: matched by both query and key"),
    (dict(query=(r"q_proj/kernel$", 0, 2), key=(r"k_proj/kernel$", 0, 1)),
     r"query kernels span \[4\] along heads_axis and the key kernels \[8\]"),
])
def test_bad_routing_is_refused_at_init_naming_the_leaf(kw, message):
  args = dict(query=r"q_proj/kernel$", key=r"k_proj/kernel$", heads=H) | kw
  tx = ol.contrib.qk_clip(1.0, **args)
  with pytest.raises(ValueError, match=message):
    tx.init(make_params("separate"))


@pytest.mark.parametrize("query", [("qkv", 3, 3), ("qkv", 0), (r"qkv", "0", 3)])
def test_bad_fused_projection_is_refused_at_construction(query):
  with pytest.raises(ValueError, match=r"query must be a regex or a \(regex, section, sections\)"):
    ol.contrib.qk_clip(1.0, query=query, key=r"k$", heads=H)


@pytest.mark.parametrize("heads", [0, 2.0, True])
def test_bad_heads_is_refused_at_construction(heads):
  with pytest.raises(ValueError, match="heads must be a positive int or None"):
    ol.contrib.qk_clip(1.0, query=r"q$", key=r"k$", heads=heads)


GOOD = {f"blocks/{i}": jnp.ones(H) for i in range(LAYERS)}


@pytest.mark.parametrize("logits, message", [
    (None, r"call update\(updates, state, params, max_logits="),
    (jnp.ones((LAYERS, H)), "max_logits must map a layer's path prefix"),
    ({"blocks/0": jnp.ones(H)}, r"blocks/1/attn/k_proj/kernel: max_logits has no entry"),
    ({**GOOD, "blocks/1": jnp.ones(H + 1)},
     r"blocks/1/attn/k_proj/kernel: its key has 2 heads .* shape \(3,\)"),
    ({**GOOD, "blocks/0/attn/k_proj": jnp.ones(H)},
     r"max_logits\['blocks/0(/attn/k_proj)?'\] is a path prefix of only (key|query) leaves"),
    ({**GOOD, "blocks/2": jnp.ones(H)}, r"max_logits\['blocks/2'\] is a path prefix of no query"),
    ({"blocks/0/att": jnp.ones(H), "blocks/1": jnp.ones(H)},
     r"blocks/0/attn/k_proj/kernel: max_logits has no entry"),  # whole components only
])
def test_bad_max_logits_is_refused_at_the_first_update_naming_the_leaf(logits, message):
  params = make_params("separate")
  tx = clip("separate", 1.0)
  extra = {} if logits is None else {"max_logits": logits}
  with pytest.raises(ValueError, match=message):
    jax.jit(tx.update)(params, tx.init(params), params, **extra)


def test_update_without_params_is_refused():
  params = make_params("separate")
  tx = clip("separate", 1.0)
  with pytest.raises(ValueError, match="qk_clip rescales params"):
    tx.update(params, tx.init(params), max_logits=GOOD)


# -- on a mesh (8 simulated devices) --------------------------------------------------


def _worker() -> dict:
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  assert jax.device_count() == N_DEVICES, jax.devices()
  out = {}
  for layout in LAYOUTS:
    params = jax.tree.map(lambda x: jnp.tile(x, (4,) + (1,) * (x.ndim - 1)),
                          make_params(layout))  # 32 rows: 8 devices x 4
    grads = jax.tree.map(jnp.cos, params)
    s = {f"blocks/{i}": jnp.array([3.0, 0.5]) for i in range(LAYERS)}
    tx = optax.chain(optax.sgd(0.5), clip(layout, 1.0))
    update = jax.jit(lambda g, p, s, tx=tx: tx.update(g, tx.init(p), p, max_logits=s)[0])
    one = jax.device_get(update(grads, params, s))
    sgd = optax.sgd(0.5)
    plain = jax.tree.leaves(jax.device_get(sgd.update(grads, sgd.init(params))[0]))
    for (name, spec), at in itertools.product(SPECS.items(), AXIS_TYPES):
      mesh = jax.make_mesh((N_DEVICES,), ("x",), axis_types=(getattr(AxisType, at),))
      put = lambda x, spec=spec, mesh=mesh: jax.device_put(x, NamedSharding(
          mesh, P(*spec) if x.shape[len(spec) - 1] % N_DEVICES == 0 else P()))
      with jax.set_mesh(mesh):
        got = jax.tree.leaves(update(jax.tree.map(put, grads), jax.tree.map(put, params), s))
      out[f"{layout}/{name}/{at}"] = {
          "err": max(float(np.max(np.abs(np.asarray(a) - b)))
                     for a, b in zip(got, jax.tree.leaves(one), strict=True)),
          "sharded": sum(not a.sharding.is_fully_replicated for a in got),
          "moved": sum(bool(np.any(np.asarray(a) != b)) for a, b in zip(got, plain, strict=True)),
      }
  return out


@pytest.fixture(scope="module")
def worker() -> dict:
  return run_worker(__file__, devices=N_DEVICES, timeout=600)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_sharded_params_clip_as_on_one_device(worker, layout, spec, axis_type):
  r = worker[f"{layout}/{spec}/{axis_type}"]
  assert r["err"] < 1e-6, r
  assert r["sharded"] > 0, r  # the mesh really held the leaves
  moved = LAYERS if layout == "fused" else 2 * LAYERS  # each layer's query and key leaves
  assert r["moved"] == moved, r


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
  print(json.dumps(_worker()))
