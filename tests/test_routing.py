"""Routing: route with a custom build, describe's table, and default_rules' name rules."""

import gc
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src import describe as describe_lib
from optax_lmo._src.route import RouteState, route
from optax_lmo._src.settings import Options

SVD = ol.Polar(method="svd")


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {
      "embed": {"embedding": jax.random.normal(k[0], (12, 8))},
      "fc": {"kernel": jax.random.normal(k[1], (8, 16)), "bias": jnp.ones(16)},
      "head": {"kernel": jax.random.normal(k[2], (16, 12))},
  }


def _groups(tree, rules=None):
  """{path: Group} as default_rules (or ``rules``) resolves ``tree``."""
  plan = (rules or ol.default_rules()).plan(tree)
  return dict(zip(plan.paths, plan.groups, strict=True))


# ---- route with a custom build -----------------------------------------------------------


RULES = [
    (r"kernel$", ol.Group(norms.Spectral(), radius=2.0)),
    (r"embedding$", ol.Group(norms.ColNorm(), radius=0.5)),
    (r"bias$", ol.Group(norms.BiasRMS(), radius=3.0)),
]


def _build(seen):
  def build(plan):
    seen.append(plan)
    return optax.chain(
        ol.scale_by_norm(plan.settings("norm")),
        ol.scale_by_radius(plan.settings("radius")),
        optax.scale(-1.0),
    )
  return build


def test_route_runs_the_build_of_the_resolved_plan():
  seen = []
  tx = route(RULES, _build(seen), name="my_lmo", options=Options("my_lmo", 0.1, polar=SVD))
  params = _params()
  state = tx.init(params)
  assert isinstance(state, RouteState)
  plan = seen[-1]
  assert plan.paths == ("embed/embedding", "fc/bias", "fc/kernel", "head/kernel")
  assert plan.shapes == tuple(np.shape(x) for x in jax.tree.leaves(params))
  assert plan.leaves[2].norm.polar == SVD  # polar= reaches every spectral norm of the plan
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  u, state = jax.jit(tx.update)(g, state, params)
  assert isinstance(state, RouteState)
  for name in ("fc", "head"):  # -2 sqrt(d_out/d_in) U V^T, from NumPy's SVD
    x = np.asarray(g[name]["kernel"], np.float64)
    a, _, bt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(u[name]["kernel"], -2.0 * np.sqrt(x.shape[1] / x.shape[0]) * a @ bt,
                               atol=1e-5)
  e = np.asarray(g["embed"]["embedding"], np.float64)
  np.testing.assert_allclose(
      u["embed"]["embedding"], -0.5 * np.sqrt(8) * e / np.linalg.norm(e, axis=1, keepdims=True),
      rtol=1e-5)
  b = np.asarray(g["fc"]["bias"], np.float64)
  np.testing.assert_allclose(u["fc"]["bias"], -3.0 * b / np.sqrt(np.mean(b**2)), rtol=1e-5)
  rows = {r["path"]: r for r in ol.describe(tx, params)}
  assert rows["fc/kernel"]["norm"] == "Spectral" and rows["fc/kernel"]["radius"] == 2.0
  assert rows["fc/bias"]["radius"] == 3.0


def test_update_runs_on_the_plan_resolved_at_init():
  seen = []
  tx = route(RULES, _build(seen), name="my_lmo", options=Options("my_lmo", 0.1, polar=SVD))
  params = _params()
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  jax.jit(tx.update)(g, state, params)
  # The rules are not resolved again: the update's plan holds init's groups.
  assert len(seen) == 2 and seen[1].groups is seen[0].groups is state.routing.plan.groups


def test_states_compare_equal_only_when_routed_alike():
  tx = ol.scion(0.1, rules=RULES)
  params = _params()
  structure = lambda p: jax.tree.structure(tx.init(p))
  assert structure(params) == structure(jax.tree.map(jnp.zeros_like, params))
  wider = {**params, "fc": {"kernel": jnp.ones((8, 32)), "bias": jnp.ones(32)}}
  assert structure(wider) != structure(params)  # another shape: another routing
  other = ol.scion(0.1, rules=[(r"kernel$", ol.Group(norms.Spectral(), radius=9.0))] + RULES)
  assert jax.tree.structure(other.init(params)) != structure(params)  # another radius
  # A placeholder's state (optax.tree.map_params) lines up with any: its battery covers that.


def test_route_errors_at_init_name_the_leaf_and_the_optimizer():
  params = {"w": jnp.ones((4, 4)), "step": jnp.arange(3), "gain": jnp.ones(4)}
  tx = route([(r"^w$", ol.Group(norms.Spectral())), (r"step", ol.Group(norms.BiasRMS())),
                 (r"gain", ol.Group(norms.BiasRMS()))], _build([]), name="my_lmo")
  with pytest.raises(TypeError, match="step: my_lmo needs floating-point parameters"):
    tx.init(params)
  tx = route([(r"^w$", ol.Group(norms.Spectral())), (r".", ol.Group(None))], _build([]),
                name="my_lmo")
  with pytest.raises(ValueError, match="gain: my_lmo needs a norm for every leaf"):
    tx.init(params)
  tx = route([(r"^w$", ol.Group(norms.Spectral()))], _build([]), name="my_lmo")
  with pytest.raises(ValueError, match="gain: no rule matches this leaf"):
    tx.init(params)


# ---- describe: a table object that prints nothing itself --------------------------------


