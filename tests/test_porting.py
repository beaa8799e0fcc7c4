"""The porting tables of docs/porting.md: each ported config against its peer.

The peers are re-implemented here in NumPy (float64) from their published
algorithms, in their own layout (PyTorch stores a linear weight as
``(d_out, d_in)``), and run for a few steps next to the ported ``optax_lmo``
config on the Flax-layout (transposed) weights; the trajectories must agree
after transposing back. ``optax.contrib.muon`` is run itself.

- LIONS-EPFL/scion ``scion.py``: ``Scion`` and ``ScionLight`` with the norms
  ``ColNorm``, ``RowNorm``, ``Sign``, ``Spectral``, ``BiasRMS``.
- KellerJordan/Muon ``muon.py``: ``SingleDeviceMuonWithAuxAdam``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lmo as ol
from optax_lmo import norms

SVD = ol.Polar(method="svd")
JORDAN = ol.Polar("newton_schulz", "jordan", steps=5)
JORDAN_ABC = (3.4445, -4.7750, 2.0315)  # KellerJordan/Muon's quintic, the Scion reference's too
EPS = 1e-8  # the Scion reference adds it to every RMS denominator


def _close(ours, ref, what):
  ref = np.asarray(ref, np.float64)
  scale = max(float(np.max(np.abs(ref))), 1e-12)
  np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=1e-4, atol=1e-5 * scale,
                             err_msg=what)


# ---- the Scion reference, PyTorch layout (d_out, d_in) ---------------------------------


def ref_polar_svd(g):
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  return u @ vt


def ref_newton_schulz(g, steps=5):
  """The reference quintic Newton–Schulz (float64 here; the peers run it in bfloat16)."""
  a, b, c = JORDAN_ABC
  tall = g.shape[0] > g.shape[1]
  x = g.T if tall else g
  x = x / (np.linalg.norm(x) + 1e-7)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def ref_scion_lmo(name, g, kwargs, polar):
  """``norm_dict[name](**kwargs).lmo(g)`` of the Scion reference."""
  if name == "ColNorm":  # defaults normalized=False, transpose=False
    g = g.T if kwargs.get("transpose", False) else g
    rms = np.sqrt(np.sum(g**2, axis=0, keepdims=True)) / np.sqrt(g.shape[0])
    if kwargs.get("normalized", False):
      rms = rms * g.shape[1]
    out = g / (rms + EPS)
    return out.T if kwargs.get("transpose", False) else out
  if name == "RowNorm":  # defaults normalized=True, transpose=False
    rms = np.sqrt(np.sum(g**2, axis=-1, keepdims=True))
    if kwargs.get("normalized", True):
      rms = rms * np.sqrt(g.shape[-1])
    return g / (rms + EPS)
  if name == "Sign":  # default normalized=True
    return np.sign(g) / g.shape[1] if kwargs.get("normalized", True) else np.sign(g)
  if name == "Spectral":  # defaults max=False, normalized=True
    d_out, d_in = g.shape
    scale = np.sqrt(d_out / d_in) if kwargs.get("normalized", True) else np.sqrt(d_out)
    if kwargs.get("max", False):
      scale = max(1.0, scale)
    return scale * polar(g)
  if name == "BiasRMS":
    return g / (np.sqrt(np.mean(g**2)) + EPS)
  raise AssertionError(name)


def ref_scion(params, grad_steps, groups, *, lr, momentum, unconstrained, polar=ref_polar_svd):
  """``Scion(groups, lr=lr, momentum=momentum, unconstrained=...)``: one ``step()`` per grads."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for grads in grad_steps:
    for k, (name, kwargs, scale) in groups.items():
      g = np.asarray(grads[k], np.float64)
      if momentum != 1:
        buf[k] = (1 - momentum) * buf[k] + momentum * g
        g = buf[k]
      update = scale * ref_scion_lmo(name, g, kwargs, polar)
      if not unconstrained:
        p[k] = (1 - lr) * p[k]
      p[k] = p[k] - lr * update
    out.append({k: v.copy() for k, v in p.items()})
  return out


