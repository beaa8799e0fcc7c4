"""Where each parameter leaf goes in a traced model: the jaxpr walk behind ``infer_rules``.

Each jaxpr variable carries a :class:`~optax_lmo._src.trace_ops.Fact`: the
parameter *view* it is (which leaf, and which leaf axes each of its axes holds;
``None`` for activations), and whether it is *raw* (derived from a real-valued
input along a path without a parameter's product), *data* (derived from any
input) or *hidden* (derived from a parameter's product with data). A forward
pass records every op that consumes a view (a :class:`Use`, by the per-op rules
of ``trace_ops.py``); a backward pass marks the variables that reach the output
without passing a parameter's product, which makes a product an output layer.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from optax_lmo._src import spec as spec_lib
from optax_lmo._src.trace_ops import (
  CALLS,
  ELEMENTWISE,
  GAIN_OPS,
  JOINS,
  NONE,
  PASS_THROUGH,
  REDUCE,
  VIEW_OPS,
  Fact,
  Unresolved,
  Use,
  View,
  conv_use,
  dot_use,
  gather_use,
  gathered_view,
  is_token,
  join_facts,
  joined,
  mix,
  parts,
  result_blocks,
  sorted_tuple,
  sub_jaxpr,
  view_through,
)
from optax_lmo._src.traced_call import call_failed, select_output, shapes, split_static

__all__ = ["Frame", "JaxprWalk", "Unresolved", "Use", "View", "result_blocks", "select_output",
           "trace_uses"]


class Frame:
  """One invocation of a jaxpr: the facts of its variables and the uses in it."""

  def __init__(self, jaxpr):
    self.jaxpr = jaxpr
    self.facts: dict = {}  # var -> Fact
    self.children: dict[int, list[Frame]] = {}  # eqn index -> frames of its sub-jaxprs
    self.products: set[int] = set()  # eqn indices that are parameter products
    self.out: set = set()  # vars that reach the function's output past no product
    self.uses: list[Use] = []
    # var -> (view, the lookup's Use): whole slices gathered from a leaf (expert weights
    # picked by a router), a weight again if a product with data consumes them.
    self.gathered: dict = {}

  def held(self, invars) -> list:
    """Each var's entry in :attr:`gathered` (``None`` where it has none, or a literal)."""
    return [None if isinstance(v, jcore.Literal) else self.gathered.get(v) for v in invars]

  def get(self, v):
    if isinstance(v, jcore.Literal):
      return NONE
    return self.facts.get(v, NONE)

  def all_uses(self):
    yield from self.uses
    for frames in self.children.values():
      for f in frames:
        yield from f.all_uses()


