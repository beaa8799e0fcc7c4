r"""QK-clip (MuonClip): caps each attention head's largest logit by scaling its query and key.

:func:`qk_clip` is chained after an optimizer. The model reports, per layer and
head, the largest pre-softmax logit of the step's forward pass; after the step,
every head above ``tau`` has its query and key weights scaled so that its logit
scales by ``tau / S_max``. Heads at or below ``tau`` keep the optimizer's
update bit for bit.

References:
  Kimi Team, Kimi K2: Open Agentic Intelligence, arXiv:2507.20534, 2025 (MuonClip).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import checks
from optax_lmo._src import rules as rules_lib
from optax_lmo._src.spec import path_str

Projection = str | tuple[str, int, int]  # a regex, or (regex, section, sections) of a fused kernel


class _Target(NamedTuple):
  """One projection's section of a matched leaf."""

  role: str  # "query" or "key"
  start: int  # where the section begins on the heads axis
  size: int  # its length there
  n_heads: int  # heads in it (size // heads per head block)


def _parse(role: str, projection: Projection) -> tuple[str, int, int]:
  if isinstance(projection, str):
    return projection, 0, 1
  if (isinstance(projection, tuple) and len(projection) == 3 and isinstance(projection[0], str)
      and all(isinstance(i, int) for i in projection[1:]) and 0 <= projection[1] < projection[2]):
    return projection
  raise ValueError(f"qk_clip: {role} must be a regex or a (regex, section, sections) triple with"
                   f" 0 <= section < sections (a fused kernel: {role} is section `section` of"
                   f" `sections` equal ones along heads_axis), got {projection!r}.")


class _Leaf(NamedTuple):
  """A matched leaf: the axis its heads lie along, and the sections on it."""

  axis: int  # the heads axis (non-negative)
  said: str  # how the axis was chosen, for messages: "axis -1", "axis 0 (the routing's fan-out)"
  targets: list  # [_Target]


def _heads_axis(path: str, leaf, role: str, pattern: str, heads: int | None,
                heads_axis: int | None, rules) -> tuple[int, str, tuple[int, ...]]:
  """``(axis, said, fan_out)`` of a matched kernel: from the routing, else ``heads_axis``."""
  shape = tuple(getattr(leaf, "shape", ()))
  fan_out = None
  if rules is not None:
    g = rules.group_for(path, leaf)
    if g is None or g.norm is None:
      raise ValueError(f"{path}: the rules route no norm to this leaf (matched by {role}="
                       f"{pattern!r}), so they cannot say which axis holds its heads; route it,"
                       " or pass heads_axis= instead of rules=.")
    fan_out = tuple(g.norm.view(shape, g.spec, path).fan_out)
    axis = fan_out[0]
    if heads is not None and len(fan_out) != 1:
      raise ValueError(f"{path}: the routing gives fan-out axes {fan_out} of shape {shape};"
                       f" heads={heads} cuts one axis into head blocks. Pass heads=None for a"
                       " kernel with an explicit heads axis, or heads_axis= to choose one.")
    if heads_axis is not None and heads_axis % max(len(shape), 1) != axis:
      raise ValueError(f"{path}: heads_axis={heads_axis} is not the fan-out axis {axis} that the"
                       f" routing gives for shape {shape} (a kernel stored fan-out first, as"
                       " GPT-2's Conv1D (3d, d), is cut along axis 0); drop heads_axis= and let"
                       " rules= decide.")
    return axis, f"axis {axis} (the routing's fan-out)", fan_out
  axis = -1 if heads_axis is None else heads_axis
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"{path}: heads_axis={axis} is out of range for shape {shape}"
                     f" (matched by {role}={pattern!r}).")
  return axis % len(shape), f"axis {axis}", tuple(range(axis % len(shape), len(shape)))