def ref_scion_light(params, grad_steps, groups, *, lr, momentum, polar=ref_polar_svd):
  """``ScionLight``: the gradient buffer itself decays by ``1 - momentum`` and accumulates."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  acc = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for grads in grad_steps:
    for k, (name, kwargs, scale) in groups.items():
      acc[k] = acc[k] + np.asarray(grads[k], np.float64)  # backward() adds into p.grad
      update = scale * ref_scion_lmo(name, acc[k], kwargs, polar)
      p[k] = (1 - lr) * p[k] - lr * update
      acc[k] = (1 - momentum) * acc[k]
    out.append({k: v.copy() for k, v in p.items()})
  return out


# ---- layouts ---------------------------------------------------------------------------
# "linear": a torch.nn.Linear weight (d_out, d_in); the Flax Dense kernel is its transpose.
# "embedding": a torch.nn.Embedding table (vocab, d) is already the Flax Embed layout.
# "vector": biases and gains, the same in both.


def to_flax(x, layout):
  return np.asarray(x).T if layout == "linear" else np.asarray(x)


to_torch = to_flax  # a transpose is its own inverse


# One row per line of the norm table in docs/porting.md:
# (id, reference norm, its kwargs, torch shape, reference scale, our Group for that shape, layout)
NORM_ROWS = [
    ("ColNorm", "ColNorm", {}, (24, 6), 2.0,
     lambda s: ol.Group(norms.ColNorm(), radius=2.0), "linear"),
    ("ColNorm-normalized", "ColNorm", {"normalized": True}, (24, 16), 2.0,
     lambda s: ol.Group(norms.ColNorm(), radius=2.0 / s[1]), "linear"),
    ("ColNorm-transpose-embedding", "ColNorm", {"transpose": True}, (50, 16), 1.0,
     lambda s: ol.Group(norms.ColNorm(), radius=1.0), "embedding"),
    ("RowNorm", "RowNorm", {}, (10, 32), 10.0,
     lambda s: ol.Group(norms.RowNorm(), radius=10.0), "linear"),
    ("RowNorm-unnormalized", "RowNorm", {"normalized": False}, (10, 32), 4.0,
     lambda s: ol.Group(norms.RowNorm(scaled=False), radius=4.0), "linear"),
    ("Sign", "Sign", {}, (10, 32), 3.0,
     lambda s: ol.Group(norms.Sign(), radius=3.0), "linear"),
    ("Sign-unnormalized", "Sign", {"normalized": False}, (16, 12), 0.5,
     lambda s: ol.Group(norms.Sign(scaled=False), radius=0.5), "linear"),
    ("Spectral-tall", "Spectral", {}, (48, 32), 3.0,
     lambda s: ol.Group(norms.Spectral(polar=SVD), radius=3.0), "linear"),
    ("Spectral-wide", "Spectral", {}, (16, 40), 3.0,
     lambda s: ol.Group(norms.Spectral(polar=SVD), radius=3.0), "linear"),
    ("Spectral-max", "Spectral", {"max": True}, (48, 12), 1.0,
     lambda s: ol.Group(norms.Spectral(input_layer=True, polar=SVD), radius=1.0), "linear"),
    ("Spectral-max-wide", "Spectral", {"max": True}, (12, 48), 1.0,
     lambda s: ol.Group(norms.Spectral(input_layer=True, polar=SVD), radius=1.0), "linear"),
    ("Spectral-unnormalized", "Spectral", {"normalized": False}, (24, 32), 0.5,
     lambda s: ol.Group(norms.Spectral(scaled=False, polar=SVD), radius=0.5 * np.sqrt(s[0])),
     "linear"),
    ("BiasRMS", "BiasRMS", {}, (32,), 1.0,
     lambda s: ol.Group(norms.BiasRMS(), radius=1.0), "vector"),
]


def _draws(shape, steps, seed):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=shape) * 0.1
  grads = [rng.normal(size=shape) * 10.0 ** rng.uniform(-2, 1) + 0.1 for _ in range(steps)]
  return w, grads


def _run(tx, params, grad_steps):
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for g in grad_steps:
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


@pytest.mark.parametrize("unconstrained", [False, True], ids=["scion", "unconstrained"])
@pytest.mark.parametrize("row", NORM_ROWS, ids=[r[0] for r in NORM_ROWS])
def test_scion_norm_row_matches_reference(row, unconstrained):
  """One norm of the table: the reference on torch-layout weights, ours on the Flax layout."""
  what, name, kwargs, shape, scale, group, layout = row
  w, grads = _draws(shape, 4, seed=len(what))
  lr, momentum = 0.05, 0.1
  ref = ref_scion({"w": w}, [{"w": g} for g in grads], {"w": (name, kwargs, scale)},
                  lr=lr, momentum=momentum, unconstrained=unconstrained)
  make = ol.unconstrained_scion if unconstrained else ol.scion
  tx = make(lr, rules=ol.Rules([(r"^w$", group(shape))]), beta=1 - momentum)
  ours = _run(tx, {"w": jnp.asarray(to_flax(w, layout), jnp.float32)},
              [{"w": jnp.asarray(to_flax(g, layout), jnp.float32)} for g in grads])
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    _close(to_torch(a["w"], layout), b["w"], f"{what}, step {t + 1}")


def ref_scion_init(name, kwargs, shape, scale, rng):
  """``norm_dict[name](**kwargs).init(w)`` then ``w *= scale``, as ``Scion.init()`` does."""
  if name == "ColNorm":
    t = kwargs.get("transpose", False)
    w = rng.normal(size=shape[::-1] if t else shape)
    w = w / np.linalg.norm(w, axis=0, keepdims=True) * np.sqrt(w.shape[0])
    if kwargs.get("normalized", False):
      w = w / w.shape[1]
    w = w.T if t else w
  elif name == "RowNorm":
    w = rng.normal(size=shape)
    w = w / np.linalg.norm(w, axis=-1, keepdims=True)
    if kwargs.get("normalized", True):
      w = w / np.sqrt(w.shape[-1])
  elif name == "Spectral":
    d_out, d_in = shape
    q, r = np.linalg.qr(rng.normal(size=(max(shape), min(shape))))
    w = (q * np.sign(np.diag(r))) if d_out >= d_in else (q * np.sign(np.diag(r))).T
    factor = np.sqrt(d_out / d_in) if kwargs.get("normalized", True) else np.sqrt(d_out)
    w = w * (max(1.0, factor) if kwargs.get("max", False) else factor)
  elif name == "Sign":
    w = rng.integers(0, 2, size=shape) * 2.0 - 1.0
    if kwargs.get("normalized", True):
      w = w / shape[1]
  elif name == "BiasRMS":
    w = np.zeros(shape)
  else:
    raise AssertionError(name)
  return w * scale


def _geometry(norm, w_flax):
  """What an init of this norm fixes: row norms, column norms, |entries|, singular values."""
  w = np.asarray(w_flax, np.float64)
  if isinstance(norm, norms.ColNorm):
    return np.linalg.norm(w, axis=1)
  if isinstance(norm, norms.RowNorm):
    return np.linalg.norm(w, axis=0)
  if isinstance(norm, norms.Sign):
    return np.abs(w).ravel()
  if isinstance(norm, norms.Spectral):
    return np.linalg.svd(w, compute_uv=False)
  return w.ravel()


@pytest.mark.parametrize("row", NORM_ROWS, ids=[r[0] for r in NORM_ROWS])
def test_init_params_has_the_reference_init_geometry(row):
  """``ol.init_params`` with the ported rules draws what ``Scion.init()`` draws (up to the
  random draw): the same row norms, column norms, entry sizes or singular values."""
  what, name, kwargs, shape, scale, group, layout = row
  ref = to_flax(ref_scion_init(name, kwargs, shape, scale, np.random.default_rng(0)), layout)
  g = group(shape)
  ours = ol.init_params(ol.Rules([(r"^w$", g)]), {"w": jnp.zeros(ref.shape)}, jax.random.key(0),
                        scale="radius")
  np.testing.assert_allclose(np.sort(_geometry(g.norm, ours["w"])),
                             np.sort(_geometry(g.norm, ref)), rtol=1e-5, atol=1e-6, err_msg=what)


# A small torch-layout GPT-like model in the reference's param-group style.
TORCH_SHAPES = {
    "wte": (64, 16),  # nn.Embedding(vocab=64, d=16)
    "h0.attn": (48, 16),  # nn.Linear(16, 48)
    "h0.mlp": (16, 48),  # nn.Linear(48, 16)
    "ln.weight": (16,),
    "lm_head": (64, 16),  # nn.Linear(16, 64)
}
LAYOUT = {"wte": "embedding", "h0.attn": "linear", "h0.mlp": "linear", "ln.weight": "vector",
          "lm_head": "linear"}


def _model_draws(steps, seed):
  rng = np.random.default_rng(seed)
  w = {k: rng.normal(size=s) * 0.1 for k, s in TORCH_SHAPES.items()}
  grads = [{k: rng.normal(size=s) for k, s in TORCH_SHAPES.items()} for _ in range(steps)]
  return w, grads


def _flax_tree(tree):
  return {k: jnp.asarray(to_flax(v, LAYOUT[k]), jnp.float32) for k, v in tree.items()}


def _ported_rules(hidden_norm):
  """The rules a reader writes from the reference's param groups (see docs/porting.md)."""
  return ol.Rules([
      (r"^wte$", ol.Group(norms.ColNorm(), radius=1.0)),
      (r"^h0\.", ol.Group(hidden_norm, radius=50.0)),
      (r"^ln\.weight$", ol.Group(norms.BiasRMS(), radius=1.0)),
      (r"^lm_head$", ol.Group(norms.Sign(), radius=3000.0)),
  ])


