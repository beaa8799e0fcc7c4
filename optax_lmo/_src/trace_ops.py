"""What each jaxpr primitive does to a parameter view: the per-op rules of the ``infer_rules`` walk.

A *view* is a variable that holds one parameter leaf, its axes mapped to the
leaf's axes (or, after a ``concatenate`` of parameters, a tuple of such views:
each leaf keeps its own axes). View ops (reshape, transpose, casts, broadcasts,
tiles, slices, pads) map a view to new views; products (``dot_general``,
``conv_general_dilated``, an integer ``gather``) consume it and say which leaf
axes are fan-in, fan-out and batch (a :class:`Use`). The walk over a jaxpr that
applies these rules is in ``trace.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from jax.extend import core as jcore


class Unresolved(Exception):
  """A leaf whose role the traced computation does not decide."""


@dataclasses.dataclass(frozen=True)
class View:
  """A variable that is a view of one parameter leaf."""

  leaf: int  # index of the leaf in the flattened parameters
  axes: tuple[frozenset, ...]  # for each axis of the variable: the leaf axes it holds
  gone: frozenset = frozenset()  # leaf axes indexed or scanned away (batch axes)


class Fact(NamedTuple):
  """What the walk knows about one jaxpr variable."""

  view: Any  # the View it is, a tuple of Views (joined parameters), or None (an activation)
  raw: bool  # derived from a real-valued input along a path without a parameter's product
  data: bool  # derived from any input of the function
  hidden: bool  # derived from a parameter's product with data (a parameter-derived activation)


NONE = Fact(None, False, False, False)  # a constant: no view, not raw, not data


def parts(view) -> tuple[View, ...]:
  """The leaf views a variable holds: none, one, or those joined by a ``concatenate``."""
  if view is None:
    return ()
  return view if isinstance(view, tuple) else (view,)


def joined(views) -> Any:
  """The view of a variable holding ``views`` (``None``, one :class:`View` or a tuple)."""
  views = tuple(views)
  return None if not views else views[0] if len(views) == 1 else views


def mix(ins) -> Fact:
  """The facts of an activation computed from ``ins`` (no view survives).

  Only the data operands count. Raw survives an op only when no operand is a
  parameter-derived activation: a padding mask multiplied into a hidden
  activation (``h * (1 - paddings)``) or a mask derived from float ids selecting
  attention logits leaves the result hidden, not raw input.
  """
  data = [f for f in ins if f.data]
  raw = any(f.raw for f in data) and not any(f.hidden and not f.raw for f in data)
  return Fact(None, raw, bool(data), any(f.hidden for f in data))


def join_facts(a: Fact, b: Fact) -> Fact:
  """Facts of a variable that is ``a`` on one path and ``b`` on another (loop carries, branches)."""
  return Fact(a.view if a.view == b.view else None, a.raw or b.raw, a.data or b.data,
              a.hidden or b.hidden)


@dataclasses.dataclass
class Use:
  """One op that consumes a parameter view."""

  leaf: int  # index of the leaf
  kind: str  # "embed", "dot", "conv", "elementwise", "token", "reduce" or "unknown"
  detail: str  # the op, for messages: "dot_general contracting (0,)"
  fan_in: tuple = ()  # leaf axes (matrix uses)
  fan_out: tuple = ()
  batch: tuple = ()  # leaf axes that are batch axes
  input: bool = False  # the other operand is raw input
  gain: bool = False  # an elementwise multiply (a gain, not a bias)
  groups: int = 1  # a grouped convolution's feature_group_count
  frame: Any = None  # where the product's result lives, for the output flag
  result: Any = None  # the product's result variable
  output: bool = False  # set after the backward pass
  out_axis: int | None = None  # the result's axis holding the one fan-out axis (products)

  def evidence(self, role: str) -> str:
    batch = f", batch {self.batch}" if self.batch else ""
    return f"{self.detail} -> fan_in {self.fan_in}, fan_out {self.fan_out}{batch}; {role}"


VIEW_OPS = {"reshape", "transpose", "convert_element_type", "squeeze", "broadcast_in_dim",
             "slice", "dynamic_slice", "copy", "copy_p", "reduce_precision", "rev", "split",
             "sharding_constraint", "tile"}
PASS_THROUGH = {"device_put", "optimization_barrier"}  # each output is its operand
# Ops that place arrays side by side, and which of their operands they place (the others are
# indices): parameters joined with parameters keep their views; joined with data, a parameter
# is a learned token (a CLS token in front of the patches).
JOINS = {"concatenate": None, "pad": (0, 1), "dynamic_update_slice": (0, 1), "scatter": (0, 2),
         "scatter-add": (0, 2), "scatter_add": (0, 2), "scatter-mul": (0, 2),
         "scatter_mul": (0, 2), "scatter-min": (0, 2), "scatter_min": (0, 2),
         "scatter-max": (0, 2), "scatter_max": (0, 2)}
ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "abs", "sign", "exp", "exp2", "log",
    "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow",
    "square", "select_n", "add_any", "erf", "erfc", "erf_inv", "sin", "cos", "tan", "atan2",
    "sinh", "cosh", "asinh", "acosh", "atanh", "clamp", "stop_gradient", "eq", "ne", "lt",
    "le", "gt", "ge", "and", "or", "not", "is_finite", "floor", "ceil", "round", "rem",
    "nextafter", "real", "imag", "conj", "xor", "reciprocal",
}
GAIN_OPS = {"mul", "div"}
REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
           "reduce_and", "reduce_or", "cumsum", "cummax", "cummin", "cumprod", "cumlogsumexp"}
CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat2", "checkpoint", "remat", "custom_lin"}

def sub_jaxpr(eqn):
  """The call-like sub-jaxpr of ``eqn`` (open jaxpr, consts), or ``None``."""
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(key)
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr
    if isinstance(j, jcore.Jaxpr):
      return j
  return None


def result_blocks(use: Use) -> tuple[int, int, str] | None:
  """How the model cuts a product's result along its fan-out axis right after the product.

  Follows the result through casts and a same-shape add (a bias) to a ``split``
  into equal pieces, or equal ``slice``s covering the axis (a fused QKV), and
  each piece (or the result itself) to a ``reshape`` that splits the axis into
  ``(heads, d_head)``.

  Returns:
    ``(pieces, heads per piece, evidence)``, or ``None`` when nothing cuts it.
  """
  if use.kind != "dot" or use.out_axis is None or use.frame is None:
    return None
  eqns, axis = use.frame.jaxpr.eqns, use.out_axis

  def consumers(v):
    return [e for e in eqns if any(x is v for x in e.invars)]

  def follow(v):
    for _ in range(4):
      cs = consumers(v)
      if (len(cs) != 1 or cs[0].primitive.name not in ("convert_element_type", "add", "copy")
          or cs[0].outvars[0].aval.shape != v.aval.shape):
        return v, cs
      v = cs[0].outvars[0]
    return v, consumers(v)

  var, cs = follow(use.result)
  n, pieces, outs, how = var.aval.shape[axis], 1, [var], ""
  if len(cs) == 1 and cs[0].primitive.name == "split" and cs[0].params["axis"] == axis \
      and len(set(cs[0].params["sizes"])) == 1:
    pieces, outs, how = len(cs[0].params["sizes"]), list(cs[0].outvars), "split"
  elif len(cs) > 1 and all(e.primitive.name == "slice" for e in cs):
    spans = sorted((e.params["start_indices"][axis], e.params["limit_indices"][axis], e)
                   for e in cs)
    width = spans[0][1] - spans[0][0]
    if all(lo == i * width and hi == lo + width for i, (lo, hi, _) in enumerate(spans)) \
        and width * len(spans) == n:
      pieces, outs, how = len(spans), [e.outvars[0] for _, _, e in spans], "slice"
  heads = set()
  for out in outs:
    _, cs = follow(out)
    old = out.aval.shape
    got = {e.params["new_sizes"][axis] for e in cs if e.primitive.name == "reshape"
           and len(e.params["new_sizes"]) == len(old) + 1
           and e.params["new_sizes"][:axis] == old[:axis]
           and e.params["new_sizes"][axis + 2:] == old[axis + 1:]}
    heads.add(got.pop() if len(got) == 1 else 1)
  h = heads.pop() if len(heads) == 1 else 1
  if pieces == 1 and h == 1:
    return None
  said = [f"result cut into {pieces} by {how}"] if pieces > 1 else []
  said += [f"{'each piece' if pieces > 1 else 'result'} reshaped into {h} heads"] if h > 1 else []
  return pieces, h, ", ".join(said)


def sorted_tuple(xs) -> tuple:
  return tuple(sorted(xs))


def _classify(view: View, groups: dict[str, tuple[int, ...]], ndim: int, what: str) -> dict:
  """Leaf axes per category (``fan_in``/``fan_out``/``batch``) from the variable's axes."""
  cat: dict[int, set] = {}
  for name, var_axes in groups.items():
    for a in var_axes:
      for la in view.axes[a]:
        cat.setdefault(la, set()).add(name)
  for la in view.gone:
    cat.setdefault(la, set()).add("batch")
  split = sorted(la for la, s in cat.items() if len(s) > 1)
  if split:
    raise Unresolved(f"{what}: leaf axes {tuple(split)} are split between"
                     f" {sorted(set().union(*(cat[a] for a in split)))} by a reshape")
  out = {name: sorted_tuple(la for la, s in cat.items() if name in s) for name in groups}
  unused = {la for la in range(ndim) if la not in cat}
  out["batch"] = sorted_tuple(set(out.get("batch", ())) | unused)
  return out


