"""Which leaf gets which norm, radius, learning-rate multiplier, decay and matrix view.

Rules are an ordered list of ``(pattern, Group)`` pairs matched with
``re.search`` against the leaf path (``"blocks/0/attn/qkv/kernel"``), or a
callable ``(path, leaf) -> Group | None``. The first match wins. Nothing is
guessed silently: with ``strict=True`` an unmatched leaf is an error naming it,
and :func:`describe` prints what every leaf gets.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

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
    decay: weight decay in the uSCG spelling ``W <- W - lr (rho u + decay W)``;
      ``None`` takes the optimizer's default.
    spec: the matrix view; ``None`` takes the norm's default (Flax layout for 2-D).
    role: what the leaf does in the model (``"embedding"``, ``"input"``,
      ``"hidden"``, ``"output"``, ``"tied"``, ``"vector"``); informational,
      shown by :func:`describe`. ``None``: not stated.
    evidence: why the leaf got this group (e.g. the traced ops that use it, or
      ``"name rule"``); shown by :func:`describe`.
  """

  norm: norms_lib.Norm | None
  radius: float = 1.0
  lr_mult: float = 1.0
  decay: float | None = None
  spec: MatrixSpec | None = None
  role: str | None = None
  evidence: str = ""

  def __post_init__(self):
    if self.norm is not None and not isinstance(self.norm, norms_lib.Norm):
      raise TypeError(f"Group.norm must be an optax_lmo.norms.Norm or None, got {self.norm!r}.")
    for name in ("radius", "lr_mult", "decay"):
      v = getattr(self, name)
      if isinstance(v, (int, float)) and not (np.isfinite(v) and v >= 0):
        raise ValueError(f"Group.{name} must be a finite number >= 0, got {v}.")


RuleList = Sequence[tuple[str, Group]]
RuleFn = Callable[[str, Any], Group | None]


