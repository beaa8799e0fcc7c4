"""Which leaf gets which norm, radius, learning-rate multiplier, decay and matrix view.

Rules are an ordered list of ``(pattern, Group)`` pairs matched with
``re.search`` against the leaf path (``"blocks/0/attn/qkv/kernel"``), or a
callable ``(path, leaf) -> Group | None``. The first match wins. Nothing is
guessed silently: with ``strict=True`` an unmatched leaf is an error naming it,
and :func:`~optax_lmo.describe` shows what every leaf gets. A :class:`Rules`
resolves once per tree structure into a :class:`Plan` that the transforms read.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from optax_lmo._src import checks
from optax_lmo._src import conv as conv_lib
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.spec import MatrixSpec


@dataclasses.dataclass(frozen=True)
class Group:
  """What a group of leaves gets.

  Attributes:
    norm: the leaf's norm (its LMO gives the direction); ``None`` routes the
      leaf to the optimizer's fallback (AdamW in :func:`~optax_lmo.muon`; an
      error in Scion, which needs a norm for every leaf).
    radius: ``rho``, the radius of the norm ball (the step scale).
    lr_mult: multiplies the learning rate for this group.
    weight_decay: ``mu`` in the uSCG spelling ``W <- W - lr (rho u + mu W)``;
      ``None`` takes the optimizer's (1 in :func:`~optax_lmo.scion`). The old
      keyword ``decay=`` still works, with a ``DeprecationWarning``.
    spec: the matrix view; ``None`` takes the norm's default (Flax layout for 2-D).
    role: what the leaf does in the model (``"embedding"``, ``"input"``,
      ``"hidden"``, ``"output"``, ``"tied"``, ``"vector"``, ``"gain"``); informational,
      shown by :func:`describe`. ``None``: not stated.
    evidence: why the leaf got this group (e.g. the traced ops that use it, or
      ``"name rule"``); shown by :func:`describe`.
    keep_prob: probability that the leaf is updated at a step (randomized layer
      updates, :func:`~optax_lmo.contrib.drop_leaves`); ``None`` takes the optimizer's
      ``keep_prob`` for spectral leaves and 1 for the rest.
  """

  norm: norms_lib.Norm | None
  radius: float = 1.0
  lr_mult: float = 1.0
  weight_decay: float | None = None
  spec: MatrixSpec | None = None
  role: str | None = None
  evidence: str = ""
  keep_prob: float | None = None

  def __post_init__(self):
    if self.norm is not None and not isinstance(self.norm, norms_lib.Norm):
      raise TypeError(f"Group.norm must be an optax_lmo.norms.Norm or None, got {self.norm!r}.")
    checks.hyperparams("Group", radius=self.radius, lr_mult=self.lr_mult,
                       weight_decay=self.weight_decay, keep_prob=self.keep_prob)


_group_init = Group.__init__


@functools.wraps(_group_init)
def _init_with_old_names(self, *args, decay=None, **kwargs):
  if decay is not None:  # the old name of weight_decay
    warnings.warn("Group(decay=...) is deprecated: use Group(weight_decay=...) (renamed in"
                  " 0.3.0; the old keyword goes in 0.4.0).", DeprecationWarning, stacklevel=2)
    if kwargs.get("weight_decay") is not None or len(args) >= 4:
      raise TypeError("Group: give weight_decay= or its old name decay=, not both.")
    kwargs["weight_decay"] = decay
  _group_init(self, *args, **kwargs)


def _old_decay(self) -> float | None:
  warnings.warn("Group.decay is deprecated: read Group.weight_decay (renamed in 0.3.0).",
                DeprecationWarning, stacklevel=2)
  return self.weight_decay


Group.__init__ = _init_with_old_names
Group.decay = property(_old_decay)
RuleList = Sequence[tuple[str, Group]]
_PLANS_KEPT = 16  # plans a Rules keeps (one per tree structure and leaf shapes)
RuleFn = Callable[[str, Any], Group | None]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Each leaf's :class:`Group` for one tree structure, and at ``init`` its every setting.

  :meth:`Rules.plan` matches the rules (``groups``); an optimizer's ``init``
  settles them with its options into ``leaves`` (``settings.settle``), which is
  all the chain, :func:`~optax_lmo.describe` and Drop-Muon read.

  Attributes:
    treedef: the tree structure the plan was resolved for.
    paths: each leaf's path (``"blocks/0/attn/qkv/kernel"``), in flattening order.
    shapes: each leaf's shape.
    groups: each leaf's :class:`Group` (``None`` where no rule matched and not strict).
    leaves: each leaf's settings (a ``settings.Leaf``), once settled; else ``None``.
    sampled: settled with a keep probability given (Drop-Muon's draws in the state).
  """

  treedef: Any
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  groups: tuple[Group | None, ...]
  leaves: tuple[Any, ...] | None = None
  sampled: bool = False

  def tree(self, fn: Callable[[Group], Any]) -> Any:
    """A pytree shaped like the resolved tree holding ``fn(group)`` (``None`` where no group)."""
    return self.treedef.unflatten([None if g is None else fn(g) for g in self.groups])

  def settings(self, name: str) -> Any:
    """A pytree shaped like the resolved tree holding each leaf's setting ``name``
    (``"norm"``, ``"radius"``, ...); the plan must be settled."""
    if self.leaves is None:
      raise ValueError("This plan holds the rules' groups only: settle it first.")
    return self.treedef.unflatten([getattr(leaf, name) for leaf in self.leaves])