def _reshape_axes(old, new, axes) -> tuple[tuple, frozenset]:
  """Axes map through a reshape: new axes hold the leaf axes of the old ones they regroup."""
  res = [frozenset()] * len(new)
  gone: set = set()
  i = j = 0
  while i < len(old) or j < len(new):
    if i < len(old) and old[i] == 1:
      gone |= axes[i]
      i += 1
      continue
    if j < len(new) and new[j] == 1:
      j += 1
      continue
    if i >= len(old) or j >= len(new):
      break
    pi, pj, bi, bj = old[i], new[j], [i], [j]
    i, j = i + 1, j + 1
    while pi != pj and (i < len(old) or j < len(new)):
      if pi < pj and i < len(old):
        pi, i = pi * old[i], i + 1
        bi.append(i - 1)
      elif j < len(new):
        pj, j = pj * new[j], j + 1
        bj.append(j - 1)
      else:
        break
    held = frozenset().union(*(axes[k] for k in bi))
    for k in bj:
      res[k] = held
  return tuple(res), frozenset(gone)


def view_through(eqn, view: View) -> list[View]:
  """The views of a view op's outputs."""
  p, name, axes = eqn.params, eqn.primitive.name, view.axes
  shape_in = eqn.invars[0].aval.shape
  if name == "reshape":
    new_axes, gone = _reshape_axes(shape_in, eqn.outvars[0].aval.shape, axes)
    return [View(view.leaf, new_axes, view.gone | gone)]
  if name == "transpose":
    return [View(view.leaf, tuple(axes[a] for a in p["permutation"]), view.gone)]
  if name == "squeeze":
    dims = {d % len(axes) for d in p["dimensions"]}
    gone = frozenset().union(*(axes[d] for d in dims)) if dims else frozenset()
    return [View(view.leaf, tuple(a for d, a in enumerate(axes) if d not in dims),
                 view.gone | gone)]
  if name == "broadcast_in_dim":
    new = [frozenset()] * len(p["shape"])
    for i, d in enumerate(p["broadcast_dimensions"]):
      new[d] = axes[i]
    return [View(view.leaf, tuple(new), view.gone)]
  return [view] * len(eqn.outvars)  # casts, slices, split, copy: axes unchanged