REF_GROUPS = {
    "wte": ("ColNorm", {"transpose": True}, 1.0),
    "h0.attn": ("Spectral", {}, 50.0),
    "h0.mlp": ("Spectral", {}, 50.0),
    "ln.weight": ("BiasRMS", {}, 1.0),
    "lm_head": ("Sign", {}, 3000.0),
}


def test_scion_model_config_with_newton_schulz_matches_reference():
  """The reference's nanoGPT-style groups (Spectral 50, Sign 3000, lr 2^-12, momentum 0.1),
  its Newton–Schulz (jordan x 5) on both sides."""
  w, grads = _model_draws(5, seed=0)
  lr = 2.0**-12
  ref = ref_scion(w, grads, REF_GROUPS, lr=lr, momentum=0.1, unconstrained=False,
                  polar=ref_newton_schulz)
  tx = ol.scion(lr, rules=_ported_rules(norms.Spectral()), beta=0.9, polar=JORDAN)
  ours = _run(tx, _flax_tree(w), [_flax_tree(g) for g in grads])
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    for k in TORCH_SHAPES:
      _close(to_torch(a[k], LAYOUT[k]), b[k], f"{k}, step {t + 1}")


def test_scion_light_is_scion_with_the_same_beta():
  """ScionLight keeps an unnormalized running sum; the LMO is scale invariant, so it
  takes the same steps as Scion with ``beta = 1 - momentum``."""
  w, grads = _model_draws(5, seed=1)
  ref = ref_scion_light(w, grads, REF_GROUPS, lr=0.01, momentum=0.1)
  tx = ol.scion(0.01, rules=_ported_rules(norms.Spectral(polar=SVD)), beta=0.9)
  ours = _run(tx, _flax_tree(w), [_flax_tree(g) for g in grads])
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    for k in TORCH_SHAPES:
      _close(to_torch(a[k], LAYOUT[k]), b[k], f"{k}, step {t + 1}")


