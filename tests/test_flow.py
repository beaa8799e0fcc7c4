"""docs/flow.md is true: each keyword is read from the options or a group where it says.

Every optimizer runs ``init``, a jitted ``update`` and ``describe`` while the
attribute reads of ``Options`` and ``Group`` fields are recorded with the module
that made them; the set of modules per keyword must be the page's table.
"""

import collections
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_lmo as ol
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import settings

PAGE = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "flow.md").read_text("utf-8")


def _table() -> dict[str, set[str]]:
  """keyword -> the modules of the page's second column."""
  out = {}
  for line in PAGE.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 3 or not cells[0].startswith("`") or "read from" in cells[1]:
      continue
    modules = {m.removesuffix(".py") for m in re.findall(r"`(\w+\.py)`", cells[1])}
    for kw in re.findall(r"`(\w+)`", cells[0]):
      out[kw] = modules
  return out


@pytest.fixture
def reads(monkeypatch):
  """(class name, field) -> the optax_lmo modules that read it, while the test runs."""
  found = collections.defaultdict(set)

  def spy(cls):
    fields = set(cls.__dataclass_fields__)

    def getattribute(self, name):
      if name in fields:
        module = sys._getframe(1).f_globals.get("__name__", "")
        if module.startswith("optax_lmo."):
          found[name].add(module.rsplit(".", 1)[-1])
      return object.__getattribute__(self, name)

    monkeypatch.setattr(cls, "__getattribute__", getattribute)

  spy(settings.Options)
  spy(rules_lib.Group)
  return found


def _params():
  return {"embed": {"embedding": jnp.ones((32, 16))},
          "fc": {"kernel": jnp.eye(16), "bias": jnp.zeros(16)},
          "head": {"kernel": jnp.ones((16, 32)) / 32}}


def _rules():
  return [(r"fc/kernel", ol.Group(ol.norms.Spectral(), 3.0, 0.5, weight_decay=0.1,
                                  keep_prob=0.5)),
          (r"embedding", ol.Group(ol.norms.ColNorm())),
          (r"head", ol.Group(ol.norms.RowNorm(), 10.0)),
          (r"bias", ol.Group(ol.norms.BiasRMS()))]


def test_each_keyword_is_read_where_the_flow_page_says(reads):
  params, rules = _params(), _rules()
  grads = jax.tree.map(jnp.ones_like, params)
  optimizers = [
      ol.scion(0.1, rules=rules, polar=ol.Polar(method="svd"), mu_dtype=jnp.float32,
               nesterov=True),
      ol.unconstrained_scion(0.1, weight_decay=0.1, keep_prob=0.5, rules=rules,
                             clip_to_dual_norm=True, exchange_dtype=jnp.bfloat16),
      ol.muon(0.02, bias_correction=True),
      ol.scion(0.1, rules=rules, row_norm=True),
      ol.contrib.polargrad(0.1),
      ol.sign_descent(0.1),
      ol.normalized_sgd(0.1),
      optax.inject_hyperparams(ol.unconstrained_scion)(learning_rate=0.1, weight_decay=0.2,
                                                       keep_prob=0.5),
  ]
  for tx in optimizers:
    state = tx.init(params)
    _, state = jax.jit(tx.update)(grads, state, params)
    ol.describe(tx, params)
  table = _table()
  keywords = set(settings.Options.__dataclass_fields__) | set(rules_lib.Group.__dataclass_fields__)
  keywords -= {"name", "role", "evidence"}  # labels, not settings
  assert set(table) == keywords, set(table) ^ keywords
  for kw in sorted(keywords):
    assert reads[kw] == table[kw], (kw, reads[kw], table[kw])
  # The per-leaf settings are decided in one module, whatever else checks them.
  for kw in ("weight_decay", "keep_prob", "polar", "mu_dtype", "norm", "spec", "radius",
             "lr_mult"):
    assert "settings" in reads[kw] and not reads[kw] - {"settings", "rules"}, kw


def test_the_plan_carries_every_setting_and_the_update_reads_only_it():
  """The plan settled at init holds every setting; change one there and the update follows."""
  import dataclasses

  from optax_lmo._src.route import RouteState, Routing

  params = _params()
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  tx = ol.unconstrained_scion(0.1, beta=0.0, rules=_rules())
  state = tx.init(params)
  plan = state.routing.plan
  fc = plan.paths.index("fc/kernel")
  leaf = plan.leaves[fc]
  assert (leaf.radius, leaf.lr_mult, leaf.weight_decay, leaf.keep_prob) == (3.0, 0.5, 0.1, 0.5)
  assert leaf.state_dtype == jnp.float32 and leaf.norm == ol.norms.Spectral()
  rows = {r["path"]: r for r in ol.describe(tx, params)}
  assert (rows["fc/kernel"]["weight_decay"], rows["fc/kernel"]["keep_prob"]) == (0.1, 0.5)
  assert rows["embed/embedding"]["weight_decay"] == 0.0  # the optimizer's own default
  # Twice the radius and no decay or sampling on every leaf, in the stored plan only.
  leaves = tuple(dataclasses.replace(x, radius=2 * x.radius, weight_decay=0.0, keep_prob=None)
                 for x in plan.leaves)
  edited = dataclasses.replace(plan, leaves=leaves)
  routing = state.routing
  other = RouteState(state.inner, Routing(edited, routing.name, routing.fallback,
                                          routing.dtypes, routing.checks_shapes))
  zero = tx.init(jax.tree.map(jnp.zeros_like, params))  # W = 0: no decay term either way
  u_plain, _ = tx.update(grads, zero, jax.tree.map(jnp.zeros_like, params))
  u_edit, _ = tx.update(grads, RouteState(zero.inner, other.routing),
                        jax.tree.map(jnp.zeros_like, params))
  for top, name in (("embed", "embedding"), ("head", "kernel"), ("fc", "bias")):
    a = float(jnp.linalg.norm(u_plain[top][name]))
    b = float(jnp.linalg.norm(u_edit[top][name]))
    assert a > 0 and b == pytest.approx(2 * a, rel=1e-5), (top, name)
