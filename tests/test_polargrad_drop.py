"""Dual-norm scaled steps (PolarGrad) and randomized layer updates (Drop-Muon)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms

SVD = ol.Polar(method="svd")


def _np_polar(g):
  u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt, s.sum()


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (12, 4)])
def test_polargrad_step_is_nuclear_norm_times_polar(shape):
  g = jax.random.normal(jax.random.key(0), shape)
  tx = ol.contrib.polargrad(0.1, beta=0.0, rules=[(".*", ol.Group(norms.Spectral()))], polar=SVD)
  u, _ = tx.update(g, tx.init(g))
  polar, nuclear = _np_polar(g)
  f2 = shape[1] / shape[0]  # the squared dimension factor of the scaled spectral norm
  np.testing.assert_allclose(np.asarray(u), -0.1 * f2 * nuclear * polar, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("norm", [norms.ColNorm(), norms.RowNorm(), norms.Sign(),
                                  norms.BiasRMS(), norms.Frobenius(),
                                  norms.Spectral(polar=SVD)])
def test_dual_scaled_direction_is_dual_norm_times_lmo(norm):
  g = jax.random.normal(jax.random.key(1), (7, 5)) + 0.3
  u, _ = ol.scale_by_norm(norm, dual_scale=True).update(g, None)
  want = norm.dual_norm(g) * norm.lmo(g)  # dual norm computed separately (SVD for spectral)
  np.testing.assert_allclose(np.asarray(u), np.asarray(want), rtol=2e-5, atol=1e-6)


def test_polargrad_is_homogeneous_of_degree_one():
  params = {"w": jnp.ones((8, 4)) * 0.1, "b": jnp.zeros(4), "head": {"kernel": jnp.ones((4, 3))}}
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
  tx = ol.contrib.polargrad(0.05, beta=0.0, polar=SVD)
  u1, _ = tx.update(g, tx.init(params), params)
  u3, _ = tx.update(jax.tree.map(lambda x: 3.0 * x, g), tx.init(params), params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u3), strict=True):
    np.testing.assert_allclose(np.asarray(b), 3.0 * np.asarray(a), rtol=1e-4, atol=1e-6)


def test_polargrad_zero_gradient_gives_zero_step():
  params = {"w": jnp.eye(4), "b": jnp.ones(4)}
  tx = ol.contrib.polargrad(0.1)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


# ---- Drop-Muon ------------------------------------------------------------------------


def _tree():
  k = jax.random.split(jax.random.key(3), 5)
  return {"blocks": [{"kernel": jax.random.normal(k[i], (8, 8)) * 0.2} for i in range(4)],
          "head": {"kernel": jax.random.normal(k[4], (8, 3)) * 0.1}, "bias": jnp.ones(8) * 0.1}


def _moved(u):
  return [bool(jnp.any(b["kernel"] != 0)) for b in u["blocks"]]


def test_each_spectral_leaf_is_kept_with_its_probability():
  params = _tree()
  tx = ol.scion(0.1, keep_prob=0.3, seed=7)
  state, step = tx.init(params), jax.jit(tx.update)
  kept = []
  for _ in range(300):
    u, state = step(params, state, params)
    kept.append(_moved(u))
    assert bool(jnp.any(u["head"]["kernel"] != 0)) and bool(jnp.any(u["bias"] != 0))
  rate = np.mean(kept)
  assert abs(rate - 0.3) < 0.05, rate  # 1200 draws: 4 standard deviations is 0.053
  assert len({tuple(k) for k in kept}) > 8  # leaves are drawn independently


def test_draws_are_reproducible_and_resume_where_they_stopped():
  params = _tree()
  tx = ol.unconstrained_scion(0.1, keep_prob=0.5, seed=1)
  step = jax.jit(tx.update)

  def run(state, n):
    out = []
    for _ in range(n):
      u, state = step(params, state, params)
      out.append(_moved(u))
    return out, state

  full, _ = run(tx.init(params), 10)
  head, mid = run(tx.init(params), 4)
  restored = jax.tree.map(lambda x: jnp.array(np.asarray(x)), mid)  # as from a checkpoint
  tail, _ = run(restored, 6)
  assert full == head + tail
  other, _ = run(ol.unconstrained_scion(0.1, keep_prob=0.5, seed=2).init(params), 10)
  assert other != full


def test_dropped_leaf_stays_put_and_its_momentum_keeps_accumulating():
  params = {"w": jax.random.normal(jax.random.key(4), (6, 6)) * 0.1}
  grads = [jax.random.normal(jax.random.key(10 + i), (6, 6)) for i in range(3)]
  rules = [("w", ol.Group(ol.norms.Spectral(), radius=1.0))]
  tx = optax.inject_hyperparams(ol.scion)(learning_rate=0.1, keep_prob=0.5, polar=SVD,
                                          rules=rules)
  state = tx.init(params)
  # Injected and traced under jit, 0 (never kept) is not checked: it drops every step.
  update = jax.jit(tx.update)
  state.hyperparams["keep_prob"] = jnp.float32(0.0)
  for g in grads[:2]:  # dropped: no step, no decay
    u, state = update({"w": g}, state, params)
    assert bool(jnp.all(u["w"] == 0))
  state.hyperparams["keep_prob"] = jnp.float32(1.0)
  u, state = update({"w": grads[2]}, state, params)
  d = np.zeros((6, 6))
  for g in grads:
    d = 0.9 * d + 0.1 * np.asarray(g, np.float64)
  want = -0.1 * (_np_polar(d)[0] + np.asarray(params["w"]))  # SCG: lr (rho lmo(d) + W)
  np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-4, atol=1e-6)


def _sub_jaxprs(params):
  for v in params.values():
    for x in v if isinstance(v, (tuple, list)) else (v,):
      if hasattr(x, "eqns"):
        yield x
      elif hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):  # a ClosedJaxpr
        yield x.jaxpr


def _dots_outside_cond(jaxpr, inside=False):
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and not inside:
      count += 1
    for sub in _sub_jaxprs(eqn.params):
      count += _dots_outside_cond(sub, inside or eqn.primitive.name == "cond")
  return count


def test_a_dropped_leaf_does_not_run_newton_schulz():
  params = {"w": jnp.ones((16, 16)) * 0.1, "v": jnp.ones((16, 16)) * 0.2}
  sampled = ol.unconstrained_scion(0.1, keep_prob=0.5, rules=[(".*", ol.Group(norms.Spectral()))])
  full = ol.unconstrained_scion(0.1, rules=[(".*", ol.Group(norms.Spectral()))])
  update = lambda tx: jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
  assert _dots_outside_cond(update(full)) > 0  # the check can see Newton-Schulz
  assert _dots_outside_cond(update(sampled)) == 0  # every polar factor sits under a cond


def test_group_keep_prob_overrides_and_describe_shows_it():
  params = _tree()
  rules = ol.Rules([(r"blocks/0/", ol.Group(norms.Spectral(), keep_prob=1.0)),
                    (r"blocks/1/", ol.Group(norms.Spectral(), keep_prob=1e-9))],
                   fallback=ol.default_rules().fallback)
  tx = ol.muon(0.02, keep_prob=0.5, rules=rules)
  state = tx.init(params)
  for _ in range(5):
    u, state = jax.jit(tx.update)(params, state, params)
    moved = _moved(u)
    assert moved[0] and not moved[1]
  rows = {r["path"]: r["keep_prob"] for r in ol.describe(tx, params)}
  assert rows["blocks/0/kernel"] == 1.0 and rows["blocks/1/kernel"] == 1e-9
  assert rows["blocks/2/kernel"] == 0.5


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_keep_prob_out_of_range_is_refused(bad):
  with pytest.raises(ValueError, match="scion: keep_prob"):
    ol.scion(0.1, keep_prob=bad)