@dataclasses.dataclass(frozen=True)
class Rules:
  """An ordered rule list (or a callable) plus what to do with unmatched leaves.

  Attributes:
    rules: ``[(regex, Group), ...]`` searched in order against the leaf path, or
      a callable ``(path, leaf) -> Group | None``.
    fallback: a callable ``(path, leaf) -> Group | None`` used when no rule
      matches (``None``: no fallback).
    strict: raise on a leaf that neither a rule nor the fallback matches.
    check: called once with each new :class:`Plan` (e.g. to warn about a tree
      without an output head).
  """

  rules: RuleList | RuleFn = ()
  fallback: RuleFn | None = None
  strict: bool = True
  check: Callable[[Plan], None] | None = None

  def __post_init__(self):
    if not callable(self.rules):
      pairs = tuple((p, g) for p, g in self.rules)
      for p, g in pairs:
        re.compile(p)
        if not isinstance(g, Group):
          raise TypeError(f"Rule {p!r} must map to a Group, got {g!r}.")
      object.__setattr__(self, "rules", pairs)
    object.__setattr__(self, "_plans", collections.OrderedDict())

  def group_for(self, path: str, leaf) -> Group | None:
    """The group of one leaf, or ``None`` when nothing matches and not strict.

    Raises:
      ValueError: strict and nothing matches, or the group's norm cannot view
        the leaf (e.g. ndim >= 3 without a :class:`~optax_lmo.MatrixSpec`).
    """
    g = None
    if callable(self.rules):
      g = self.rules(path, leaf)
    else:
      for pattern, group in self.rules:
        if re.search(pattern, path):
          g = group
          break
    if g is None and self.fallback is not None:
      g = self.fallback(path, leaf)
    if g is None and self.strict:
      raise ValueError(
          f"{path}: no rule matches this leaf (shape {tuple(np.shape(leaf))}). Add a"
          " (pattern, Group(...)) rule for it, use ol.infer_rules(...) to route from the"
          " model's computation, or pass strict=False."
      )
    if g is not None and g.norm is not None and leaf is not None:
      _check_view(path, np.shape(leaf), g)
    return g

  def plan(self, tree) -> Plan:
    """Resolves every leaf of ``tree`` once (cached per tree structure and leaf shapes).

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (parameters or updates).

    Returns:
      A :class:`Plan`.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    key = (treedef, tuple(tuple(np.shape(x)) for _, x in flat))
    cached = self._plans.get(key)
    if cached is not None:
      self._plans.move_to_end(key)
      return cached
    paths = tuple(spec_lib.path_str(p) for p, _ in flat)
    groups = tuple(self.group_for(p, x) for p, (_, x) in zip(paths, flat, strict=True))
    plan = Plan(treedef, paths, tuple(tuple(np.shape(x)) for _, x in flat), groups)
    if self.check is not None:
      self.check(plan)
    self._plans[key] = plan
    if len(self._plans) > _PLANS_KEPT:  # a bounded cache: the least recently used goes
      self._plans.popitem(last=False)
    return plan

  def resolve(self, tree) -> Any:
    """A pytree like ``tree`` holding each leaf's :class:`Group` (or ``None``)."""
    return self.plan(tree).tree(lambda g: g)


