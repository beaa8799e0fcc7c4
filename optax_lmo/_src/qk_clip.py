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


def _targets(tree, projections, heads: int | None, heads_axis: int) -> list[list[_Target]]:
  """Per leaf of ``tree`` (in ``jax.tree.leaves`` order): the projections' sections in it."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [path_str(p) for p, _ in flat]
  out: list[list[_Target]] = [[] for _ in flat]
  for role, (pattern, section, sections) in projections:
    hits = [i for i, path in enumerate(paths) if re.search(pattern, path)]
    if not hits:
      raise ValueError(f"qk_clip: {role}={pattern!r} matches no parameter; give a regex searched"
                       f" in the '/'-joined paths, which look like {paths[:3]}.")
    for i in hits:
      shape = tuple(getattr(flat[i][1], "shape", ()))
      if not -len(shape) <= heads_axis < len(shape):
        raise ValueError(f"{paths[i]}: heads_axis={heads_axis} is out of range for shape {shape}"
                         f" (matched by {role}={pattern!r}).")
      length = shape[heads_axis]
      size, per = length // sections, heads or 1
      if length % sections or size % per:
        raise ValueError(f"{paths[i]}: axis {heads_axis} of shape {shape} does not split into"
                         f" {sections} section(s) of {per} equal head block(s); check heads= and"
                         f" the (regex, section, sections) of {role}.")
      t = _Target(role, section * size, size, size // per if heads is None else heads)
      if any(o.start == t.start for o in out[i]):
        raise ValueError(f"{paths[i]}: matched by both query and key in the same section; give"
                         " a fused kernel's parts as (regex, section, sections) triples.")
      out[i].append(t)
  counts = {r: sum(t.role == r for ts in out for t in ts) for r in ("query", "key")}
  if counts["query"] != counts["key"]:
    raise ValueError(f"qk_clip: query matches {counts['query']} projection(s) and key"
                     f" {counts['key']}; every layer needs both (the matched paths:"
                     f" {[p for p, ts in zip(paths, out, strict=True) if ts]}).")
  sizes = {r: {t.size for ts in out for t in ts if t.role == r} for r in ("query", "key")}
  if sizes["query"] != sizes["key"]:
    raise ValueError(f"qk_clip: the query kernels span {sorted(sizes['query'])} along heads_axis"
                     f" and the key kernels {sorted(sizes['key'])}; each key head must match a"
                     " query head (grouped-query attention is not supported).")
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
    heads_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
  r"""After the step, scales each head's query and key weights so its largest logit is ``tau``.

  .. math::
    \gamma_h = \min\Bigl(1, \frac{\tau}{S_h}\Bigr), \qquad
    W_q^h \leftarrow \sqrt{\gamma_h}\, W_q^h, \qquad W_k^h \leftarrow \sqrt{\gamma_h}\, W_k^h

  where ``S_h`` is head ``h``'s largest pre-softmax logit ``q . k / sqrt(d_head)``
  (over batch, query and key positions, as the model computes it) and ``W`` the
  weights after the step (parameters plus the incoming updates). The returned
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
      kernel, ``-2`` (or ``1``) of ``(d_model, n_heads, d_head)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``; its
    ``update`` needs ``params`` and ``max_logits``. To inject ``tau`` with
    ``optax.inject_hyperparams``, pass ``static_args=("heads", "heads_axis")``.

  Raises:
    ValueError: at construction, a ``tau`` that is not a finite number ``> 0``;
      at ``init``, a pattern that matches nothing, a heads axis that does not
      split into the heads, unequal numbers or sizes of query and key kernels; at
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

  def init_fn(params):
    _targets(params, projections, heads, heads_axis)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, max_logits=None, **extra_args):
    del extra_args
    if params is None or max_logits is None:
      raise ValueError("qk_clip rescales params + updates by the heads' max logits: call"
                       " update(updates, state, params, max_logits={layer path: (n_heads,)}).")
    if not isinstance(max_logits, Mapping):
      raise ValueError(f"qk_clip: max_logits must map a layer's path prefix to its (n_heads,)"
                       f" max logits, e.g. {{'blocks/0/attn': s_H}}; got {type(max_logits)}.")
    found = _targets(params, projections, heads, heads_axis)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    tau_ = jnp.asarray(tau, jnp.float32)
    roles_of: dict[str, set[str]] = {k: set() for k in max_logits}
    out = []
    for (path, p), u, targets in zip(flat, treedef.flatten_up_to(updates), found, strict=True):
      if not targets:
        out.append(u)
        continue
      name = path_str(path)
      layer = _layer(name, max_logits)
      if layer is None:
        raise ValueError(f"{name}: max_logits has no entry for this leaf's layer; add one keyed"
                         f" by a prefix of its path (keys given: {sorted(max_logits)}).")
      s_max = jnp.asarray(max_logits[layer], jnp.float32)
      pieces, pos, axis = [], 0, heads_axis % p.ndim
      for t in sorted(targets, key=lambda t: t.start):
        roles_of[layer].add(t.role)
        if s_max.shape != (t.n_heads,):
          raise ValueError(f"{name}: its {t.role} has {t.n_heads} heads along axis {heads_axis}"
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