class JaxprWalk:
  """Forward and backward passes over a traced function's jaxpr (a walk of its equations;
  not a ``jax.core.Tracer``)."""

  def __init__(self, shapes: list[tuple[int, ...]]):
    self.shapes = shapes
    self.ndims = [len(s) for s in shapes]

  # -- forward ----------------------------------------------------------------
  def forward(self, jaxpr, in_facts, gathered=()) -> tuple[Frame, list]:
    fr = Frame(jaxpr)
    for v, f in zip(jaxpr.invars, in_facts, strict=True):
      fr.facts[v] = f
    for v, g in zip(jaxpr.invars, gathered, strict=False):
      if g is not None:
        fr.gathered[v] = g
    for i, eqn in enumerate(jaxpr.eqns):
      ins = [fr.get(v) for v in eqn.invars]
      outs = self._eqn(fr, i, eqn, ins)
      for v, f in zip(eqn.outvars, outs, strict=True):
        fr.facts[v] = f
    return fr, [fr.get(v) for v in jaxpr.outvars]

  def _use(self, fr: Frame, use: Use, eqn=None):
    if eqn is not None:
      use.frame, use.result = fr, eqn.outvars[0]
    fr.uses.append(use)

  def _uses(self, fr: Frame, views, kind: str, detail: str, gain: bool = False):
    """A use of ``kind`` for every leaf view in ``views`` (views, tuples of views or None)."""
    for v in views:
      for p in parts(v):
        self._use(fr, Use(p.leaf, kind, detail, batch=sorted_tuple(p.gone), gain=gain))

  def _guarded(self, fr, leaf, make):
    try:
      return make()
    except Unresolved as e:
      self._use(fr, Use(leaf, "unknown", str(e)))
      return None

  def _eqn(self, fr: Frame, i: int, eqn, ins) -> list:
    name = eqn.primitive.name
    views = [f.view for f in ins]
    n_out = len(eqn.outvars)
    if name in CALLS or (sub_jaxpr(eqn) is not None and name not in ("scan", "while", "cond")):
      sub = sub_jaxpr(eqn)
      if sub is not None and len(sub.invars) == len(ins) and len(sub.outvars) == n_out:
        child, outs = self.forward(sub, ins, fr.held(eqn.invars))
        fr.children[i] = [child]
        for v, out in zip(sub.outvars, eqn.outvars, strict=True):
          if not isinstance(v, jcore.Literal) and v in child.gathered:
            fr.gathered[out] = child.gathered[v]
        return outs
    if name == "scan":
      return self._scan(fr, i, eqn, ins)
    if name == "while":
      return self._while(fr, i, eqn, ins)
    if name == "cond":
      return self._cond(fr, i, eqn, ins)
    if fr.gathered:
      self._selected(fr, eqn, ins)
    if all(v is None for v in views):
      return [mix(ins)] * n_out
    if name in PASS_THROUGH and len(ins) == n_out:
      return list(ins)
    if name in VIEW_OPS and views[0] is not None and all(v is None for v in views[1:]):
      data = any(f.data for f in ins)
      outs = zip(*(view_through(eqn, p) for p in parts(views[0])), strict=True)
      return [Fact(joined(v), False, data, False) for v in outs]
    if name in JOINS:
      return self._join(fr, eqn, ins, JOINS[name])
    if name == "dot_general":
      return self._product(fr, i, eqn, ins, lambda k, v, o, j: dot_use(
          eqn, k, v, o, self.ndims[v.leaf], joined=j))
    if name == "conv_general_dilated" and views[0] is None:
      return self._product(fr, i, eqn, ins, lambda k, v, o, j: conv_use(
          eqn, v, o, self.ndims[v.leaf]))
    if name == "gather" and views[1] is None and jnp.issubdtype(eqn.invars[1].aval.dtype,
                                                                 jnp.integer):
      outs = self._product(fr, i, eqn, ins, lambda k, v, o, j: gather_use(
          eqn, v, self.ndims[v.leaf]))
      lookup = fr.uses[-1] if fr.uses and fr.uses[-1].result is eqn.outvars[0] else None
      slices = gathered_view(eqn, views[0]) if isinstance(views[0], View) else None
      if lookup is not None and lookup.kind == "embed" and slices is not None:
        fr.gathered[eqn.outvars[0]] = (slices, lookup)
      return outs
    if name in ELEMENTWISE:
      if any(f.data for f in ins):
        self._uses(fr, views, "elementwise", name, gain=name in GAIN_OPS)
        return [mix(ins)] * n_out
      shape = eqn.outvars[0].aval.shape
      keep = next((v for v, x in zip(views, eqn.invars, strict=True)
                   if v is not None and x.aval.shape == shape), None)
      self._uses(fr, [v for v in views if v is not keep], "elementwise", name,
                 gain=name in GAIN_OPS)
      return [Fact(keep, False, False, False)] * n_out
    if name in REDUCE:
      self._uses(fr, views, "reduce", name)
      return [mix(ins)] * n_out
    self._uses(fr, views, "unknown", name)
    return [mix(ins)] * n_out

  def _join(self, fr: Frame, eqn, ins, placed) -> list:
    """Arrays placed side by side: parameters stay views, a parameter among data is a token."""
    name = eqn.primitive.name
    placed = range(len(ins)) if placed is None else [k for k in placed if k < len(ins)]
    facts = [ins[k] for k in placed]
    if name.startswith("scatter") and ins[2].view is not None:
      self._uses(fr, [ins[2].view], "unknown",
                 f"{name} (a parameter's entries written into another array)")
      facts = facts[:1]
    if any(f.data for f in facts):
      self._uses(fr, [f.view for f in facts], "token", f"{name} with data")
      return [mix(facts)] * len(eqn.outvars)
    views = [p for f in facts for p in parts(f.view)]
    return [Fact(joined(views), False, False, False)] * len(eqn.outvars)

  def _selected(self, fr: Frame, eqn, ins) -> None:
    """Follows gathered slices of a leaf through view ops into a product with data.

    There they are a weight: the product gives the leaf's matrix view (the indexed
    axes a batch axis) and the lookup stops counting as an embedding.
    """
    name = eqn.primitive.name
    held = fr.held(eqn.invars)
    if name in VIEW_OPS and held and held[0] is not None:
      view, lookup = held[0]
      for out, v in zip(eqn.outvars, view_through(eqn, view), strict=True):
        fr.gathered[out] = (v, lookup)
      return
    if name != "dot_general":
      return
    for k in (0, 1):
      other = ins[1 - k]
      if held[k] is None or other.view is not None or not other.data:
        continue  # a lookup multiplied by a parameter is an embedding's activation
      view, lookup = held[k]
      use = self._guarded(fr, view.leaf, lambda k=k, view=view, other=other: dot_use(
          eqn, k, view, other, self.ndims[view.leaf], gathered=True))
      if use is not None:
        self._use(fr, use, eqn)
        lookup.kind = "selected"  # not an embedding: the product decides the leaf

  def _product(self, fr, i, eqn, ins, make) -> list:
    fr.products.add(i)
    both = eqn.primitive.name == "dot_general" and all(
        isinstance(f.view, View) and not f.data for f in ins[:2])
    for k, f in enumerate(ins[:2]):
      if both and is_token(eqn, k, f.view, self.shapes[f.view.leaf]):
        self._uses(fr, [f.view], "token", "dot_general with another parameter, as its activation")
        continue
      for view in parts(f.view):
        other, j = ins[1 - k], len(parts(f.view)) > 1
        use = self._guarded(fr, view.leaf, lambda k=k, view=view, other=other, j=j:
                            make(k, view, other, j))
        if use is not None:
          self._use(fr, use, eqn)
    data = any(f.data for f in ins)
    return [Fact(None, False, data, data)] * len(eqn.outvars)

  def _loop(self, fr, i, body, consts, carry, xs, n_carry, slice_xs: bool):
    """Forward fixpoint over a loop body: carries join their initial and updated facts."""
    carry = [c._replace(view=None) for c in carry]  # a view does not travel through a carry
    if slice_xs:
      xs = [f._replace(view=joined(View(p.leaf, p.axes[1:], p.gone | p.axes[0])
                                   for p in parts(f.view))) for f in xs]
    for _ in range(n_carry + 2):
      child, outs = self.forward(body, list(consts) + carry + list(xs))
      new = [join_facts(a, b._replace(view=None)) for a, b in zip(carry, outs[:n_carry],
                                                                  strict=True)]
      if new == carry:
        break
      carry = new
    fr.children[i] = [child]
    return carry, outs[n_carry:]

  def _scan(self, fr, i, eqn, ins) -> list:
    nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
    body = eqn.params["jaxpr"].jaxpr
    carry, ys = self._loop(fr, i, body, ins[:nc], ins[nc:nc + nk], ins[nc + nk:], nk, True)
    ys = [f._replace(view=joined(View(p.leaf, (frozenset(),) + p.axes, p.gone)
                                 for p in parts(f.view))) for f in ys]
    return carry + ys

  def _while(self, fr, i, eqn, ins) -> list:
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    body = eqn.params["body_jaxpr"].jaxpr
    carry, _ = self._loop(fr, i, body, ins[cn:cn + bn], ins[cn + bn:], [], len(ins) - cn - bn,
                          False)
    cond, _ = self.forward(eqn.params["cond_jaxpr"].jaxpr, ins[:cn] + carry)
    fr.children[i].append(cond)
    return carry

  def _cond(self, fr, i, eqn, ins) -> list:
    results = []
    fr.children[i] = []
    for branch in eqn.params["branches"]:
      child, outs = self.forward(branch.jaxpr, ins[1:])
      fr.children[i].append(child)
      results.append(outs)
    return [functools.reduce(join_facts, outs) for outs in zip(*results, strict=True)]

  # -- backward ---------------------------------------------------------------
  def backward(self, fr: Frame, out_flags) -> list[bool]:
    for v, f in zip(fr.jaxpr.outvars, out_flags, strict=True):
      if f and not isinstance(v, jcore.Literal):
        fr.out.add(v)
    for i in reversed(range(len(fr.jaxpr.eqns))):
      eqn = fr.jaxpr.eqns[i]
      flags = [v in fr.out for v in eqn.outvars]
      if not any(flags) or i in fr.products:
        continue
      name = eqn.primitive.name
      if i in fr.children and name == "scan":
        in_flags = self._scan_back(eqn, fr.children[i][0], flags)
      elif i in fr.children and name == "while":
        in_flags = self._while_back(eqn, fr.children[i][0], flags)
      elif i in fr.children and name == "cond":
        in_flags = [False] + [any(t) for t in zip(*(self.backward(c, flags)
                                                    for c in fr.children[i]), strict=True)]
      elif i in fr.children:
        in_flags = self.backward(fr.children[i][0], flags)
      else:
        in_flags = [True] * len(eqn.invars)
      for v, f in zip(eqn.invars, in_flags, strict=True):
        if f and not isinstance(v, jcore.Literal):
          fr.out.add(v)
    return [v in fr.out for v in fr.jaxpr.invars]

  def _scan_back(self, eqn, body: Frame, flags) -> list[bool]:
    nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
    carry = list(flags[:nk])
    while True:
      got = self.backward(body, carry + list(flags[nk:]))
      new = [a or b for a, b in zip(carry, got[nc:nc + nk], strict=True)]
      if new == carry:
        return got[:nc] + carry + got[nc + nk:]
      carry = new

  def _while_back(self, eqn, body: Frame, flags) -> list[bool]:
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    carry = list(flags)
    while True:
      got = self.backward(body, carry)
      new = [a or b for a, b in zip(carry, got[bn:], strict=True)]
      if new == carry:
        return [False] * cn + got[:bn] + carry
      carry = new