def test_no_momentum_is_beta_zero():
  """The reference's default ``momentum=1.0`` (no averaging) is ``beta=0``: each step uses
  the fresh gradient."""
  w, grads = _model_draws(3, seed=2)
  ref = ref_scion(w, grads, REF_GROUPS, lr=0.01, momentum=1.0, unconstrained=True)
  tx = ol.unconstrained_scion(0.01, rules=_ported_rules(norms.Spectral(polar=SVD)), beta=0.0)
  ours = _run(tx, _flax_tree(w), [_flax_tree(g) for g in grads])
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    for k in TORCH_SHAPES:
      _close(to_torch(a[k], LAYOUT[k]), b[k], f"{k}, step {t + 1}")


# ---- KellerJordan/Muon -----------------------------------------------------------------


def ref_muon_with_aux_adam(params, grad_steps, use_muon, *, lr, momentum, weight_decay,
                           adam_lr, betas, eps, adam_weight_decay):
  """``SingleDeviceMuonWithAuxAdam`` with one Muon group and one Adam group, torch layout."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  m1 = {k: np.zeros_like(v) for k, v in p.items()}
  m2 = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for step, grads in enumerate(grad_steps, start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64)
      if use_muon[k]:
        buf[k] = buf[k] + (1 - momentum) * (g - buf[k])  # momentum.lerp_(grad, 1 - beta)
        nesterov = g + momentum * (buf[k] - g)  # grad.lerp_(momentum, beta)
        update = ref_newton_schulz(nesterov) * max(1.0, g.shape[-2] / g.shape[-1]) ** 0.5
        p[k] = p[k] * (1 - lr * weight_decay) - lr * update
      else:
        b1, b2 = betas
        m1[k] = m1[k] + (1 - b1) * (g - m1[k])
        m2[k] = m2[k] + (1 - b2) * (g * g - m2[k])
        update = (m1[k] / (1 - b1**step)) / (np.sqrt(m2[k] / (1 - b2**step)) + eps)
        p[k] = p[k] * (1 - adam_lr * adam_weight_decay) - adam_lr * update
    out.append({k: v.copy() for k, v in p.items()})
  return out


def test_muon_matches_keller_jordan_reference():
  """Hidden matrices (tall and wide in torch layout) on Muon, a gain and a bias on the
  auxiliary Adam, both with weight decay."""
  shapes = {"fc1": (64, 32), "fc2": (32, 64), "ln": (32,), "bias": (64,)}
  layout = {"fc1": "linear", "fc2": "linear", "ln": "vector", "bias": "vector"}
  rng = np.random.default_rng(3)
  w = {k: rng.normal(size=s) * 0.1 for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(5)]
  ref = ref_muon_with_aux_adam(
      w, grads, {k: len(s) == 2 for k, s in shapes.items()}, lr=0.02, momentum=0.95,
      weight_decay=0.1, adam_lr=3e-3, betas=(0.9, 0.95), eps=1e-10, adam_weight_decay=0.01)
  tx = ol.muon(
      0.02, beta=0.95, nesterov=True, weight_decay=0.1,
      adam_learning_rate=3e-3, adam_b1=0.9, adam_b2=0.95, adam_eps=1e-10,
      adam_weight_decay=0.01, rules=ol.muon_rules(input_layer=True), polar=JORDAN)
  flax = lambda tree: {k: jnp.asarray(to_flax(v, layout[k]), jnp.float32) for k, v in tree.items()}
  ours = _run(tx, flax(w), [flax(g) for g in grads])
  for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
    for k in shapes:
      _close(to_torch(a[k], layout[k]), b[k], f"{k}, step {t + 1}")


# ---- optax.contrib.muon ----------------------------------------------------------------


def _gpt_tree(key, d=32, vocab=64):
  ks = iter(jax.random.split(key, 8))
  return {
      "embed": {"embedding": jax.random.normal(next(ks), (vocab, d)) * 0.1},
      "block": {"qkv": {"kernel": jax.random.normal(next(ks), (d, 3 * d)) * 0.1},
                "mlp": {"kernel": jax.random.normal(next(ks), (4 * d, d)) * 0.1,
                        "bias": jnp.zeros(d)},
                "norm": {"scale": jnp.ones(d)}},
      "head": {"kernel": jax.random.normal(next(ks), (d, vocab)) * 0.1},
  }


def ported_optax_muon(learning_rate, *, weight_decay=0.0, adam_weight_decay=0.0):
  """``optax.contrib.muon(learning_rate, weight_decay=..., adam_weight_decay=...)``, ported."""
  spectral = ol.Group(norms.Spectral(input_layer=True))
  every_matrix = ol.Rules((), fallback=lambda path, x: spectral if x.ndim == 2 else ol.Group(None))
  return ol.muon(learning_rate, beta=0.95, nesterov=True, bias_correction=True,
                 weight_decay=weight_decay, adam_nesterov=True, adam_eps=1e-8,
                 adam_weight_decay=adam_weight_decay, rules=every_matrix, polar=JORDAN)


def test_muon_matches_optax_contrib_muon_trajectory():
  params = _gpt_tree(jax.random.key(0))
  grads = [
      jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(10 + i), p.shape), params)
      for i in range(6)
  ]
  peer = optax.contrib.muon(0.02, weight_decay=0.1, adam_weight_decay=0.01)
  ours = ported_optax_muon(0.02, weight_decay=0.1, adam_weight_decay=0.01)
  for t, (a, b) in enumerate(zip(_run(ours, params, grads), _run(peer, params, grads),
                                 strict=True)):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b),
                            strict=True):
      _close(x, y, f"{jax.tree_util.keystr(path)}, step {t + 1}")


def _flat_tree(key):
  """The tree of the porting page's example: an AdamW embedding, a stacked kernel, a head."""
  ks = jax.random.split(key, 3)
  return {"embed": jax.random.normal(ks[0], (64, 32)) * 0.1,
          "stack": jax.random.normal(ks[1], (3, 32, 48)) * 0.1,
          "head": jax.random.normal(ks[2], (32, 64)) * 0.1}