def is_token(eqn, k: int, view: View, shape) -> bool:
  """Whether operand ``k`` of a ``dot_general`` of two parameters is a learned token.

  A token is the activation side of the product: its free axes (neither
  contracted nor batch) hold a single entry of the leaf (a ``(1, 1, d)`` CLS or
  probe token) or repeat the leaf (tiled or broadcast over a batch: a MAP head's
  probe, a Perceiver's latents). A weight's free axes hold its fan-out.
  """
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  contract, batch = (lc, lb) if k == 0 else (rc, rb)
  sizes = eqn.invars[k].aval.shape
  free = [a for a in range(len(sizes)) if a not in contract and a not in batch]
  size = lambda a: math.prod(shape[la] for la in view.axes[a])
  return math.prod(size(a) for a in free) == 1 or any(sizes[a] > size(a) for a in free)


def dot_use(eqn, k: int, view: View, other, ndim: int, gathered: bool = False,
            joined: bool = False) -> Use:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  contract, batch = (lc, lb) if k == 0 else (rc, rb)
  free = tuple(a for a in range(len(view.axes)) if a not in contract and a not in batch)
  detail = f"dot_general contracting {tuple(contract)}"
  c = _classify(view, {"fan_in": tuple(contract), "fan_out": free, "batch": tuple(batch)},
                ndim, detail)
  if not c["fan_in"]:
    raise Unresolved(f"{detail}: no leaf axis is contracted")
  fan_out, batch = c["fan_out"], c["batch"]
  stack = tuple(a for a in fan_out if a < min(c["fan_in"]))
  if stack and len(stack) < len(fan_out):  # (E, d_in, d_out): a free axis in front is a stack
    fan_out, batch = tuple(a for a in fan_out if a not in stack), sorted_tuple({*batch, *stack})
    detail += f", leaf axes {stack} in front of the contracted ones a stack"
  if view.gone and gathered:
    detail += f" of the slices gathered on {sorted_tuple(view.gone)}"
  out_axis = None
  mine = [a for a in free if set(view.axes[a]) & set(fan_out)]
  if len(fan_out) == 1 and len(mine) == 1 and not joined:  # result: batch, lhs free, rhs free
    lhs_free = eqn.invars[0].aval.ndim - len(lc) - len(lb)
    out_axis = len(lb) + (0 if k == 0 else lhs_free) + free.index(mine[0])
  if joined:
    detail += " of parameters joined by concatenate"
  return Use(view.leaf, "dot", detail, c["fan_in"], fan_out, batch, input=other.raw,
             out_axis=out_axis)


