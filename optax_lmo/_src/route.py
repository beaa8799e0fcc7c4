"""Routing: resolve the rules once per tree, check them at ``init``, build the chain from the plan.

:func:`route` is the transform every optimizer here starts from. At ``init``
it resolves the :class:`~optax_lmo.Rules` against the parameters into a
:class:`~optax_lmo._src.rules.Plan` (each leaf's group), raises for a leaf that
cannot be routed (naming it and the fix), settles every leaf's settings with the
optimizer's options (``settings.settle``) and builds the inner transformation
from that plan. At each ``update``
trace it compares the gradient (and parameter) tree with the one ``init`` saw,
and names the first leaf that is missing, extra or of another shape. The plan
also travels in the state as static metadata, which is how
:func:`~optax_lmo.describe` finds it inside any optax chain or wrapper (or an
``nnx.Optimizer``'s ``opt_state``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lmo._src import rules as rules_lib
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.settings import Options, bind, settle


class Routing:
  """Static metadata of a routed optimizer: the plan ``init`` settled, read by ``update``.

  Not part of the state's arrays: it is the aux data of :class:`RouteState`, so
  it travels with the state through any optax chain or wrapper (and an
  ``nnx.Optimizer``'s ``opt_state``), where :func:`~optax_lmo.describe` finds it.
  ``update`` runs the chain on this plan (resolved once) and checks the updates'
  leaves and shapes against it.

  Two compare equal when they route the same leaves the same way (name,
  fallback, paths, shapes, dtypes, groups and norms). A routing resolved on a placeholder
  (``optax.tree.map_params`` inits on one, with no leaves) equals any routing of
  the same optimizer, so its state lines up with the live one.

  Attributes:
    plan: the :class:`~optax_lmo._src.rules.Plan` settled at ``init``: every leaf's
      settings (an injected value shows as ``"injected"``).
    name: the optimizer's name (``"scion"``, ``"muon"``, ...).
    fallback: what leaves without a norm get (e.g. ``"AdamW"``), or ``None``.
    dtypes: each leaf's dtype at ``init`` (``None`` where it has none), in plan order.
    checks_shapes: ``init`` saw real arrays (or their shapes), so ``update``
      uses this plan and checks the updates against it; ``False`` for a placeholder.
  """

  def __init__(self, plan, name: str, fallback: str | None = None,
               dtypes: tuple | None = None, checks_shapes: bool = False):
    self.plan = plan
    self.name = name
    self.fallback = fallback
    self.dtypes = dtypes if dtypes is not None else (None,) * len(plan.paths)
    self.checks_shapes = checks_shapes
    # What routes a leaf (its group, and its norm with the polar options), not the values an
    # optimizer may inject (weight decay, keep probability): an injected optimizer's state
    # lines up with the plain one's.
    self._key = (name, fallback, plan.treedef, plan.paths, plan.shapes, self.dtypes,
                 tuple(map(repr, plan.groups)),
                 tuple(repr(leaf.norm) for leaf in plan.leaves or ()))

  def __eq__(self, other):
    if self is other:
      return True
    if not isinstance(other, Routing) or (self.name, self.fallback) != (other.name,
                                                                         other.fallback):
      return False
    return not (self.checks_shapes and other.checks_shapes) or self._key == other._key

  def __hash__(self):
    return hash((Routing, self.name, self.fallback))

  def __repr__(self):
    return f"Routing({self.name}, {len(self.plan.paths)} leaves)"


@jax.tree_util.register_pytree_with_keys_class
class RouteState:
  """State of :func:`route`: the inner state, plus :class:`Routing` as static metadata."""

  def __init__(self, inner: optax.OptState, routing: Routing):
    self.inner = inner  # the inner transformation's state
    self.routing = routing  # static: no arrays

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey("inner"), self.inner),), self.routing

  def tree_flatten(self):
    return (self.inner,), self.routing

  @classmethod
  def tree_unflatten(cls, routing, children):
    return cls(children[0], routing)

  def __repr__(self):
    return f"RouteState(inner={self.inner!r}, routing={self.routing!r})"


def route(
    rules: Any,
    build: Callable[[rules_lib.Plan], optax.GradientTransformation],
    *,
    name: str = "route",
    options: Options | None = None,
    needs_norm: bool = True,
    fallback: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Resolves ``rules`` per tree, settles the plan with ``options``, runs ``build(plan)``.

  Args:
    rules: a :class:`~optax_lmo.Rules`, a ``[(regex, Group), ...]`` list, a
      callable ``(path, leaf) -> Group`` or ``None`` (:func:`~optax_lmo.default_rules`).
    build: ``plan -> GradientTransformation``; called at ``init`` and at every
      ``update`` trace with the plan settled at ``init`` (a value injected with
      ``optax.inject_hyperparams`` is the one of that call).
    name: the optimizer's name, used in error messages and by ``describe``.
    options: the optimizer's :class:`~optax_lmo._src.settings.Options`; ``None``:
      the groups' own settings only.
    needs_norm: raise at ``init`` for a leaf whose group has no norm.
    fallback: what norm-less leaves get (shown by ``describe``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`RouteState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_lmo as ol
    >>> from optax_lmo._src.route import route
    >>> tx = route(None, lambda plan: ol.scale_by_norm(plan.settings("norm")))
    >>> u, _ = tx.update({"b": jnp.array([3.0, -4.0])}, tx.init({"b": jnp.zeros(2)}))
    >>> [round(float(v), 4) for v in u["b"]]
    [0.8485, -1.1314]
  """
  r = rules_lib.as_rules(rules)

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    dtypes = tuple(getattr(x, "dtype", None) for x in leaves)
    kept = settle(r.plan(params), options, dtypes, static=True)
    _check(kept, params, name, needs_norm)
    # A placeholder (optax.tree.map_params inits on one placeholder node, with no leaves)
    # has no shapes to check updates against.
    real = bool(leaves) and all(hasattr(x, "shape") for x in leaves)
    state = build(bind(kept, options)).init(params)
    return RouteState(state, Routing(kept, name, fallback, dtypes, real))

  def update_fn(updates, state, params=None, **extra_args):
    # At trace time (shapes are static): a gradient unlike the parameters is named here,
    # not by a broadcasting error deep in the chain.
    routing = state.routing
    if routing.checks_shapes:  # the plan resolved at init serves every update
      _match(routing.plan, updates, name, "gradient")
      if params is not None:
        _match(routing.plan, params, name, "parameter passed to update")
      plan = routing.plan
      treedef = jax.tree.structure(updates)
      if treedef != plan.treedef:  # same paths, other containers (nnx.State of Variables)
        plan = dataclasses.replace(plan, treedef=treedef)
    else:  # initialized on a placeholder: resolve for these updates
      plan = settle(r.plan(updates), options, static=True)
    # The plan settled at init; a value injected with inject_hyperparams is this call's.
    tx = optax.with_extra_args_support(build(bind(plan, options)))
    updates, inner = tx.update(updates, state.inner, params, **extra_args)
    return updates, RouteState(inner, state.routing)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check(plan: rules_lib.Plan, params, name: str, needs_norm: bool) -> None:
  """Raises at ``init`` for a leaf the optimizer cannot handle, naming it and the fix."""
  leaves = jax.tree.leaves(params)
  for path, leaf, settled in zip(plan.paths, leaves, plan.leaves, strict=True):
    if settled.norm is None:
      if needs_norm:
        raise ValueError(
            f"{path}: {name} needs a norm for every leaf; give this leaf a Group with a norm"
            " (or use muon, which sends norm-less leaves to AdamW)."
        )
      continue
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{path}: {name} needs floating-point parameters, got dtype {dtype}. Exclude this"
          " leaf from the optimizer (optax.partition / nnx.Optimizer(wrt=nnx.Param))."
      )