def _ported_with_rules(rules, *, weight_decay=0.0, polar=JORDAN):
  return ol.muon(0.02, beta=0.95, nesterov=True, bias_correction=True, adam_nesterov=True,
                 adam_eps=1e-8, weight_decay=weight_decay, rules=rules, polar=polar)


def _dims_and_mask():
  dims = {"embed": None, "stack": optax.contrib.MuonDimensionNumbers(1, 2),
          "head": optax.contrib.MuonDimensionNumbers()}
  peer = optax.contrib.muon(0.02, weight_decay=0.1, muon_weight_dimension_numbers=dims,
                            weight_decay_mask={"embed": False, "stack": True, "head": False})
  spectral = norms.Spectral(input_layer=True)
  rules = ol.Rules([
      (r"^embed$", ol.Group(None)),
      (r"^stack$", ol.Group(spectral, spec=ol.MatrixSpec(fan_in=(1,), fan_out=(2,)))),
      (r"^head$", ol.Group(spectral, weight_decay=0.0)),
  ])
  return peer, _ported_with_rules(rules, weight_decay=0.1)


def _consistent_rms():
  rms = lambda path, x: (ol.Group(norms.Spectral(scaled=False), radius=0.2 * max(x.shape) ** 0.5)
                         if x.ndim == 2 else ol.Group(None))
  return (optax.contrib.muon(0.02, consistent_rms=0.2),
          _ported_with_rules(ol.Rules((), fallback=rms)))