def _check_view(path: str, shape, g: Group) -> None:
  """Raises early, naming the leaf and the fix, when a group's norm cannot view the leaf."""
  try:
    g.norm.view(tuple(shape), g.spec, path)
  except ValueError as e:
    hint = ""
    if g.spec is None and len(shape) >= 3:
      hint = (" Give the matching Group a spec=MatrixSpec(fan_in=..., fan_out=...), or let"
              " ol.infer_rules(...) read the view from the model's computation.")
      if len(shape) == 4:
        hint += " A conv kernel (kh, kw, c_in, c_out) takes norms.SpectralConv()."
    raise ValueError(f"{e}{hint}") from None


def as_rules(rules: Rules | RuleList | RuleFn | None) -> Rules:
  """Normalizes the ``rules=`` argument of the optimizers (``None``: :func:`default_rules`)."""
  if rules is None:
    return default_rules()
  if isinstance(rules, Rules):
    return rules
  return Rules(rules, fallback=None, strict=True)


_EMBED = re.compile(r"(^|/)(\w*embed\w*|wte|wpe|tok_embeddings)(/|$)")
_HEAD = re.compile(r"(^|/)(head|lm_head|unembed|out_proj_vocab)(/|$)|^output(/|$)")
_PATCH = re.compile(r"(^|/)patch_embed\w*(/|$)")


def _named_role(path: str, ndim: int) -> str:
  """The role a leaf's name suggests: gain, vector, input, output, embedding or hidden."""
  if ndim <= 1:  # a normalization layer's `scale` multiplies activations: a gain
    return "gain" if path.rsplit("/", 1)[-1] == "scale" else "vector"
  if _PATCH.search(path):
    return "input"
  if _HEAD.search(path):
    return "output"
  if _EMBED.search(path):
    return "embedding"
  return "hidden"


def _warn_without_head(plan: Plan) -> None:
  roles = {g.role for g in plan.groups if g is not None}
  if "hidden" in roles and "output" not in roles:
    warnings.warn(
        "default_rules found no output head (no leaf under head / lm_head / unembed or a"
        " top-level output): every 2-D leaf gets the hidden Spectral norm, which trains a"
        " classifier head badly. Use ol.infer_rules(...) to route from the model's"
        " computation, or name the head (or write a rule for it).",
        stacklevel=4,
    )


# The default radius per role: constrained Scion's best runs of ``benchmarks/ablation.py``
# (1000 steps of a 4-layer character GPT, at lr 2^-11; docs/radii.md).
EMBED_RADIUS, HIDDEN_RADIUS, OUTPUT_RADIUS, BIAS_RADIUS = 1.0, 48.0, 160.0, 1.0
# Unconstrained Scion's default hidden and head radii: with no weight decay only lr x radius
# matters, and its best 1000-step learning rate at these radii was 2^-7 (convergence.json).
USCG_HIDDEN_RADIUS, USCG_OUTPUT_RADIUS = 3.0, 10.0


