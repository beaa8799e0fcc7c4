"""``describe``: the table of what every leaf gets, read from the optimizer's own state."""

from __future__ import annotations

import dataclasses
import html
import sys
from typing import Any

import jax
import numpy as np

from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import settings
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.route import RouteState, Routing


class Description:
  """Rows of :func:`describe`: prints as a text table, displays as HTML in a notebook.

  Indexing and iteration give the rows (dicts with the keys in :attr:`columns`).
  """

  COLUMNS = ("path", "shape", "view", "norm", "radius", "lr_mult", "weight_decay", "keep_prob",
             "state", "role", "evidence")

  def __init__(self, rows: list[dict]):
    self.rows = rows
    # keep_prob, role and evidence only when some leaf states them.
    optional = {"role": ("-",), "evidence": ("-",), "keep_prob": ("-", 1.0, 1)}
    self.columns = tuple(
        c for c in self.COLUMNS
        if c not in optional or any(r.get(c) not in optional[c] for r in rows)
    )

  def __len__(self):
    return len(self.rows)

  def __iter__(self):
    return iter(self.rows)

  def __getitem__(self, i):
    return self.rows[i]

  def __str__(self):
    rows = [self.columns] + [tuple(str(r[c]) for c in self.columns) for r in self.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

  __repr__ = __str__

  def _repr_html_(self):
    head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in self.columns) + "</tr>"
        for r in self.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def describe(tx_or_rules: Any, params: Any = None) -> Description:
  """One row per leaf: path, shape, view, norm, radius, lr multiplier, weight decay, state dtype.

  Reads the routing from the optimizer itself: works on any optax chain,
  wrapper (``inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``, ...) or
  partition that contains an optimizer of this library (``jax.eval_shape`` of
  its ``init``: nothing is computed), and on anything that holds such an
  optimizer's state as ``opt_state`` (an ``nnx.Optimizer``, a Flax
  ``TrainState``): ``ol.describe(optimizer)``. Leaves that no routed
  transformation handles show the fallback (``AdamW`` in
  :func:`~optax_lmo.muon`) or ``-``.

  Args:
    tx_or_rules: an optimizer (any ``optax.GradientTransformation`` containing
      one of ours), an object with its state as ``opt_state`` (``nnx.Optimizer``),
      or a :class:`~optax_lmo.Rules` (or a rule list).
    params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``); for NNX
      ``nnx.state(model, nnx.Param)``, not the model (a model, or a state with
      batch statistics or RNG counters, is refused, saying so). ``None`` (only
      with an ``opt_state``): the leaves that state was initialized with.

  Returns:
    A :class:`Description`: ``print(d)`` gives the text table, a notebook shows
    it as HTML, ``d[i]["norm"]`` reads a cell.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), ol.scion(2**-11))
    >>> d = ol.describe(tx, {"w": jnp.zeros((4, 8))})
    >>> d[0]["norm"], d[0]["view"], d[0]["radius"]
    ('Spectral', '4x8', 48.0)
  """
  if params is not None:
    _refuse_non_params(params)
  if hasattr(tx_or_rules, "opt_state"):  # nnx.Optimizer, TrainState: the state is at hand
    routings = _routings(tx_or_rules.opt_state)
  elif hasattr(tx_or_rules, "init") and hasattr(tx_or_rules, "update"):
    if params is None:
      raise TypeError(
          "describe() needs the parameters with an optimizer: ol.describe(tx, params) (for"
          " NNX, params = nnx.state(model, nnx.Param), or pass the nnx.Optimizer alone)."
      )
    routings = _routings(jax.eval_shape(tx_or_rules.init, params))
  else:
    if params is None:
      raise TypeError("describe() needs the parameters with rules: ol.describe(rules, params).")
    rules = rules_lib.as_rules(tx_or_rules)
    routings = [Routing(settings.settle(rules.plan(params)), "rules")]
  by_path: dict[str, tuple[Routing, settings.Leaf]] = {}
  seen: dict[str, tuple] = {}  # path -> shape, from the routings' own plans
  for routing in routings:
    plan = routing.plan
    for path, leaf, shape in zip(plan.paths, plan.leaves, plan.shapes, strict=True):
      by_path.setdefault(path, (routing, leaf))
      seen.setdefault(path, shape)
  if params is None:
    leaves = list(seen.items())
  else:
    leaves = [(spec_lib.path_str(kp), tuple(np.shape(x)))
              for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]]
  rows = []
  for path, shape in leaves:
    routing, leaf = by_path.get(path, (None, None))
    rows.append(_row(path, shape, routing, leaf))
  return Description(rows)


def _routings(state) -> list[Routing]:
  routings = [
      s.routing for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, RouteState))
      if isinstance(s, RouteState)
  ]
  if not routings:
    raise ValueError(
        "describe() found no optax_lmo optimizer in this transformation (no state of"
        " scion / muon / ...); pass the optimizer that contains one, or Rules."
    )
  return routings


def _refuse_non_params(params) -> None:
  """Raises for an NNX model, or NNX variables that are not parameters, saying what to pass."""
  nnx = sys.modules.get("flax.nnx")  # an NNX object exists only once flax.nnx is imported
  if nnx is None:
    return
  fix = ("pass nnx.state(model, nnx.Param), the tree that nnx.Optimizer(model, tx,"
         " wrt=nnx.Param) gives tx.init (or pass the nnx.Optimizer alone)")
  if isinstance(params, nnx.Module):
    raise TypeError(f"describe() takes the parameters, not the model {type(params).__name__}: "
                    f"{fix}.")
  is_var = lambda x: isinstance(x, nnx.Variable)
  others = [
      (spec_lib.path_str(kp), type(v).__name__)
      for kp, v in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)[0]
      if is_var(v) and not isinstance(v, nnx.Param)
  ]
  if others:
    more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
    raise ValueError(
        f"{others[0][0]}: a {others[0][1]}, not a parameter{more}. An optimizer updates only"
        f" the parameters: {fix}."
    )


def _row(path, shape, routing: Routing | None, leaf) -> dict:
  row = dict(path=path, shape=shape, view="-", norm="-", radius="-", lr_mult="-",
             weight_decay="-", keep_prob="-", state="-", role="-", evidence="-")
  if leaf is not None:
    row.update(role=leaf.role or "-", evidence=leaf.evidence or "-")
  if leaf is None or leaf.norm is None:
    if routing is not None and routing.fallback:
      row["norm"] = routing.fallback
    return row
  optimizer = routing is not None and routing.name != "rules"
  keep = leaf.keep_prob
  if keep is None and optimizer:
    keep = 1.0  # every step
  row.update(
      view=leaf.norm.describe_view(shape, leaf.spec, path),
      norm=_norm_name(leaf.norm),
      radius=leaf.radius,
      lr_mult=leaf.lr_mult,
      weight_decay="-" if leaf.weight_decay is None else leaf.weight_decay,
      keep_prob="-" if keep is None else keep,
      state="-" if leaf.state_dtype is None else leaf.state_dtype.name,
  )
  return row


def _norm_name(n: norms_lib.Norm) -> str:
  """``Spectral`` or ``ColNorm(scaled=False)``: the class name plus non-default flags."""
  flags = []
  for f in dataclasses.fields(n):
    v = getattr(n, f.name)
    if f.name != "polar" and v != f.default:
      flags.append(f"{f.name}={v}")
  return n.name + (f"({', '.join(flags)})" if flags else "")
