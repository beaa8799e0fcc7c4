"""Expert layouts routed by ``infer_rules``: the expert axis is a batch axis, never in a matrix.

Three ways people write a mixture of experts over stacked weights ``(E, d, f)``:
an einsum with a router's gates, ``jax.vmap`` over the experts, and the top
expert's weights picked with ``jnp.take`` by the router's argmax. Each must give
every expert its own ``d x f`` matrix (checked against a NumPy SVD per expert).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_lmo as ol
from optax_lmo import norms

E, D, F, V = 4, 8, 16, 10
STACK_IN, STACK_OUT = ol.MatrixSpec((1,), (2,)), ol.MatrixSpec((1,), (2,))


def _params():
  k = jax.random.split(jax.random.key(0), 5)
  return {"embed": jax.random.normal(k[0], (V, D)), "router": jax.random.normal(k[1], (D, E)),
          "w_in": jax.random.normal(k[2], (E, D, F)), "w_out": jax.random.normal(k[3], (E, F, D)),
          "head": jax.random.normal(k[4], (D, V))}


def einsum_moe(p, t):
  x = p["embed"][t]
  gate = jax.nn.softmax(x @ p["router"], -1)
  h = jax.nn.gelu(jnp.einsum("btd,edf->btef", x, p["w_in"]))
  y = jnp.einsum("btef,efd->bted", h, p["w_out"])
  return (jnp.einsum("bted,bte->btd", y, gate) + x) @ p["head"]


def vmap_moe(p, t):
  x = p["embed"][t]
  gate = jax.nn.softmax(x @ p["router"], -1)
  y = jax.vmap(lambda wi, wo: jax.nn.gelu(x @ wi) @ wo, out_axes=2)(p["w_in"], p["w_out"])
  return (jnp.einsum("bted,bte->btd", y, gate) + x) @ p["head"]


def take_moe(p, t):
  x = p["embed"][t]
  logits = x @ p["router"]
  top = jnp.argmax(logits, -1)
  w_in, w_out = jnp.take(p["w_in"], top, axis=0), jnp.take(p["w_out"], top, axis=0)
  h = jax.nn.gelu(jnp.einsum("btd,btdf->btf", x, w_in))
  y = jnp.einsum("btf,btfd->btd", h, w_out) * jax.nn.sigmoid(logits.max(-1, keepdims=True))
  return (y + x) @ p["head"]


@pytest.mark.parametrize("moe", [einsum_moe, vmap_moe, take_moe])
def test_each_expert_is_its_own_matrix(moe):
  params, tokens = _params(), jnp.zeros((2, 5), jnp.int32)
  rules = ol.infer_rules(moe, params, tokens)
  table = {p: (g.norm, g.spec, g.role) for p, g in
           zip(*(lambda plan: (plan.paths, plan.groups))(rules.plan(params)), strict=True)}
  assert table == {"embed": (norms.ColNorm(), None, "embedding"),
                   "router": (norms.Spectral(), None, "hidden"),
                   "w_in": (norms.Spectral(), STACK_IN, "hidden"),
                   "w_out": (norms.Spectral(), STACK_OUT, "hidden"),
                   "head": (norms.RowNorm(), None, "output")}
  rows = {r["path"]: r for r in ol.describe(rules, params)}
  assert rows["w_in"]["view"] == f"{E}x{D}x{F}" and rows["w_out"]["view"] == f"{E}x{F}x{D}"
  # The LMO of each expert is its own scaled polar factor.
  g = jax.random.normal(jax.random.key(3), (E, D, F))
  u = norms.Spectral(polar=ol.Polar(method="svd")).lmo(g, table["w_in"][1])
  for e in range(E):
    a, _, bt = np.linalg.svd(np.asarray(g[e], np.float64), full_matrices=False)
    np.testing.assert_allclose(u[e], np.sqrt(F / D) * a @ bt, atol=2e-5)


def test_an_embedding_looked_up_and_multiplied_stays_an_embedding():
  """Rows gathered by token ids are activations: a product with a parameter does not make
  the table a weight (only whole matrices picked by index do)."""
  params = {"embed": jnp.ones((V, D)), "w": jnp.ones((D, D)), "head": jnp.ones((D, V))}
  rules = ol.infer_rules(lambda p, t: (p["embed"][t] @ p["w"]) @ p["head"], params,
                         jnp.zeros((2, 3), jnp.int32))
  assert rules.group_for("embed", params["embed"]).role == "embedding"
  assert rules.group_for("w", params["w"]).role == "hidden"