@functools.cache
def default_rules(
    *,
    embed_radius: float = EMBED_RADIUS,
    hidden_radius: float = HIDDEN_RADIUS,
    output_radius: float = OUTPUT_RADIUS,
    bias_radius: float = BIAS_RADIUS,
    output_norm: str = "rownorm",
    strict: bool = True,
) -> Rules:
  """A generic rule set by module name: the no-trace fallback of :func:`~optax_lmo.infer_rules`.

  Decided per leaf: 0-D and 1-D leaves -> BiasRMS; a leaf under ``patch_embed``
  -> the input-layer Spectral (``SpectralConv`` with radius ``hidden_radius * kh * kw``
  for a 4-D kernel, as :func:`~optax_lmo.infer_rules` gives it); under ``head``
  / ``lm_head`` / ``unembed`` or a top-level ``output`` -> RowNorm
  (``output_norm="sign"``: Sign); under a module named like an embedding
  (``embed``, ``wte``, ...) -> ColNorm; any other 2-D leaf -> Spectral. A leaf
  with ndim >= 3 is an error that asks for a MatrixSpec (or ``SpectralConv`` for
  a conv kernel). A tree in which no head is found gets a warning: names cannot
  tell a classifier's last ``Dense_2`` from a hidden layer; the traced
  computation can (:func:`~optax_lmo.infer_rules`).

  Args:
    embed_radius, hidden_radius, output_radius, bias_radius: radius per role;
      the defaults are :func:`~optax_lmo.infer_rules`'s (``docs/radii.md``).
    output_norm: ``"rownorm"`` or ``"sign"`` for the head.
    strict: raise on leaves nothing matches (kept for symmetry with :class:`Rules`).

  Returns:
    A :class:`Rules`.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> params = {"embed": {"embedding": jnp.zeros((50, 8))}, "w": jnp.zeros((8, 8)),
    ...           "head": {"kernel": jnp.zeros((8, 50))}}
    >>> g = ol.default_rules().resolve(params)
    >>> type(g["w"].norm).__name__, type(g["head"]["kernel"].norm).__name__
    ('Spectral', 'RowNorm')
    >>> g["embed"]["embedding"].role
    'embedding'
  """
  head = head_norm(output_norm)

  def fallback(path: str, leaf) -> Group | None:
    nd = np.ndim(leaf)
    role = _named_role(path, nd)
    g = functools.partial(Group, role=role, evidence="name rule")
    if role in ("vector", "gain"):
      return g(norms_lib.BiasRMS(), radius=bias_radius)
    if role == "input" and nd == 4:  # (kh, kw, c_in, c_out): the radius counts the taps,
      taps = int(np.prod(np.shape(leaf)[:2]))  # as in infer_rules
      return g(conv_lib.SpectralConv(), radius=hidden_radius * taps)
    if nd == 2:
      return {
          "input": lambda: g(norms_lib.Spectral(input_layer=True), radius=hidden_radius),
          "output": lambda: g(head, radius=output_radius),
          "embedding": lambda: g(norms_lib.ColNorm(), radius=embed_radius),
          "hidden": lambda: g(norms_lib.Spectral(), radius=hidden_radius),
      }[role]()
    hint = " A conv kernel (kh, kw, c_in, c_out) takes norms.SpectralConv()." if nd == 4 else ""
    raise ValueError(
        f"{path}: ndim {nd} needs a MatrixSpec (which axes are fan-in?); add a rule"
        " (pattern, Group(norm, spec=MatrixSpec(fan_in=..., fan_out=...))) for it, or let"
        f" ol.infer_rules(...) read the view from the model's computation.{hint}"
    )

  return Rules((), fallback=fallback, strict=strict, check=_warn_without_head)


def head_norm(name: str) -> norms_lib.Norm:
  """The output layer's norm named by an ``output_norm=`` argument (``"rownorm"`` or ``"sign"``)."""
  if name == "rownorm":
    return norms_lib.RowNorm()
  if name == "sign":
    return norms_lib.Sign()
  raise ValueError(f"output_norm must be 'rownorm' or 'sign', got {name!r}.")


def muon_rules(*, radius: float = 1.0, input_layer: bool = False) -> Rules:
  """Default Muon routing: hidden 2-D matrices -> Spectral; embeddings, head, 0-1-D -> AdamW.

  Embeddings and output heads are recognized by module name as in
  :func:`default_rules`; ``input_layer=True`` uses the factor
  ``max(1, sqrt(d_out/d_in))`` (KellerJordan/Muon and ``optax.contrib.muon``).

  Args:
    radius: the spectral radius (Muon's step scale).
    input_layer: use the input-layer factor.

  Returns:
    A :class:`Rules` whose other groups have ``norm=None`` (the fallback optimizer).
  """
  spectral = Group(norms_lib.Spectral(input_layer=input_layer), radius=radius, role="hidden",
                   evidence="name rule")

  def fallback(path, leaf):
    nd = len(getattr(leaf, "shape", ()))
    role = _named_role(path, nd)
    if nd == 2 and role == "hidden":
      return spectral
    return Group(None, role=role, evidence="name rule")

  return Rules((), fallback=fallback, strict=True)
