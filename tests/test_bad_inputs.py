"""Bad input: each case asserts one specific outcome (a clear error naming the leaf, or no harm)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src import polar as polar_lib

SVD = ol.Polar(method="svd")
ALL_NORMS = [
    norms.Spectral(), norms.Spectral(input_layer=True), norms.ColNorm(), norms.RowNorm(),
    norms.Sign(), norms.BiasRMS(), norms.Frobenius(),
]


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {
      "embed": {"embedding": jax.random.normal(k[0], (10, 8))},
      "fc": {"kernel": jax.random.normal(k[1], (8, 12)), "bias": jnp.ones(12)},
      "head": {"kernel": jax.random.normal(k[2], (12, 10))},
  }


def _grads(scale=1.0):
  return jax.tree.map(lambda p: scale * jax.random.normal(jax.random.key(p.size), p.shape),
                      _params())


# -- zeros ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ALL_NORMS, ids=lambda n: repr(n)[:30])
def test_zero_gradient_gives_exact_zero_direction(norm):
  u = norm.lmo(jnp.zeros((6, 10)))
  assert bool(jnp.all(u == 0))


def test_zero_gradients_zero_update_in_unconstrained_scion():
  tx = ol.unconstrained_scion(0.1)
  zeros = jax.tree.map(jnp.zeros_like, _params())
  u, _ = jax.jit(tx.update)(zeros, tx.init(_params()), _params())
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


def test_zero_row_in_embedding_gradient_stays_zero():
  g = jax.random.normal(jax.random.key(1), (10, 8)).at[3].set(0.0)  # token 3 not in the batch
  u = norms.ColNorm().lmo(g)
  assert bool(jnp.all(u[3] == 0))
  np.testing.assert_allclose(jnp.linalg.norm(u[4]), np.sqrt(8), rtol=1e-5)


def test_zero_column_in_head_gradient_stays_zero():
  g = jax.random.normal(jax.random.key(2), (12, 10)).at[:, 7].set(0.0)
  u = norms.RowNorm().lmo(g)
  assert bool(jnp.all(u[:, 7] == 0)) and bool(jnp.all(jnp.isfinite(u)))


def test_zero_matrix_inside_a_stack_stays_zero():
  g = jax.random.normal(jax.random.key(3), (3, 8, 16)).at[1].set(0.0)
  u = norms.Spectral().lmo(g, ol.MatrixSpec(fan_in=(1,), fan_out=(2,)))
  assert bool(jnp.all(u[1] == 0))
  assert bool(jnp.all(jnp.isfinite(u))) and float(jnp.abs(u[0]).max()) > 0


def test_zero_gradient_with_dual_clip_is_zero_not_nan():
  tx = ol.scale_by_norm(norms.Spectral(), dual_clip=2.0)
  u, _ = tx.update(jnp.zeros((8, 8)), tx.init(None))
  assert bool(jnp.all(u == 0))


# -- extreme scales ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_gradient_scale_gives_the_same_step(scale):
  """beta = 0 (no averaging): the step only depends on the direction of g."""
  tx = ol.unconstrained_scion(0.1, beta=0.0, polar=SVD)
  ref, _ = tx.update(_grads(), tx.init(_params()), _params())
  u, _ = tx.update(_grads(scale), tx.init(_params()), _params())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), u, ref)


# -- NaN and Inf ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_nonfinite_gradient_skipped_with_apply_if_finite(bad):
  tx = optax.apply_if_finite(ol.scion(0.1), max_consecutive_errors=5)
  state = tx.init(_params())
  g = _grads()
  g["fc"]["kernel"] = g["fc"]["kernel"].at[0, 0].set(bad)
  u, new_state = jax.jit(tx.update)(g, state, _params())
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_gradient_without_guard_stays_in_its_leaf(bad):
  """Documented: without apply_if_finite a non-finite leaf gets a non-finite update;
  every other leaf's update is exactly what it would have been."""
  tx = ol.scion(0.1)
  clean, _ = tx.update(_grads(), tx.init(_params()), _params())
  g = _grads()
  g["fc"]["kernel"] = g["fc"]["kernel"].at[0, 0].set(bad)
  u, _ = tx.update(g, tx.init(_params()), _params())
  assert not bool(jnp.all(jnp.isfinite(u["fc"]["kernel"])))
  for path in (("embed", "embedding"), ("fc", "bias"), ("head", "kernel")):
    np.testing.assert_array_equal(u[path[0]][path[1]], clean[path[0]][path[1]])