DION = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))  # optax's "dion" preset


def _dion():
  spectral = ol.Group(norms.Spectral(input_layer=True))
  every_matrix = ol.Rules((), fallback=lambda path, x: spectral if x.ndim == 2 else ol.Group(None))
  # optax 0.2.8 names these triples "dion"; 0.2.7 (our lower bound) takes only the triples.
  named = tuple(int(v) for v in optax.__version__.split(".")[:3]) >= (0, 2, 8)
  return (optax.contrib.muon(0.02, ns_coeffs="dion" if named else DION),
          _ported_with_rules(every_matrix, polar=ol.Polar("newton_schulz", DION)))


def _adaptive():
  rules = ol.Rules([(r".", ol.Group(norms.Spectral(scaled=False)))])
  return (optax.contrib.muon(0.02, beta=0.0, nesterov=False, adaptive=True),
          ol.contrib.polargrad(0.02, beta=0.0, rules=rules, polar=JORDAN))


@pytest.mark.parametrize("make, tree", [
    (_dims_and_mask, "flat"), (_consistent_rms, "gpt"), (_dion, "gpt"), (_adaptive, "square"),
], ids=["dimension_numbers_and_weight_decay_mask", "consistent_rms", "dion", "adaptive"])
def test_muon_options_match_optax_contrib_muon(make, tree):
  """The rows of the porting table for optax.contrib.muon's options, four steps each."""
  params = {"flat": lambda: _flat_tree(jax.random.key(0)),
            "gpt": lambda: _gpt_tree(jax.random.key(0)),
            "square": lambda: {"w": jax.random.normal(jax.random.key(0), (16, 16)) * 0.1}}[tree]()
  grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(10 + i), p.shape), params)
           for i in range(4)]
  peer, ours = make()
  for t, (a, b) in enumerate(zip(_run(ours, params, grads), _run(peer, params, grads),
                                 strict=True)):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b),
                            strict=True):
      _close(x, y, f"{jax.tree_util.keystr(path)}, step {t + 1}")