def gathered_view(eqn, view: View) -> View | None:
  """The view of a gather's result that takes whole slices of a leaf (``jnp.take(w, i, 0)``).

  The indexed leaf axes are gone (batch axes); the index axes hold no leaf axis.
  ``None`` for a gather that takes windows smaller than the leaf's other axes, or
  slices of fewer than two axes (the rows of an embedding table).
  """
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  shape = eqn.invars[0].aval.shape
  dropped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
  kept = [a for a in range(len(shape)) if a not in dropped]
  if (len(kept) < 2 or any(sizes[a] != shape[a] for a in kept)
      or set(dn.start_index_map) - dropped):
    return None
  out = [frozenset()] * len(eqn.outvars[0].aval.shape)
  for d, a in zip(dn.offset_dims, kept, strict=True):
    out[d] = view.axes[a]
  gone = frozenset().union(*(view.axes[a] for a in dropped))
  return View(view.leaf, tuple(out), view.gone | gone)


def conv_use(eqn, view: View, other, ndim: int) -> Use:
  p = eqn.params
  groups = p["feature_group_count"]
  rhs = p["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
  grouped = f", feature_group_count={groups}" if groups > 1 else ""
  detail = (f"conv_general_dilated kernel spatial {tuple(rhs[2:])}, in-feature ({rhs[1]},),"
            f" out-feature ({rhs[0]},){grouped}")
  if p["batch_group_count"] > 1:
    raise Unresolved(f"conv_general_dilated with batch_group_count={p['batch_group_count']}"
                     " (a convolution over batch groups has no matrix view)")
  c = _classify(view, {"fan_in": tuple(rhs[2:]) + (rhs[1],), "fan_out": (rhs[0],)}, ndim, detail)
  if groups > 1 and len(c["fan_out"]) != 1:
    raise Unresolved(f"{detail}: the out-feature axis holds leaf axes {c['fan_out']}; the"
                     " groups need one leaf axis to split")
  fan_in = tuple(la for d in tuple(rhs[2:]) + (rhs[1],) for la in sorted(view.axes[d]))
  return Use(view.leaf, "conv", detail, fan_in, c["fan_out"], c["batch"], input=other.raw,
             groups=groups)


def gather_use(eqn, view: View, ndim: int) -> Use:
  dn = eqn.params["dimension_numbers"]
  idx = tuple(dn.start_index_map)
  rest = tuple(a for a in range(len(view.axes)) if a not in idx
               and a not in dn.operand_batching_dims)
  detail = f"gather on {idx} by integer indices"
  c = _classify(view, {"fan_in": idx, "fan_out": rest,
                       "batch": tuple(dn.operand_batching_dims)}, ndim, detail)
  return Use(view.leaf, "embed", detail, c["fan_in"], c["fan_out"], c["batch"])