def trace_uses(fn_or_module, args, kwargs,
               output=None) -> tuple[list[tuple[str, Any]], dict[int, list[Use]]]:
  """``([(path, leaf)], {leaf index: [Use]})`` for the parameters of a traced call.

  ``output`` picks the model output from the returned value (:func:`select_output`).

  Raises:
    TypeError, ValueError: the call failed on the example arguments (the model's
      own error chained), or its output cannot be told apart.
  """
  extra, call = [], None
  if callable(fn_or_module) and not _is_nnx_module(fn_or_module):
    if not args:
      raise TypeError("infer_rules(fn, params, *args): pass the parameters after the function.")
    params, args = args[0], args[1:]
    call = lambda p, e, a: fn_or_module(p, *a[0], **a[1])
    name = getattr(fn_or_module, "__name__", None) or type(fn_or_module).__name__
    shown = f"{name}(params{''.join(', ' + shapes(a) for a in args)}"
  else:
    from flax import nnx

    if not _is_nnx_module(fn_or_module):
      raise TypeError(f"infer_rules needs a function or a Flax NNX module, got"
                      f" {type(fn_or_module).__name__}.")
    graphdef, params, rest = nnx.split(fn_or_module, nnx.Param, ...)
    extra = rest
    call = lambda p, e, a: nnx.merge(graphdef, p, e)(*a[0], **a[1])
    shown = f"{type(fn_or_module).__name__}({', '.join(shapes(a) for a in args)}"
  shown += "".join(f", {k}={shapes(v)}" for k, v in kwargs.items()) + ")"
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [(spec_lib.path_str(p), x) for p, x in flat]
  leaves = [x for _, x in flat]
  extra_leaves, extra_def = jax.tree.flatten(extra)
  data, rebuild = split_static((args, kwargs))

  def wrapped(leaves, extra_leaves, data):
    try:
      out = call(treedef.unflatten(leaves), extra_def.unflatten(extra_leaves), rebuild(data))
    except Exception as e:  # noqa: BLE001  (said again with the call that failed, and chained)
      raise call_failed(e, shown) from e
    return select_output(out, output)

  closed = jax.make_jaxpr(wrapped)(leaves, extra_leaves, data)
  jaxpr = closed.jaxpr
  shapes_ = [tuple(np.shape(x)) for x in leaves]
  facts = [Fact(View(k, tuple(frozenset({a}) for a in range(len(s)))), False, False, False)
           for k, s in enumerate(shapes_)]
  facts += [NONE] * len(extra_leaves)
  facts += [Fact(None, bool(jnp.issubdtype(x.dtype, jnp.inexact)), True, False) for x in data]
  walk = JaxprWalk(shapes_)
  top, _ = walk.forward(jaxpr, facts)
  walk.backward(top, [jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in jaxpr.outvars])
  uses: dict[int, list[Use]] = {}
  for u in top.all_uses():
    if u.frame is not None:
      u.output = u.result in u.frame.out
    uses.setdefault(u.leaf, []).append(u)
  return paths, uses


def _is_nnx_module(x) -> bool:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover
    return False
  return isinstance(x, nnx.Module)