def _sections(path, shape, axis, said, role, pattern, section, sections, heads) -> _Target:
  length = shape[axis]
  size, per = length // sections, heads or 1
  if length % sections or size % per:
    raise ValueError(f"{path}: {said} of shape {shape} does not split into {sections}"
                     f" section(s) of {per} equal head block(s); check heads= and the (regex,"
                     f" section, sections) of {role}.")
  return _Target(role, section * size, size, size // per if heads is None else heads)


def _bias_axis(path: str, shape, kernel_path: str, kernel_shape, axis: int, fan_out) -> int:
  """The axis of a kernel's sibling bias that holds the kernel's heads axis.

  The bias is added to the product's fan-out axes in order; a 1-D bias of the same
  length is cut as the kernel's axis.
  """
  at = fan_out.index(axis) if len(shape) == len(fan_out) else 0 if len(shape) == 1 else None
  if at is None or shape[at] != kernel_shape[axis]:
    raise ValueError(f"{path}: the bias of {kernel_path} has shape {shape}, and no axis of it"
                     f" has the length {kernel_shape[axis]} of the kernel's heads axis {axis}:"
                     " that axis is not the kernel's fan-out (a kernel stored fan-out first, as"
                     " GPT-2's Conv1D (3d, d), holds its heads on axis 0). Pass rules= (from"
                     " ol.infer_rules) so qk_clip cuts the fan-out axis the routing gives.")
  return at


def _targets(tree, projections, heads: int | None, heads_axis: int | None,
             rules=None) -> list[_Leaf | None]:
  """Per leaf of ``tree`` (in ``jax.tree.leaves`` order): its heads axis and sections.

  A matched kernel's sibling ``bias`` (same parent, named ``bias``) is cut the same
  way: the bias is added after the product, so the head's logit scales by
  ``tau / S`` only when its q and k biases scale with the kernels.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [path_str(p) for p, _ in flat]
  out: list[_Leaf | None] = [None for _ in flat]
  fan_outs: dict[int, tuple] = {}
  for role, (pattern, section, sections) in projections:
    hits = [i for i, path in enumerate(paths) if re.search(pattern, path)]
    if not hits:
      raise ValueError(f"qk_clip: {role}={pattern!r} matches no parameter; give a regex searched"
                       f" in the '/'-joined paths, which look like {paths[:3]}.")
    for i in hits:
      shape = tuple(getattr(flat[i][1], "shape", ()))
      if out[i] is None:
        axis, said, fan_outs[i] = _heads_axis(paths[i], flat[i][1], role, pattern, heads,
                                              heads_axis, rules)
        out[i] = _Leaf(axis, said, [])
      t = _sections(paths[i], shape, out[i].axis, out[i].said, role, pattern, section,
                    sections, heads)
      if any(o.start == t.start for o in out[i].targets):
        raise ValueError(f"{paths[i]}: matched by both query and key in the same section; give"
                         " a fused kernel's parts as (regex, section, sections) triples.")
      out[i].targets.append(t)
  counts = {r: sum(t.role == r for leaf in out if leaf for t in leaf.targets)
            for r in ("query", "key")}
  if counts["query"] != counts["key"]:
    raise ValueError(f"qk_clip: query matches {counts['query']} projection(s) and key"
                     f" {counts['key']}; every layer needs both (the matched paths:"
                     f" {[p for p, leaf in zip(paths, out, strict=True) if leaf]}).")
  sizes = {r: {t.size for leaf in out if leaf for t in leaf.targets if t.role == r}
           for r in ("query", "key")}
  if sizes["query"] != sizes["key"]:
    raise ValueError(f"qk_clip: the query kernels span {sorted(sizes['query'])} along heads_axis"
                     f" and the key kernels {sorted(sizes['key'])}; each key head must match a"
                     " query head (grouped-query attention is not supported).")
  where = {path: i for i, path in enumerate(paths)}
  for i, leaf in list(enumerate(out)):
    b = where.get(paths[i].rsplit("/", 1)[0] + "/bias") if "/" in paths[i] else None
    if leaf is None or b is None or out[b] is not None:
      continue  # no sibling bias, or one its own pattern matched
    shape = tuple(getattr(flat[b][1], "shape", ()))
    axis = _bias_axis(paths[b], shape, paths[i], tuple(flat[i][1].shape), leaf.axis,
                      fan_outs[i])
    out[b] = _Leaf(axis, f"axis {axis}", list(leaf.targets))
  return out


def _layer(path: str, keys) -> str | None:
  """The longest key of ``max_logits`` that is a whole-component prefix of ``path``."""
  found = [k for k in keys if path == k or path.startswith(k.rstrip("/") + "/") or k == ""]
  return max(found, key=len, default=None)


def qk_clip(
    tau: jax.typing.ArrayLike,
    *,
    query: Projection,
    key: Projection,
    heads: int | None = None,
    heads_axis: int | None = None,
    rules=None,
) -> optax.GradientTransformationExtraArgs:
  r"""After the step, scales each head's query and key weights so its largest logit is ``tau``.

  .. math::
    \gamma_h = \min\Bigl(1, \frac{\tau}{S_h}\Bigr), \qquad
    W_q^h \leftarrow \sqrt{\gamma_h}\, W_q^h, \qquad W_k^h \leftarrow \sqrt{\gamma_h}\, W_k^h

  where ``S_h`` is head ``h``'s largest pre-softmax logit ``q . k / sqrt(d_head)``
  (over batch, query and key positions, as the model computes it) and ``W`` the
  weights after the step (parameters plus the incoming updates). A matched
  kernel's sibling ``bias`` (same parent, named ``bias``) scales with it, since
  ``q = x W_q + b_q``: only then does the head's logit scale by ``gamma_h``. The returned
  update is ``(params + updates) * s - params`` on a clipped head's block and
  ``updates`` itself elsewhere, so heads with ``S_h <= tau`` (and every other
  leaf) move exactly as without ``qk_clip``. A non-finite ``S_h`` clips nothing.

  ``update`` takes the extra argument ``max_logits``: a mapping from a layer's
  path prefix (``"blocks/0/attn"``: ``/``-joined keys, as in :func:`~optax_lmo.describe`)
  to that layer's ``(n_heads,)`` maximum logits; each matched leaf takes the
  longest key that is a prefix of its path, so one entry serves a layer's
  separate query and key kernels or its fused ``qkv`` one. ``optax.chain`` and
  ``nnx.Optimizer.update(model, grads, max_logits=...)`` pass it through.
  Compute it under ``jax.lax.stop_gradient``.

  Args:
    tau: the logit cap, a finite number ``> 0`` (Kimi K2 uses 100).
    query: a regex searched in each parameter's path that picks the query kernels,
      or ``(regex, section, sections)`` for a fused kernel whose ``heads_axis``
      holds ``sections`` equal parts (``(r"attn/qkv/kernel$", 0, 3)`` for
      ``[q | k | v]``).
    key: the same for the key kernels (``(r"attn/qkv/kernel$", 1, 3)``). Every
      key kernel has as many heads as its query kernel (no grouped-query
      attention).
    heads: the number of heads of a head-merged kernel (Flax's
      ``(d_model, n_heads * d_head)``): ``heads_axis`` (or a fused kernel's section
      of it) splits into ``heads`` contiguous equal blocks, one per head. ``None``:
      the kernel has an explicit heads axis (``(d_model, n_heads, d_head)``),
      one index per head.
    heads_axis: the axis the heads lie along: the fan-out axis ``-1`` of a merged
      kernel, ``-2`` (or ``1``) of ``(d_model, n_heads, d_head)``. ``None`` (the
      default): the fan-out axis the ``rules`` give each kernel, else ``-1``.
    rules: the routing (``ol.infer_rules(...)``, a :class:`~optax_lmo.Rules` or
      ``[(regex, Group)]`` pairs): each matched kernel is cut along the first
      fan-out axis of its matrix view, so a kernel stored fan-out first (GPT-2's
      Conv1D ``(3d, d)``) is cut along axis 0. ``None``: ``heads_axis``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``; its
    ``update`` needs ``params`` and ``max_logits``. To inject ``tau`` with
    ``optax.inject_hyperparams``, pass ``static_args=("heads", "heads_axis")``.

  Raises:
    ValueError: at construction, a ``tau`` that is not a finite number ``> 0``;
      at ``init``, a pattern that matches nothing, a heads axis that does not
      split into the heads, a ``heads_axis`` that is not the routing's fan-out,
      a sibling bias with no axis of the heads' length, unequal numbers or
      sizes of query and key kernels; at
      ``update``, a matched leaf without a ``max_logits`` entry, an entry of
      another head count, or one that matches no leaf.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optax_lmo as ol
    >>> params = {"attn": {"q": {"kernel": jnp.ones((2, 4))}, "k": {"kernel": jnp.ones((2, 4))}}}
    >>> tx = ol.contrib.qk_clip(100.0, query=r"q/kernel$", key=r"k/kernel$", heads=2)
    >>> zero = jax.tree.map(jnp.zeros_like, params)
    >>> u, _ = tx.update(zero, tx.init(params), params,
    ...                  max_logits={"attn": jnp.array([400.0, 50.0])})
    >>> optax.apply_updates(params, u)["attn"]["k"]["kernel"][0].tolist()  # head 0: sqrt(1/4)
    [0.5, 0.5, 1.0, 1.0]

  References:
    Kimi Team, Kimi K2: Open Agentic Intelligence, arXiv:2507.20534, 2025.
  """
  checks.hyperparams("qk_clip", tau=tau)
  projections = (("query", _parse("query", query)), ("key", _parse("key", key)))
  if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1):
    raise ValueError(f"qk_clip: heads must be a positive int or None (an explicit heads axis),"
                     f" got {heads!r}.")

  routing = None if rules is None else rules_lib.as_rules(rules)

  def init_fn(params):
    _targets(params, projections, heads, heads_axis, routing)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, max_logits=None, **extra_args):
    del extra_args
    if params is None or max_logits is None:
      raise ValueError("qk_clip rescales params + updates by the heads' max logits: call"
                       " update(updates, state, params, max_logits={layer path: (n_heads,)}).")
    if not isinstance(max_logits, Mapping):
      raise ValueError(f"qk_clip: max_logits must map a layer's path prefix to its (n_heads,)"
                       f" max logits, e.g. {{'blocks/0/attn': s_H}}; got {type(max_logits)}.")
    found = _targets(params, projections, heads, heads_axis, routing)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    tau_ = jnp.asarray(tau, jnp.float32)
    roles_of: dict[str, set[str]] = {k: set() for k in max_logits}
    out = []
    for (path, p), u, leaf in zip(flat, treedef.flatten_up_to(updates), found, strict=True):
      if leaf is None:
        out.append(u)
        continue
      targets, axis = leaf.targets, leaf.axis
      name = path_str(path)
      layer = _layer(name, max_logits)
      if layer is None:
        raise ValueError(f"{name}: max_logits has no entry for this leaf's layer; add one keyed"
                         f" by a prefix of its path (keys given: {sorted(max_logits)}).")
      s_max = jnp.asarray(max_logits[layer], jnp.float32)
      pieces, pos = [], 0
      for t in sorted(targets, key=lambda t: t.start):
        roles_of[layer].add(t.role)
        if s_max.shape != (t.n_heads,):
          raise ValueError(f"{name}: its {t.role} has {t.n_heads} heads along {leaf.said}"
                           f" but max_logits[{layer!r}] has shape {s_max.shape}; check heads="
                           f" and heads_axis= (expected shape ({t.n_heads},)).")
        scale = jnp.sqrt(tau_ / jnp.maximum(s_max, tau_))  # exactly 1 where s_max <= tau
        scale = jnp.where(jnp.isfinite(s_max), scale, 1.0)
        per_head = t.size // t.n_heads  # broadcast, not jnp.repeat (which jax 0.8 refuses here)
        pieces += [jnp.ones(t.start - pos),
                   jnp.broadcast_to(scale[:, None], (t.n_heads, per_head)).reshape(-1)]
        pos = t.start + t.size
      pieces.append(jnp.ones(p.shape[axis] - pos))
      s = jnp.concatenate(pieces).reshape([-1 if a == axis else 1 for a in range(p.ndim)])
      dt = jnp.promote_types(u.dtype, jnp.float32)
      clipped = ((p.astype(dt) + u.astype(dt)) * s - p.astype(dt)).astype(u.dtype)
      out.append(jnp.where(s < 1, clipped, u))
    for layer, roles in roles_of.items():
      if roles != {"query", "key"}:
        what = "no query or key leaf" if not roles else f"only {next(iter(roles))} leaves"
        raise ValueError(f"qk_clip: max_logits[{layer!r}] is a path prefix of {what}; key it"
                         " by the layer that holds both its query and key kernels.")
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["qk_clip"]
