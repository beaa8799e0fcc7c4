"""Optimizers against independent references: NumPy re-derivations and optax.contrib.muon."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms

SVD = ol.Polar(method="svd")


def _mlp_params(key):
  k = jax.random.split(key, 4)
  return {
      "embed": {"embedding": jax.random.normal(k[0], (16, 8)) * 0.3},
      "fc": {"kernel": jax.random.normal(k[1], (8, 32)) * 0.2, "bias": jnp.zeros(32) + 0.05},
      "head": {"kernel": jax.random.normal(k[2], (32, 16)) * 0.1},
  }


def _rules():
  return ol.Rules(
      (
          (r"embed/embedding$", ol.Group(norms.ColNorm(), radius=2.0)),
          (r"fc/kernel$", ol.Group(norms.Spectral(polar=SVD), radius=3.0, lr_mult=0.5)),
          (r"bias$", ol.Group(norms.BiasRMS(), radius=1.0)),
          (r"head/kernel$", ol.Group(norms.RowNorm(), radius=10.0)),
      )
  )


# ---- NumPy re-derivation of the template and the LMOs ([S] Table 2, Flax layout) --------


def np_lmo(path, g):
  g = np.asarray(g, np.float64)
  if path.endswith("embed/embedding"):  # ColNorm: rows -> sqrt(d_out) unit rows
    return np.sqrt(g.shape[1]) * g / np.linalg.norm(g, axis=1, keepdims=True)
  if path.endswith("fc/kernel"):  # Spectral: sqrt(d_out/d_in) U V^T
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    return np.sqrt(g.shape[1] / g.shape[0]) * u @ vt
  if path.endswith("bias"):  # BiasRMS
    return g / np.sqrt(np.mean(g**2))
  if path.endswith("head/kernel"):  # RowNorm: columns -> 1/sqrt(d_in) unit columns
    return g / (np.sqrt(g.shape[0]) * np.linalg.norm(g, axis=0, keepdims=True))
  raise AssertionError(path)


RADIUS = {"embed/embedding": 2.0, "fc/kernel": 3.0, "fc/bias": 1.0, "head/kernel": 10.0}
LR_MULT = {"embed/embedding": 1.0, "fc/kernel": 0.5, "fc/bias": 1.0, "head/kernel": 1.0}


def _flat(tree):
  return {
      "/".join(str(k.key) for k in p): np.asarray(x, np.float64)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _decayed_rules():  # the same groups, one with its own decay
  return ol.Rules(tuple(
      (p, ol.Group(g.norm, g.radius, g.lr_mult, weight_decay=0.0)) if p == r"fc/kernel$" else (p, g)
      for p, g in _rules().rules
  ))


# (optimizer, its kwargs, each leaf's decay mu in W <- W - gamma (rho lmo(d) + mu W))
STEP_CASES = {
    "scion": (ol.scion, {"rules": _rules()}, lambda k: 1.0),
    "scion_group_decay": (ol.scion, {"rules": _decayed_rules()},
                          lambda k: 0.0 if k == "fc/kernel" else 1.0),
    "unconstrained": (ol.unconstrained_scion, {"rules": _rules()}, lambda k: 0.0),
    "unconstrained_decay": (ol.unconstrained_scion, {"rules": _rules(), "weight_decay": 0.3},
                            lambda k: 0.3),
}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_two_steps_match_numpy(case):
  params = _mlp_params(jax.random.key(0))
  g1 = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  g2 = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape) + 0.5, params)
  lr, beta = 0.05, 0.9
  factory, kwargs, decay = STEP_CASES[case]
  tx = factory(lr, beta=beta, **kwargs)
  state = tx.init(params)
  step = jax.jit(tx.update)
  p = params
  for g in (g1, g2):
    u, state = step(g, state, p)
    p = optax.apply_updates(p, u)

  w, d = _flat(params), {k: 0.0 for k in _flat(params)}
  for g in (_flat(g1), _flat(g2)):
    for k in w:
      d[k] = beta * d[k] + (1 - beta) * g[k]
      gamma = lr * LR_MULT[k]
      w[k] = (1 - gamma * decay(k)) * w[k] - gamma * RADIUS[k] * np_lmo(k, d[k])
  got = _flat(p)
  for k in w:
    np.testing.assert_allclose(got[k], w[k], atol=1e-5, rtol=1e-5, err_msg=k)


def _gpt_tree(key, d=32, vocab=64, layers=2):
  ks = iter(jax.random.split(key, 64))
  blocks = {
      str(i): {
          "attn": {"qkv": {"kernel": jax.random.normal(next(ks), (d, 3 * d))},
                   "out": {"kernel": jax.random.normal(next(ks), (d, d))}},
          "mlp": {"fc_in": {"kernel": jax.random.normal(next(ks), (d, 4 * d))},
                  "fc_out": {"kernel": jax.random.normal(next(ks), (4 * d, d))}},
          "norm1": {"scale": jnp.ones(d)},
      }
      for i in range(layers)
  }
  return {
      "embed": {"embedding": jax.random.normal(next(ks), (vocab, d))},
      "blocks": blocks,
      "final_norm": {"scale": jnp.ones(d)},
      "head": {"kernel": jax.random.normal(next(ks), (d, vocab))},
  }


def test_muon_matches_optax_contrib_muon():
  """Configured like the peer: jordan x5, Nesterov, bias correction, factor max(1,
  sqrt(out/in)), NAdam on the rest."""
  params = _gpt_tree(jax.random.key(0))
  peer = optax.contrib.muon(0.02, weight_decay=0.01)
  spectral = ol.Group(
      norms.Spectral(input_layer=True, polar=ol.Polar("newton_schulz", "jordan", steps=5))
  )
  rules = ol.Rules((), fallback=lambda p, x: spectral if x.ndim == 2 else ol.Group(None))
  ours = ol.muon(0.02, rules=rules, bias_correction=True, weight_decay=0.01, adam_nesterov=True)
  s_peer, s_ours = peer.init(params), ours.init(params)
  up_peer, up_ours = jax.jit(peer.update), jax.jit(ours.update)
  for i in range(3):
    g = jax.tree.map(
        lambda p, i=i: jax.random.normal(jax.random.key(10 + i), p.shape) * 0.01, params
    )
    u_peer, s_peer = up_peer(g, s_peer, params)
    u_ours, s_ours = up_ours(g, s_ours, params)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(u_ours)[0], jax.tree.leaves(u_peer), strict=True
    ):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=str(path))


def test_weight_decay_has_documented_effect():
  """A large decay: the update differs from the undecayed one by exactly -lr * mu * W."""
  params = _mlp_params(jax.random.key(3))
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(4), p.shape), params)
  plain = ol.unconstrained_scion(0.1, rules=_rules())
  decayed = ol.unconstrained_scion(0.1, rules=_rules(), weight_decay=0.5)
  u0, _ = plain.update(g, plain.init(params), params)
  u1, _ = decayed.update(g, decayed.init(params), params)
  for k in params:
    for name in params[k]:
      mult = LR_MULT[f"{k}/{name}"]
      np.testing.assert_allclose(
          u1[k][name] - u0[k][name], -0.1 * mult * 0.5 * params[k][name], atol=1e-6
      )
  # Zero gradient: decay alone shrinks W by (1 - lr mu) exactly.
  zero = jax.tree.map(jnp.zeros_like, params)
  u, _ = decayed.update(zero, decayed.init(params), params)
  new = optax.apply_updates(params, u)
  np.testing.assert_allclose(new["head"]["kernel"], 0.95 * params["head"]["kernel"], rtol=1e-6)


def test_three_decay_spellings_agree():
  params = _mlp_params(jax.random.key(5))
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(6), p.shape), params)
  gamma, mu, rho = 0.02, 0.25, 3.0

  def rules(radius):
    return ol.Rules((), fallback=lambda p, x: ol.Group(
        norms.BiasRMS() if x.ndim == 1 else norms.Spectral(polar=SVD), radius=radius))

  def step(tx):
    u, _ = tx.update(g, tx.init(params), params)
    return optax.apply_updates(params, u)

  a = step(ol.unconstrained_scion(gamma, rules=rules(rho), weight_decay=mu))  # 1. uSCG + decay
  b = step(ol.scion(gamma * mu, rules=rules(rho / mu)))  # 2. SCG, radius rho/mu
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)
  c = step(ol.unconstrained_scion(gamma, rules=rules(1.0), weight_decay=mu))  # 3. Disco form
  d = step(ol.scion(gamma * mu, rules=rules(1.0 / mu)))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), c, d)


def test_constrained_scion_stays_in_ball():
  """200 steps with wild gradients: every leaf ends inside its ball, norm <= rho (1 + 1e-5)."""
  params = _mlp_params(jax.random.key(7))
  tx = ol.scion(0.05, rules=_rules(), beta=0.5)
  state = tx.init(params)

  @jax.jit
  def run(params, state):
    def body(carry, i):
      p, s = carry
      scale = 10.0 ** jax.random.uniform(jax.random.key(i), (), minval=-8, maxval=8)
      g = jax.tree.map(lambda x: scale * jax.random.normal(jax.random.fold_in(
          jax.random.key(i), x.size), x.shape), p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (params, state), jnp.arange(200))[0][0]

  out = run(params, state)
  groups = _rules().resolve(out)
  for (path, w), grp in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree.leaves(
      groups, is_leaf=lambda x: isinstance(x, ol.Group)), strict=True):
    assert float(grp.norm.norm(w)) <= grp.radius * (1 + 1e-5), path


def test_clipped_step_is_min_of_radius_and_dual_norm():
  w = {"w": jnp.zeros((8, 16))}
  rules = ol.Rules((), fallback=lambda p, x: ol.Group(norms.Spectral(polar=SVD), radius=2.0))
  tx = ol.unconstrained_scion(1.0, rules=rules, beta=0.0, clip_to_dual_norm=True)
  g = jax.random.normal(jax.random.key(8), (8, 16))
  dual = float(norms.Spectral(polar=SVD).dual_norm(g))
  for scale in (1e-3 / dual, 100.0 / dual):  # dual norm far below / far above rho = 2
    u, _ = tx.update({"w": scale * g}, tx.init(w), w)
    step = float(norms.Spectral(polar=SVD).norm(u["w"]))
    np.testing.assert_allclose(step, min(2.0, scale * dual), rtol=1e-4)


def _regression():
  x = jax.random.normal(jax.random.key(0), (256, 16))
  w_true = jax.random.normal(jax.random.key(1), (16, 8)) / 4
  y = x @ w_true + 0.3

  def loss(p):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  return loss, {"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}


ALIASES = {
    "scion": (ol.scion, {"rules": ol.default_rules(hidden_radius=4.0), "beta": 0.5}),
    "unconstrained_scion": (ol.unconstrained_scion, {"beta": 0.5}),
    "muon": (ol.muon, {"adam_learning_rate": 0.05}),
    "sign_descent": (ol.sign_descent, {"beta": 0.5}),
    "normalized_sgd": (ol.normalized_sgd, {"beta": 0.5}),
}


@pytest.mark.filterwarnings("ignore:default_rules found no output head")  # w is the head
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_solves_toy_regression(name):
  loss, params = _regression()
  sched = optax.linear_schedule(0.1, 0.0, 400) if name != "scion" else optax.linear_schedule(
      0.2, 0.0, 400)
  factory, kwargs = ALIASES[name]
  tx = factory(sched, **kwargs)
  state = tx.init(params)

  @jax.jit
  def run(params, state):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (params, state), None, length=400)[0][0]

  start = float(loss(params))
  end = float(loss(run(params, state)))
  assert end < 0.01 * start, (name, start, end)


def test_describe_lists_every_leaf():
  params = _mlp_params(jax.random.key(0))
  rows = ol.describe(ol.scion(0.1, rules=_rules()), params)
  got = {r["path"]: r for r in rows}
  assert set(got) == {"embed/embedding", "fc/kernel", "fc/bias", "head/kernel"}
  assert got["fc/kernel"]["norm"] == "Spectral" and got["fc/kernel"]["view"] == "8x32"
  assert got["fc/kernel"]["radius"] == 3.0 and got["fc/kernel"]["lr_mult"] == 0.5
  assert got["head/kernel"]["norm"] == "RowNorm" and got["head/kernel"]["weight_decay"] == 1.0
  assert got["embed/embedding"]["state"] == "float32"
  assert [r["path"] for r in rows] == [
      "/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  ]  # in the parameters' flattening order
  table = str(rows)
  assert "fc/kernel" in table and "Spectral" in table
  muon_rows = {r["path"]: r for r in ol.describe(ol.muon(0.1), params)}
  assert muon_rows["embed/embedding"]["norm"] == "AdamW"
  assert muon_rows["fc/kernel"]["norm"] == "Spectral"
  assert muon_rows["fc/kernel"]["weight_decay"] == 0.0
  # The decay column reads the optimizer's own default, and a group's override.
  u = {r["path"]: r for r in ol.describe(ol.unconstrained_scion(0.1, rules=_decayed_rules(),
                                                                  weight_decay=0.3), params)}
  assert u["head/kernel"]["weight_decay"] == 0.3 and u["fc/kernel"]["weight_decay"] == 0.0
  # bf16 parameters: the state column shows the float32 momentum; mu_dtype overrides it.
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert {r["state"] for r in ol.describe(ol.scion(0.1, rules=_rules()), p16)} == {"float32"}
  assert {r["state"] for r in ol.describe(ol.scion(0.1, rules=_rules(), mu_dtype=jnp.bfloat16),
                                          params)} == {"bfloat16"}


def test_strict_rules_name_the_unmatched_leaf():
  params = _mlp_params(jax.random.key(0))
  rules = [(r"kernel$", ol.Group(norms.Spectral()))]
  tx = ol.scion(0.1, rules=rules)
  with pytest.raises(ValueError, match="embed/embedding: no rule matches"):
    tx.init(params)  # at init, before any step


def test_ndim3_without_spec_is_an_error_naming_the_leaf():
  params = {"blocks": {"kernel": jnp.zeros((2, 8, 8))}}
  tx = ol.scion(0.1)
  with pytest.raises(ValueError, match="blocks/kernel: ndim 3 needs a MatrixSpec"):
    tx.init(params)
  spec = ol.MatrixSpec(fan_in=(1,), fan_out=(2,))
  tx = ol.scion(0.1, rules=[("kernel", ol.Group(norms.Spectral(polar=SVD), spec=spec))])
  g = {"blocks": {"kernel": jax.random.normal(jax.random.key(0), (2, 8, 8))}}
  u, _ = tx.update(g, tx.init(params), params)
  for i in range(2):  # per stacked matrix: each one's LMO, never across the stack
    expected = -0.1 * np_lmo("fc/kernel", g["blocks"]["kernel"][i])
    np.testing.assert_allclose(u["blocks"]["kernel"][i], expected, atol=1e-5)


def test_unconstrained_scion_defaults_take_scions_step():
  """uSCG's default radii (3, 10) at 2**-7 step a hidden matrix by Scion's 48 x 2**-11."""
  params = {"embed": {"embedding": jnp.ones((32, 16))}, "fc": {"kernel": jnp.eye(16)},
            "head": {"kernel": jnp.ones((16, 32)) / 32}}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  tx = ol.unconstrained_scion(2**-7, beta=0.0, polar=ol.Polar(method="svd"))
  u, _ = tx.update(grads, tx.init(params), params)
  step = float(ol.norms.Spectral().norm(u["fc"]["kernel"]))
  assert step == pytest.approx(48 * 2**-11, rel=1e-3) == pytest.approx(3 * 2**-7, rel=1e-3)
  assert float(ol.norms.RowNorm().norm(u["head"]["kernel"])) == pytest.approx(10 * 2**-7, rel=1e-3)
  rows = {r["path"]: r["radius"] for r in ol.describe(tx, params)}
  assert rows == {"embed/embedding": 1.0, "fc/kernel": 3.0, "head/kernel": 10.0}
