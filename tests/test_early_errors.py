"""Early, named errors: bad hyperparameters, mismatched trees, NNX objects given to describe.

Each case calls a public signature and checks where the error is raised and that
its message names the argument (or the leaf) and says what to pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms

OPTIMIZERS = [ol.scion, ol.unconstrained_scion, ol.muon, ol.contrib.polargrad, ol.sign_descent,
              ol.normalized_sgd]
WITH_DECAY = [ol.unconstrained_scion, ol.muon, ol.contrib.polargrad, ol.sign_descent,
              ol.normalized_sgd]
NON_FINITE = [float("inf"), float("nan"), -1.0, np.float32("nan"), np.array(np.inf),
              jnp.array(jnp.nan), jnp.array([0.1, jnp.inf])]


def _params():
  return {"blocks": [{"w": jnp.ones((8, 3)) / 8}], "head": {"kernel": jnp.ones((3, 4)) / 4}}


# -- hyperparameters, at construction ---------------------------------------------------


@pytest.mark.parametrize("make", OPTIMIZERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", NON_FINITE, ids=repr)
def test_bad_learning_rate_is_refused_at_construction(make, bad):
  with pytest.raises(ValueError, match=rf"^{make.__name__}: learning_rate must be a finite number"
                                       r" >= 0 or an optax schedule, got"):
    make(bad)


@pytest.mark.parametrize("make", OPTIMIZERS, ids=lambda f: f.__name__)
def test_a_schedule_negative_at_step_0_is_refused_at_construction(make):
  with pytest.raises(ValueError, match=rf"^{make.__name__}: learning_rate is a schedule whose"
                                       r" value at step 0 is -0.1; a learning rate must be a"
                                       r" finite number >= 0 .*Fix the schedule"):
    make(optax.linear_schedule(-0.1, 0.1, 100))
  with pytest.raises(ValueError, match="value at step 0 is nan"):
    make(lambda count: jnp.nan * count)
  make(optax.linear_schedule(0.0, 0.1, 100))  # a warmup from 0 is fine
  make(lambda count: jnp.where(count > 10, 0.1, 0.0))


def test_muon_refuses_a_negative_adam_schedule():
  with pytest.raises(ValueError, match=r"^muon: adam_learning_rate is a schedule whose value at"
                                       r" step 0 is -0.001"):
    ol.muon(0.02, adam_learning_rate=optax.constant_schedule(-1e-3))


@pytest.mark.parametrize("lr", [-0.1, optax.constant_schedule(-0.1)], ids=["number", "schedule"])
def test_an_injected_negative_learning_rate_is_refused_at_init(lr):
  tx = optax.inject_hyperparams(ol.scion)(learning_rate=lr)
  with pytest.raises(ValueError, match=r"^scion: learning_rate must be a finite number >= 0 or an"
                                       r" optax schedule, got -0.1\.$"):
    tx.init(_params())


@pytest.mark.parametrize("make", OPTIMIZERS, ids=lambda f: f.__name__)
def test_string_learning_rate_is_a_type_error_saying_what_to_pass(make):
  with pytest.raises(TypeError, match=rf"^{make.__name__}: learning_rate must be a number or an"
                                      r" optax schedule, got '0.01' \(a str\)\. Pass the number"
                                      r" 0.01"):
    make("0.01")
  with pytest.raises(TypeError, match="learning_rate must be a number"):
    make(True)


@pytest.mark.parametrize("make", WITH_DECAY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [float("inf"), -0.1, "0.1"], ids=repr)
def test_bad_weight_decay_is_refused_at_construction(make, bad):
  error = TypeError if isinstance(bad, str) else ValueError
  with pytest.raises(error, match=rf"^{make.__name__}: weight_decay must be a"):
    make(0.1, weight_decay=bad)


@pytest.mark.parametrize("make", OPTIMIZERS, ids=lambda f: f.__name__)
def test_non_finite_beta_and_scheduled_beta_are_refused(make):
  with pytest.raises(ValueError, match=rf"^{make.__name__}: beta must be in \[0, 1\)"):
    make(0.1, beta=float("nan"))
  with pytest.raises(TypeError, match=rf"^{make.__name__}: beta must be a number, got the callable"
                                      r".*optax.inject_hyperparams"):
    make(0.1, beta=optax.constant_schedule(0.9))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(adam_learning_rate=float("inf")), ValueError, "adam_learning_rate must be a finite"),
        (dict(adam_learning_rate="1e-3"), TypeError, "adam_learning_rate must be a number"),
        (dict(adam_b1=1.0), ValueError, r"adam_b1 must be in \[0, 1\)"),
        (dict(adam_b2=float("nan")), ValueError, r"adam_b2 must be in \[0, 1\)"),
        (dict(adam_eps=float("nan")), ValueError, "adam_eps must be a finite number >= 0"),
        (dict(adam_weight_decay=-1.0), ValueError, "adam_weight_decay must be a finite number"),
    ],
)
def test_muon_refuses_bad_adam_hyperparameters_by_name(kwargs, error, match):
  with pytest.raises(error, match=f"^muon: {match}"):
    ol.muon(0.02, **kwargs)


@pytest.mark.parametrize("make", OPTIMIZERS, ids=lambda f: f.__name__)
def test_good_values_of_every_numeric_kind_are_accepted(make):
  schedule = optax.cosine_decay_schedule(0.1, 100)
  for lr in (0.1, 0, 1, np.float32(0.1), np.array(0.1), jnp.float32(0.1), jnp.bfloat16(0.1),
             schedule):
    make(lr, beta=0.0)
  make(0.1, beta=np.float32(0.5))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_keep_prob_has_one_rule_everywhere(bad):
  rule = r"must be in \(0, 1\]"
  for make in (lambda: ol.scion(0.1, keep_prob=bad), lambda: ol.muon(0.1, keep_prob=bad),
               lambda: ol.unconstrained_scion(0.1, keep_prob=bad)):
    with pytest.raises(ValueError, match=rf"^\w+: keep_prob {rule}"):
      make()
  with pytest.raises(ValueError, match=f"^Group: keep_prob {rule}"):
    ol.Group(norms.Spectral(), keep_prob=bad)
  with pytest.raises(ValueError, match=f"^drop_leaves: keep_prob at b/0 {rule}"):
    ol.contrib.drop_leaves(optax.sgd(1.0), {"a": 1.0, "b": [bad]})
  for ok in (1.0, 1, 1e-6, None):  # None: every leaf every step
    ol.scion(0.1, keep_prob=ok)
    ol.Group(norms.Spectral(), keep_prob=ok)


def test_public_transforms_check_their_numbers_naming_the_leaf():
  with pytest.raises(ValueError, match=r"^momentum: beta must be in \[0, 1\)"):
    ol.momentum(float("inf"))
  with pytest.raises(ValueError, match="^scale_by_radius: radius at fc/kernel must be a finite"):
    ol.scale_by_radius({"fc": {"kernel": -1.0, "bias": None}})
  with pytest.raises(TypeError, match="^scale_by_radius: radius must be a number"):
    ol.scale_by_radius("2")
  with pytest.raises(ValueError, match="^add_constrained_decay: weight_decay must be a finite"):
    ol.add_constrained_decay(float("inf"))
  with pytest.raises(ValueError, match="^scale_by_norm: dual_clip at w must be a finite"):
    ol.scale_by_norm({"w": norms.Spectral()}, dual_clip={"w": float("nan")})
  with pytest.raises(ValueError, match="^adaptive_batch: eta must be a finite number > 0"):
    ol.contrib.adaptive_batch(optax.sgd(1.0), eta=float("inf"))
  with pytest.raises(ValueError, match="^Group: radius must be a finite number >= 0"):
    ol.Group(norms.Spectral(), radius=float("inf"))


# -- injected hyperparameters -----------------------------------------------------------


def test_injected_concrete_nan_is_refused_at_init_naming_it():
  """inject_hyperparams builds the optimizer from the values at init: a concrete NaN is named."""
  tx = optax.inject_hyperparams(ol.scion)(learning_rate=jnp.nan)  # nothing runs yet
  with pytest.raises(ValueError, match="^scion: learning_rate must be a finite number >= 0"):
    tx.init(_params())


def test_traced_non_finite_value_propagates_and_a_guard_after_the_optimizer_skips_it():
  """Under jit an injected value is traced and cannot be checked. apply_if_finite checks what
  it receives: wrapped around the optimizer it sees the (finite) gradient and lets the
  non-finite update through; chained after it, it sees the update and zeroes the step."""
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  inject = lambda: optax.inject_hyperparams(ol.scion)(learning_rate=0.1)
  finite = lambda u: all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))

  wrapped = optax.apply_if_finite(inject(), max_consecutive_errors=3)
  state = wrapped.init(params)
  state.inner_state.hyperparams["learning_rate"] = jnp.float32(jnp.inf)
  u, new = jax.jit(wrapped.update)(grads, state, params)
  assert not finite(u) and int(new.notfinite_count) == 0  # the gradient was finite

  guarded = optax.chain(inject(), optax.apply_if_finite(optax.identity(), max_consecutive_errors=3))
  state = guarded.init(params)
  state[0].hyperparams["learning_rate"] = jnp.float32(jnp.nan)
  u, new = jax.jit(guarded.update)(grads, state, params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))  # the step is skipped
  assert int(new[1].notfinite_count) == 1
  state[0].hyperparams["learning_rate"] = jnp.float32(0.1)
  u, _ = jax.jit(guarded.update)(grads, state, params)
  assert finite(u) and any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u))


# -- trees that do not match the parameters, at update ----------------------------------


@pytest.mark.parametrize("make", [ol.scion, ol.muon], ids=lambda f: f.__name__)
def test_wrong_shaped_gradient_leaf_is_named_with_both_shapes(make):
  params = _params()
  tx = make(0.1)
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  g["blocks"][0]["w"] = jnp.ones((3, 8))
  with pytest.raises(ValueError, match=r"^blocks/0/w: gradient shape \(3, 8\) does not match the"
                                       r" parameter's \(8, 3\)"):
    jax.jit(tx.update)(g, state, params)


def test_missing_and_extra_gradient_leaves_are_named():
  params = _params()
  tx = ol.scion(0.1)
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  missing = {"blocks": g["blocks"]}
  with pytest.raises(ValueError, match="^head/kernel: the gradient has no leaf for this parameter"):
    tx.update(missing, state, params)
  extra = {**g, "bias": jnp.ones(3)}
  with pytest.raises(ValueError, match="^bias: the gradient has a leaf that the parameters"):
    tx.update(extra, state, params)


def test_wrong_shaped_params_passed_to_update_are_named():
  params = _params()
  tx = ol.unconstrained_scion(0.1, weight_decay=0.1)
  state = tx.init(params)
  other = {**params, "head": {"kernel": jnp.ones((4, 3))}}
  with pytest.raises(ValueError, match=r"^head/kernel: parameter passed to update shape \(4, 3\)"):
    tx.update(jax.tree.map(jnp.ones_like, params), state, other)


# -- describe with Flax NNX -------------------------------------------------------------


def _nnx_model():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.drop = nnx.Dropout(0.1, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(self.drop(self.bn(self.hidden(x))))

  return nnx, Net(nnx.Rngs(0))


def test_describe_reads_an_nnx_optimizer():
  nnx, model = _nnx_model()
  tx = ol.muon(0.02)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rows = list(ol.describe(optimizer))
  assert rows == list(ol.describe(tx, nnx.state(model, nnx.Param)))
  assert rows == list(ol.describe(optimizer, nnx.state(model, nnx.Param)))
  by_path = {r["path"]: r for r in rows}
  assert by_path["hidden/kernel"]["norm"] == "Spectral" and by_path["hidden/kernel"]["state"] == (
      "float32")
  assert by_path["bn/scale"]["norm"] == "AdamW" and "bn/mean" not in by_path
  # The update's tree check passes nnx's plain arrays against the Variables init saw.
  x = jnp.ones((2, 4))

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

  step(model, optimizer)
  assert int(optimizer.step[...]) == 1


def test_describe_says_what_to_pass_for_a_whole_nnx_model():
  nnx, model = _nnx_model()
  with pytest.raises(TypeError, match=r"not the model Net: pass nnx.state\(model, nnx.Param\)"):
    ol.describe(ol.scion(0.1), model)
  with pytest.raises(ValueError, match=r"^bn/mean: a BatchStat, not a parameter \(and 3 more\)\..*"
                                       r"nnx.state\(model, nnx.Param\)"):
    ol.describe(ol.muon(0.02), nnx.state(model))


def test_describe_without_params_needs_a_state_to_read():
  with pytest.raises(TypeError, match=r"ol.describe\(tx, params\)"):
    ol.describe(ol.scion(0.1))