# -- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_and_grads(dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), _params())
  grads = jax.tree.map(lambda x: x.astype(dtype), _grads())
  tx = ol.scion(0.1)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(grads, state, params)
  for x in jax.tree.leaves(u):
    assert x.dtype == dtype and bool(jnp.all(jnp.isfinite(x)))
  trace = optax.tree_utils.tree_get(state, "trace")  # the momentum buffers
  assert jax.tree.structure(trace) == jax.tree.structure(params)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trace))
  # An explicit mu_dtype is honoured, and the update still comes back in the leaf's dtype.
  tx = ol.scion(0.1, mu_dtype=dtype)
  u, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert all(x.dtype == dtype for x in jax.tree.leaves(optax.tree_utils.tree_get(state, "trace")))
  assert all(x.dtype == dtype and bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_boolean_leaves_are_refused_by_name(dtype):
  tx = ol.scale_by_norm({"w": norms.Spectral(), "step": norms.BiasRMS()})
  g = {"w": jnp.ones((4, 4)), "step": jnp.ones(3, dtype)}
  with pytest.raises(TypeError, match="step: an LMO needs a floating-point gradient"):
    tx.update(g, tx.init(g))


def test_integer_leaf_passes_when_mapped_to_none():
  tx = ol.scale_by_norm({"w": norms.Spectral(), "step": None})
  g = {"w": jnp.ones((4, 4)), "step": jnp.arange(3)}
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(u["step"], jnp.arange(3))


# -- structure --------------------------------------------------------------------------


def test_empty_tree():
  tx = ol.scion(0.1)
  u, _ = tx.update({}, tx.init({}), {})
  assert u == {}


def test_none_leaves_are_kept():
  params = {"w": jnp.ones((4, 4)), "frozen": None}
  tx = ol.scion(0.1)
  u, _ = tx.update({"w": jnp.ones((4, 4)), "frozen": None}, tx.init(params), params)
  assert u["frozen"] is None and u["w"].shape == (4, 4)


def test_gradient_tree_not_matching_params():
  tx = ol.scion(0.1)
  state = tx.init(_params())
  g = _grads()
  del g["head"]
  with pytest.raises(ValueError, match="head/kernel: the gradient has no leaf for this parameter"):
    tx.update(g, state, _params())


def test_norm_tree_not_matching_updates_names_the_problem():
  tx = ol.scale_by_norm({"a": norms.Spectral()})
  with pytest.raises(ValueError, match="b: the norm tree has no entry for this leaf"):
    tx.update({"a": jnp.ones((2, 2)), "b": jnp.ones(2)}, None)


def test_non_norm_in_norm_tree_names_the_leaf():
  tx = ol.scale_by_norm({"a": "spectral"})
  with pytest.raises(TypeError, match="a: expected a Norm"):
    tx.update({"a": jnp.ones((2, 2))}, None)


@pytest.mark.parametrize("shape", [(7,), ()])
def test_rank1_and_rank0_leaf_to_spectral_names_the_leaf(shape):
  tx = ol.scale_by_norm({"blocks": {"gain": norms.Spectral()}})
  g = {"blocks": {"gain": jnp.ones(shape)}}
  with pytest.raises(ValueError, match="blocks/gain: .*needs a matrix"):
    tx.update(g, None)


def test_ndim3_without_spec_in_strict_rules():
  params = {"experts": {"kernel": jnp.ones((4, 8, 8))}, "head": {"kernel": jnp.ones((8, 4))}}
  tx = ol.scion(0.1)  # building never looks at the parameters
  with pytest.raises(ValueError, match="experts/kernel: ndim 3 needs a MatrixSpec") as e:
    tx.init(params)
  assert "infer_rules" in str(e.value) and "SpectralConv" not in str(e.value)
  with pytest.raises(ValueError, match="experts/kernel: ndim 3 needs a MatrixSpec"):
    ol.describe(tx, params)


def test_conv_kernel_without_rule_points_to_spectral_conv():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8))}, "head": {"kernel": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match="conv/kernel: ndim 4 needs a MatrixSpec") as e:
    ol.scion(0.1).init(params)
  assert "SpectralConv" in str(e.value) and "infer_rules" in str(e.value)
  # An explicit rule whose norm cannot view the 4-D leaf says the same.
  tx = ol.scion(0.1, rules=[(r"kernel$", ol.Group(norms.Spectral()))])
  with pytest.raises(ValueError, match="conv/kernel") as e:
    tx.init(params)
  assert "SpectralConv" in str(e.value) and "infer_rules" in str(e.value)