def test_describe_prints_nothing_and_displays_itself(capsys):
  params = _params()
  d = ol.describe(ol.scion(0.1), params)
  ol.describe(ol.default_rules(), params)
  assert capsys.readouterr() == ("", "")
  assert isinstance(d, describe_lib.Description) and len(d) == 4
  lines = str(d).splitlines()
  assert len(lines) == 2 + len(d)  # header, rule, one line per leaf
  assert lines[0].split()[:4] == ["path", "shape", "view", "norm"]
  assert set(lines[1]) <= {"-", " "}
  for line, row in zip(lines[2:], d, strict=True):
    assert line.split()[0] == row["path"] and row["norm"] in line
  assert repr(d) == str(d)
  html = d._repr_html_()
  assert html.startswith("<table>") and html.endswith("</table>")
  assert html.count("<tr>") == 1 + len(d) and html.count("<th>") == len(d.columns)
  assert "fc/kernel" in html and "RowNorm" in html


def test_describe_escapes_html():
  params = {"a<b>": {"kernel": jnp.zeros((4, 4))}, "head": {"kernel": jnp.zeros((4, 2))}}
  html = ol.describe(ol.scion(0.1), params)._repr_html_()
  assert "a&lt;b&gt;/kernel" in html and "<b>" not in html


def test_describe_without_one_of_ours_says_so():
  with pytest.raises(ValueError, match="found no optax_lmo optimizer"):
    ol.describe(optax.adam(0.1), _params())


def test_built_optimizers_are_not_kept_alive():
  # Building (and describing, initializing) many optimizers leaves nothing behind that
  # holds on to them: no cache keyed by the optimizer.
  params = _params()
  factories = (ol.scion, ol.unconstrained_scion, ol.muon, ol.sign_descent, ol.normalized_sgd)
  refs = []
  for i in range(1000):
    tx = factories[i % len(factories)](0.01 + i * 1e-5)
    refs.append(weakref.ref(tx.init))
    if i % 100 < len(factories):
      ol.describe(tx, params)
      tx.init(params)
  del tx
  gc.collect()
  assert sum(r() is not None for r in refs) == 0


# ---- default_rules: routing by module name ---------------------------------------------


def test_default_rules_route_by_name():
  tree = {
      "embed": {"embedding": jnp.zeros((50, 8))},
      "patch_embed": {"kernel": jnp.zeros((48, 8))},
      "blocks": [{"attention": {"output": {"kernel": jnp.zeros((8, 8))}},
                  "norm": {"scale": jnp.ones(8)}}],
      "unembed": {"kernel": jnp.zeros((8, 50))},
  }
  g = _groups(tree)
  assert g["embed/embedding"].norm == norms.ColNorm() and g["embed/embedding"].role == "embedding"
  # A 2-D patch embedding is an input layer: Spectral with the input-layer factor.
  assert g["patch_embed/kernel"].norm == norms.Spectral(input_layer=True)
  assert g["patch_embed/kernel"].role == "input"
  # "output" deep inside a block is an attention projection, not the model's head.
  assert g["blocks/0/attention/output/kernel"].norm == norms.Spectral()
  assert g["blocks/0/attention/output/kernel"].role == "hidden"
  assert g["blocks/0/norm/scale"].norm == norms.BiasRMS()
  assert g["unembed/kernel"].norm == norms.RowNorm() and g["unembed/kernel"].role == "output"
  assert all(grp.evidence == "name rule" for grp in g.values())
  rows = {r["path"]: r for r in ol.describe(ol.scion(0.1), tree)}
  assert rows["patch_embed/kernel"]["norm"] == "Spectral(input_layer=True)"
  assert rows["unembed/kernel"]["norm"] == "RowNorm" and rows["unembed/kernel"]["role"] == "output"


def test_default_rules_top_level_output_is_the_head():
  tree = {"layers": [{"kernel": jnp.zeros((8, 8))}], "output": {"kernel": jnp.zeros((8, 10))}}
  g = _groups(tree)
  assert g["output/kernel"].norm == norms.RowNorm() and g["output/kernel"].role == "output"
  assert g["layers/0/kernel"].norm == norms.Spectral()
  g = _groups(tree, ol.default_rules(output_norm="sign", output_radius=7.0))
  assert g["output/kernel"].norm == norms.Sign() and g["output/kernel"].radius == 7.0


def test_default_rules_conv_patch_embedding():
  tree = {"patch_embed": {"kernel": jnp.zeros((4, 4, 3, 8))},
          "head": {"kernel": jnp.zeros((8, 10))}}
  g = _groups(tree)
  assert g["patch_embed/kernel"].norm == norms.SpectralConv()
  tx = ol.scion(0.1)
  tx.init(tree)  # the 4-D kernel is viewable: no MatrixSpec needed


def test_default_rules_warn_when_no_head_is_found():
  # A linen-style MLP: names cannot tell the classifier's Dense_2 from a hidden layer.
  tree = {f"Dense_{i}": {"kernel": jnp.zeros((8, 8)), "bias": jnp.zeros(8)} for i in range(3)}
  with pytest.warns(UserWarning, match="no output head") as record:
    ol.scion(0.1).init(tree)
  assert "infer_rules" in str(record[0].message)
  assert _groups(tree)["Dense_2/kernel"].norm == norms.Spectral()
  with warnings.catch_warnings():  # a tree with a head: no warning
    warnings.simplefilter("error")
    ol.scion(0.1).init(_params())