@dataclasses.dataclass(frozen=True)
class Rules:
  """An ordered rule list (or a callable) plus what to do with unmatched leaves.

  Attributes:
    rules: ``[(regex, Group), ...]`` searched in order against the leaf path, or
      a callable ``(path, leaf) -> Group | None``.
    fallback: a callable ``(path, leaf) -> Group | None`` used when no rule
      matches (``None``: no fallback).
    strict: raise on a leaf that neither a rule nor the fallback matches.
  """

  rules: RuleList | RuleFn = ()
  fallback: RuleFn | None = None
  strict: bool = True

  def __post_init__(self):
    if not callable(self.rules):
      pairs = tuple((p, g) for p, g in self.rules)
      for p, g in pairs:
        re.compile(p)
        if not isinstance(g, Group):
          raise TypeError(f"Rule {p!r} must map to a Group, got {g!r}.")
      object.__setattr__(self, "rules", pairs)

  def group_for(self, path: str, leaf) -> Group | None:
    """The group of one leaf, or ``None`` when nothing matches and not strict."""
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
          " (pattern, Group(...)) rule for it, or pass strict=False."
      )
    if g is not None and g.norm is not None and g.spec is None and g.norm.needs_matrix:
      if np.ndim(leaf) >= 3 and not isinstance(g.norm, norms_lib.SpectralConv):
        raise ValueError(
            f"{path}: ndim {np.ndim(leaf)} needs a MatrixSpec (which axes are fan-in?);"
            " give the matching Group a spec=MatrixSpec(fan_in=..., fan_out=...)."
        )
    return g

  def resolve(self, tree) -> Any:
    """A pytree like ``tree`` holding each leaf's :class:`Group` (or ``None``)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    groups = [self.group_for(spec_lib.path_str(p), x) for p, x in flat]
    return jax.tree.unflatten(treedef, groups)

  def field(self, name: str, default=None) -> Callable:
    """A callable ``tree -> pytree`` of one Group attribute (``None`` where unmatched)."""

    def fn(tree):
      flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
      out = []
      for p, x in flat:
        g = self.group_for(spec_lib.path_str(p), x)
        v = None if g is None else getattr(g, name)
        out.append(default if v is None else v)
      return treedef.unflatten(out)

    return fn


def as_rules(rules: Rules | RuleList | RuleFn | None) -> Rules:
  """Normalizes the ``rules=`` argument of the optimizers."""
  if rules is None:
    return default_rules()
  if isinstance(rules, Rules):
    return rules
  return Rules(rules, fallback=None, strict=True)


_EMBED = re.compile(r"(^|/)(\w*embed\w*|wte|wpe|tok_embeddings)(/|$)")
_HEAD = re.compile(r"(^|/)(head|lm_head|unembed|output|out_proj_vocab)(/|$)")


def default_rules(
    *,
    embed_radius: float = 1.0,
    hidden_radius: float = 1.0,
    output_radius: float = 1.0,
    bias_radius: float = 1.0,
    output_norm: str = "rownorm",
    strict: bool = True,
) -> Rules:
  """A generic rule set: embeddings ColNorm, output head RowNorm (or Sign), 2-D Spectral.

  Decided per leaf, in order: a leaf under a module named like an embedding
  (``embed``, ``wte``, ...) with ndim 2 -> ColNorm; under ``head`` / ``lm_head``
  / ``unembed`` -> RowNorm (``output_norm="sign"``: Sign); any other 2-D leaf ->
  Spectral; 0-D and 1-D leaves -> BiasRMS. A leaf with ndim >= 3 is an error
  that asks for a MatrixSpec (add an explicit rule).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> params = {"embed": {"embedding": jnp.zeros((50, 8))}, "w": jnp.zeros((8, 8))}
    >>> g = ol.default_rules().resolve(params)
    >>> type(g["embed"]["embedding"].norm).__name__, type(g["w"].norm).__name__
    ('ColNorm', 'Spectral')
  """
  head = _output_norm(output_norm)

  def fallback(path: str, leaf) -> Group | None:
    nd = np.ndim(leaf)
    if nd <= 1:
      return Group(norms_lib.BiasRMS(), radius=bias_radius)
    if nd == 2 and _EMBED.search(path):
      return Group(norms_lib.ColNorm(), radius=embed_radius)
    if nd == 2 and _HEAD.search(path):
      return Group(head, radius=output_radius)
    if nd == 2:
      return Group(norms_lib.Spectral(), radius=hidden_radius)
    raise ValueError(
        f"{path}: ndim {nd} needs a MatrixSpec (which axes are fan-in?); add a rule"
        " (pattern, Group(norm, spec=MatrixSpec(fan_in=..., fan_out=...))) for it."
    )

  return Rules((), fallback=fallback, strict=strict)


def _output_norm(name: str) -> norms_lib.Norm:
  if name == "rownorm":
    return norms_lib.RowNorm()
  if name == "sign":
    return norms_lib.Sign()
  raise ValueError(f"output_norm must be 'rownorm' or 'sign', got {name!r}.")


def gpt_rules(
    *,
    embed_radius: float = 1.0,
    hidden_radius: float = 3.0,
    output_radius: float = 10.0,
    bias_radius: float = 1.0,
    output_norm: str = "rownorm",
    lr_mults: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Rules:
  """Rules for the example GPT (``examples/gpt/model.py``) and models named like it.

  ``embed/embedding`` and ``pos_embed/embedding`` -> ColNorm; ``head/kernel`` ->
  RowNorm (or Sign); every other ``kernel`` -> Spectral; ``scale`` and ``bias``
  -> BiasRMS. Defaults follow the shallow shakespeare_char runs of
  LIONS-EPFL/scion (radii 1, 3, 10). ``lr_mults`` is (input, hidden, output);
  ``(1, 1/8, 1)`` is the [NT] preset. Strict: any other leaf is an error.

  Examples:
    >>> import optax_lmo as ol
    >>> r = ol.gpt_rules()
    >>> r.group_for("blocks/0/attn/qkv/kernel", None).radius
    3.0
  """
  head = _output_norm(output_norm)
  li, lh, lo = lr_mults
  return Rules(
      (
          (r"(^|/)(pos_)?embed/embedding$", Group(norms_lib.ColNorm(), embed_radius, li)),
          (r"(^|/)head/kernel$", Group(head, output_radius, lo)),
          (r"(^|/)kernel$", Group(norms_lib.Spectral(), hidden_radius, lh)),
          (r"(^|/)(scale|bias)$", Group(norms_lib.BiasRMS(), bias_radius, lh)),
      ),
      strict=True,
  )


# Transformations built by the aliases remember their rules here, for describe().
_REGISTRY: dict[int, tuple[Any, Rules, dict]] = {}


def register(tx, rules: Rules, **info) -> Any:
  """Remembers which rules (and state dtype, ...) an optimizer was built with."""
  _REGISTRY[id(tx)] = (tx, rules, info)
  return tx


class Description(list):
  """Rows of :func:`describe`: a list of dicts that prints as a table."""

  COLUMNS = ("path", "shape", "view", "norm", "radius", "lr_mult", "decay", "state")

  def __str__(self):
    rows = [self.COLUMNS] + [tuple(str(r[c]) for c in self.COLUMNS) for r in self]
    widths = [max(len(r[i]) for r in rows) for i in range(len(self.COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(rules_or_tx, params, *, verbose: bool = True) -> Description:
  """One row per leaf: path, shape, matrix view, norm, radius, lr multiplier, decay, state dtype.

  Args:
    rules_or_tx: a :class:`Rules` (or rule list), or an optimizer built by this
      library (``scion``, ``muon``, ...), which remembers its rules.
    params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``).
    verbose: also print the table.

  Returns:
    A :class:`Description` (a list of dicts; ``str()`` gives the table).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> rows = ol.describe(ol.scion(0.1), {"w": jnp.zeros((4, 8))}, verbose=False)
    >>> rows[0]["norm"], rows[0]["view"]
    ('Spectral', '4x8')
  """
  entry = _REGISTRY.get(id(rules_or_tx))
  if entry is not None:
    _, rules, info = entry
  elif hasattr(rules_or_tx, "update") and hasattr(rules_or_tx, "init"):
    raise ValueError(
        "describe() needs Rules or an optimizer built by optax_lmo (scion, muon, ...);"
        f" got a transformation it did not build ({type(rules_or_tx).__name__})."
    )
  else:
    rules, info = as_rules(rules_or_tx), {}
  default_decay = info.get("default_decay", None)
  state_dtype = info.get("mu_dtype", None)
  fallback_name = info.get("fallback", "-")
  rows = Description()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    p = spec_lib.path_str(path)
    shape = tuple(np.shape(leaf))
    g = rules.group_for(p, leaf)
    if g is None or g.norm is None:
      rows.append(dict(path=p, shape=shape, view="-", norm=fallback_name, radius="-",
                       lr_mult="-", decay="-", state="-"))
      continue
    view = g.norm.view(shape, g.spec, p).describe(shape)
    decay = g.decay if g.decay is not None else default_decay
    rows.append(
        dict(
            path=p,
            shape=shape,
            view=view,
            norm=_norm_name(g.norm),
            radius=g.radius,
            lr_mult=g.lr_mult,
            decay="-" if decay is None else decay,
            state="-" if state_dtype is None else np.dtype(state_dtype).name,
        )
    )
  if verbose:
    print(rows)
  return rows


def _norm_name(n: norms_lib.Norm) -> str:
  """``Spectral`` or ``ColNorm(scaled=False)``: the class name plus non-default flags."""
  flags = []
  for f in dataclasses.fields(n):
    v = getattr(n, f.name)
    if f.name != "polar" and v != f.default:
      flags.append(f"{f.name}={v}")
  return n.name + (f"({', '.join(flags)})" if flags else "")