def test_unmatched_leaf_in_strict_rules():
  tx = ol.scion(0.1, rules=[(r"kernel$", ol.Group(norms.Spectral()))])
  with pytest.raises(ValueError, match="embed/embedding: no rule matches") as e:
    tx.init(_params())
  assert "infer_rules" in str(e.value)
  with pytest.raises(ValueError, match="embed/embedding: no rule matches"):
    ol.describe([(r"kernel$", ol.Group(norms.Spectral()))], _params())


@pytest.mark.parametrize(
    "make, name",
    [(ol.scion, "scion"), (ol.unconstrained_scion, "unconstrained_scion"),
     (ol.sign_descent, "sign_descent"), (ol.normalized_sgd, "normalized_sgd")],
)
def test_integer_parameter_is_refused_at_init_naming_the_optimizer(make, name):
  params = {"w": jnp.ones((4, 4)), "step": {"count": jnp.arange(3)}}
  rules = [(r"^w$", ol.Group(norms.Spectral())), (r"count", ol.Group(norms.BiasRMS()))]
  tx = make(0.1, rules=rules) if "scion" in name else make(0.1)
  with pytest.raises(TypeError, match=f"step/count: {name} needs floating-point parameters"):
    tx.init(params)


def test_norm_less_group_is_refused_at_init_by_scion_not_muon():
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  rules = [(r"^w$", ol.Group(norms.Spectral())), (r"^b$", ol.Group(None))]
  with pytest.raises(ValueError, match="b: scion needs a norm for every leaf"):
    ol.scion(0.1, rules=rules).init(params)
  tx = ol.muon(0.1, rules=rules)  # muon sends the norm-less leaf to AdamW
  u, _ = tx.update(params, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(u["b"])))


# -- invalid configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    "coeffs, match",
    [
        ([(1.0, 2.0)], "triples"),
        ([], "non-empty"),
        ([(2.0, -3.0, 0.0)], "positive and at most"),
        ("newton", "Unknown Newton–Schulz coefficient set 'newton'; known: jordan"),
    ],
)
def test_invalid_coefficient_sets(coeffs, match):
  with pytest.raises(ValueError, match=match):
    polar_lib.polar(jnp.ones((4, 4)), coeffs=coeffs)


def test_zero_steps_and_unknown_method():
  with pytest.raises(ValueError, match="steps >= 1"):
    polar_lib.polar(jnp.ones((4, 4)), steps=0)
  with pytest.raises(ValueError, match="Unknown polar method"):
    ol.Polar(method="qr")


def test_zero_learning_rate_changes_nothing():
  for tx in (ol.scion(0.0), ol.unconstrained_scion(0.0, weight_decay=0.1), ol.muon(0.0)):
    u, _ = tx.update(_grads(), tx.init(_params()), _params())
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("make", [
    lambda: ol.scion(-0.1), lambda: ol.unconstrained_scion(-1.0),
    lambda: ol.muon(0.1, adam_learning_rate=-1e-3),
])
def test_negative_learning_rate_is_refused(make):
  with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
    make()


@pytest.mark.parametrize("field", ["radius", "lr_mult", "weight_decay"])
def test_negative_group_values_are_refused(field):
  with pytest.raises(ValueError, match=f"Group: {field} must be a finite number >= 0"):
    ol.Group(norms.Spectral(), **{field: -1.0})


def test_zero_radius_gives_zero_step():
  tx = ol.unconstrained_scion(0.1, rules=ol.default_rules(hidden_radius=0.0))
  u, _ = tx.update(_grads(), tx.init(_params()), _params())
  assert bool(jnp.all(u["fc"]["kernel"] == 0))


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_momentum_out_of_range(beta):
  with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
    ol.momentum(beta)
  for make in (ol.scion, ol.unconstrained_scion, ol.sign_descent, ol.normalized_sgd, ol.muon):
    with pytest.raises(ValueError, match=rf"{make.__name__}: beta must be in \[0, 1\)"):
      make(0.1, beta=beta)  # at construction, naming the optimizer


def test_momentum_beta_zero_is_valid():
  tx = ol.momentum(0.0)
  g = jnp.arange(3.0)
  np.testing.assert_array_equal(tx.update(g, tx.init(g))[0], g)


def test_unknown_output_norm_name():
  with pytest.raises(ValueError, match="output_norm must be 'rownorm' or 'sign'"):
    ol.default_rules(output_norm="l1")


def test_group_with_non_norm():
  with pytest.raises(TypeError, match="Group.norm must be"):
    ol.Group("spectral")


def test_constrained_decay_without_params_says_what_to_do():
  tx = ol.scion(0.1)
  with pytest.raises(ValueError, match="call tx.update\\(grads, state, params\\)"):
    tx.update(_grads(), tx.init(_params()))
