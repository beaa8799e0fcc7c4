"""Routing: resolve the rules once per tree, check them at ``init``, build the chain from the plan.

:func:`route` is the transform every optimizer here starts from. At ``init``
it resolves the :class:`~optax_lmo.Rules` against the parameters into a
:class:`~optax_lmo._src.rules.Plan` (each leaf's group), raises for a leaf that
cannot be routed (naming it and the fix), and builds the inner transformation
from the plan: plain pytrees of norms, radii and decays. At each ``update``
trace it compares the gradient (and parameter) tree with the one ``init`` saw,
and names the first leaf that is missing, extra or of another shape. The plan
also travels in the state as static metadata, which is how
:func:`~optax_lmo.describe` finds it inside any optax chain or wrapper (or an
``nnx.Optimizer``'s ``opt_state``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lmo._src import rules as rules_lib
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.polar import Polar


class Routing:
  """Static metadata of a routed optimizer, read by :func:`~optax_lmo.describe`.

  Not part of the state's structure: any two compare equal, so a state built
  from a placeholder (``optax.tree.map_params``) or a checkpoint template
  matches the live one. The computation never reads it (it re-resolves the
  rules, cached per tree structure); ``update`` only checks the updates' leaves
  and shapes against its plan, when ``init`` saw real arrays.

  Attributes:
    plan: the :class:`~optax_lmo._src.rules.Plan` resolved at ``init``.
    name: the optimizer's name (``"scion"``, ``"muon"``, ...).
    fallback: what leaves without a norm get (e.g. ``"AdamW"``), or ``None``.
    mu_dtype: the ``mu_dtype`` argument (``None``: follows the parameters).
    decay: the optimizer's default decay as a Python number, or ``None`` when
      it is an injected (traced) value.
    keep_prob: the optimizer's keep probability for spectral leaves: a number,
      ``None`` (no sampling) or ``"injected"``.
    dtypes: each leaf's dtype at ``init`` (``None`` where it has none), in plan order.
    checks_shapes: ``init`` saw real arrays, so ``update`` checks the updates'
      leaves and shapes against the plan (not for a placeholder tree).
  """

  def __init__(self, plan, name: str, fallback: str | None, mu_dtype: Any, decay: Any,
               keep_prob: Any = None, dtypes: tuple | None = None, checks_shapes: bool = False):
    self.plan = plan
    self.checks_shapes = checks_shapes
    self.dtypes = dtypes if dtypes is not None else (None,) * len(plan.paths)
    self.name = name
    self.fallback = fallback
    self.mu_dtype = mu_dtype
    self.decay = decay if isinstance(decay, (int, float)) else None
    # A number, None (no sampling) or "injected" (a traced value).
    self.keep_prob = keep_prob if keep_prob is None or isinstance(keep_prob, (int, float)) \
        else "injected"

  def __eq__(self, other):
    return isinstance(other, Routing)

  def __hash__(self):
    return hash(Routing)

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
    polar: Polar | None = None,
    needs_norm: bool = True,
    fallback: str | None = None,
    mu_dtype: Any = None,
    decay: Any = None,
    keep_prob: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Resolves ``rules`` per tree and runs the transformation ``build(plan)``.

  Args:
    rules: a :class:`~optax_lmo.Rules`, a ``[(regex, Group), ...]`` list, a
      callable ``(path, leaf) -> Group`` or ``None`` (:func:`~optax_lmo.default_rules`).
    build: ``plan -> GradientTransformation``; called at ``init`` and at every
      ``update`` trace (so it may read injected hyperparameters).
    name: the optimizer's name, used in error messages and by ``describe``.
    polar: :class:`~optax_lmo.Polar` options put into every spectral norm of the plan.
    needs_norm: raise at ``init`` for a leaf whose group has no norm.
    fallback: what norm-less leaves get (shown by ``describe``).
    mu_dtype, decay, keep_prob: shown by ``describe``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`RouteState`.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> tx = ol.route(None, lambda plan: ol.scale_by_norm(plan.tree(lambda g: g.norm)))
    >>> u, _ = tx.update({"b": jnp.array([3.0, -4.0])}, tx.init({"b": jnp.zeros(2)}))
    >>> [round(float(v), 4) for v in u["b"]]
    [0.8485, -1.1314]
  """
  r = rules_lib.as_rules(rules)

  def plan_of(tree):
    return r.plan(tree).with_polar(polar)

  def init_fn(params):
    plan = plan_of(params)
    _check(plan, params, name, needs_norm)
    leaves = jax.tree.leaves(params)
    dtypes = tuple(getattr(x, "dtype", None) for x in leaves)
    # A placeholder (optax.tree.map_params inits on one placeholder node, with no leaves)
    # has no shapes to check updates against.
    real = bool(leaves) and all(hasattr(x, "shape") for x in leaves)
    routing = Routing(plan, name, fallback, mu_dtype, decay, keep_prob, dtypes, real)
    return RouteState(build(plan).init(params), routing)

  def update_fn(updates, state, params=None, **extra_args):
    # At trace time (shapes are static): a gradient unlike the parameters is named here,
    # not by a broadcasting error deep in the chain.
    if state.routing.checks_shapes:
      _match(state.routing.plan, updates, name, "gradient")
      if params is not None:
        _match(state.routing.plan, params, name, "parameter passed to update")
    tx = optax.with_extra_args_support(build(plan_of(updates)))
    updates, inner = tx.update(updates, state.inner, params, **extra_args)
    return updates, RouteState(inner, state.routing)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check(plan: rules_lib.Plan, params, name: str, needs_norm: bool) -> None:
  """Raises at ``init`` for a leaf the optimizer cannot handle, naming it and the fix."""
  leaves = jax.tree.leaves(params)
  for path, leaf, g in zip(plan.paths, leaves, plan.groups, strict=True):
    if g is None or g.norm is None:
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