def _match(plan: rules_lib.Plan, tree, name: str, what: str) -> None:
  """Raises, naming the first leaf that differs, when ``tree`` is not shaped like ``init``'s."""
  leaves, treedef = jax.tree.flatten(tree)
  shapes = tuple(tuple(np.shape(x)) for x in leaves)
  if treedef == plan.treedef and shapes == plan.shapes:
    return  # the common case, without building path strings
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = tuple(spec_lib.path_str(p) for p, _ in flat)
  if paths != plan.paths:  # containers may differ (an nnx.State of Variables vs plain arrays)
    known, given = set(plan.paths), set(paths)
    missing = [p for p in plan.paths if p not in given]
    extra = [p for p in paths if p not in known]
    if missing:
      raise ValueError(
          f"{missing[0]}: the {what} has no leaf for this parameter ({name} was initialized"
          f" with {len(plan.paths)} leaves, the {what} has {len(paths)}). Pass a tree with the"
          " structure of the parameters given to init (or init with the parameters you train)."
      )
    if extra:
      raise ValueError(
          f"{extra[0]}: the {what} has a leaf that the parameters given to {name}'s init did"
          " not have. Pass a tree with their structure (or init with the parameters you train)."
      )
    i = next(i for i, (p, q) in enumerate(zip(paths, plan.paths, strict=True)) if p != q)
    raise ValueError(
        f"{paths[i]}: the {what}'s leaves come in another order than the parameters given to"
        f" {name}'s init (where they have {plan.paths[i]}); pass a tree with their structure."
    )
  for path, got, want in zip(plan.paths, shapes, plan.shapes, strict=True):
    if got != want:
      raise ValueError(
          f"{path}: {what} shape {got} does not match the parameter's {want} (the shape"
          f" {name} was initialized with). A transposed leaf, or a tree from another model?"
      )
