"""The template's per-leaf transformations: the LMO, the radius, the constrained decay.

Each is an ``optax.GradientTransformationExtraArgs`` taking one value per leaf
(or one for every leaf); the optimizers chain them after the momentum
(``momentum.py``)::

    momentum(beta) -> scale_by_norm(norms) -> scale_by_radius(rho)
      [-> add_constrained_decay(1.0)]  -> optax.scale_by_learning_rate(lr)
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from optax_lmo._src import checks
from optax_lmo._src import exchange as exchange_lib
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.norms import Norm, Sign, Spectral
from optax_lmo._src.polar import Polar
from optax_lmo._src.spec import MatrixSpec

PerLeaf = Any  # one value for every leaf, or a pytree of values matched to the updates by path


def per_leaf(x: PerLeaf, updates, *, kind: type | tuple = (), what: str = "value") -> list:
  """One entry of ``x`` per leaf of ``updates``.

  ``x`` is ``None`` (every leaf gets ``None``), a single value (a number, an
  array or an instance of ``kind``: broadcast to every leaf), or a pytree whose
  leaves are matched to the leaves of ``updates`` by path, so a tree built for
  the whole parameter tree also serves a masked part of it (``optax.partition``).
  ``None`` entries leave a leaf alone.

  Raises:
    ValueError: a leaf of ``updates`` has no entry in ``x``.
  """
  if x is None:
    return [None] * len(jax.tree.leaves(updates))
  is_value = lambda y: y is None or (bool(kind) and isinstance(y, kind))
  values, treedef = jax.tree.flatten(x, is_leaf=is_value)
  if jax.tree_util.treedef_is_leaf(treedef):
    return [x] * len(jax.tree.leaves(updates))
  if treedef == jax.tree.structure(updates):
    return values  # built for this very tree (the plan's trees): no paths to match
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  entries = jax.tree_util.tree_flatten_with_path(x, is_leaf=is_value)[0]
  by_path = {spec_lib.path_str(p): v for p, v in entries}
  out = []
  for p, _ in flat:
    key = spec_lib.path_str(p)
    if key not in by_path:
      raise ValueError(
          f"{key}: the {what} tree has no entry for this leaf of the updates. Give one {what}"
          " per leaf (None to leave a leaf alone), or a single value for every leaf."
      )
    out.append(by_path[key])
  return out


def _check_float(g, path: str):
  if not jnp.issubdtype(jnp.asarray(g).dtype, jnp.floating):
    raise TypeError(
        f"{path}: an LMO needs a floating-point gradient, got dtype {jnp.asarray(g).dtype}."
        " Map this leaf to None (no LMO) or exclude it from the optimizer."
    )


def scale_by_norm(
    norms: Norm | PerLeaf,
    *,
    specs: MatrixSpec | PerLeaf = None,
    dual_clip: PerLeaf = None,
    dual_scale: bool = False,
    batch: bool = True,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each leaf by the unit-radius LMO of its norm.

  .. math::
    u = \mathrm{lmo}(g) = \arg\max_{\|x\| \le 1} \langle g, x \rangle

  With ``dual_clip`` (a radius ``rho`` per leaf) the direction is scaled by
  ``min(1, ||g||_* / rho)``, the dual norm taken per matrix as ``<g, lmo(g)>``;
  followed by :func:`scale_by_radius` this gives the clipped step
  ``min(rho, ||g||_*) lmo(g)`` of clipped Scion.

  With ``dual_scale=True`` the direction is multiplied by that dual norm:
  ``||g||_* lmo(g)``, the steepest-descent step under the norm ([S] eq. 7; for
  the spectral norm the PolarGrad step ``||g||_nuc polar(g)``). It costs nothing
  beyond the LMO.

  Each norm computes its own LMO on a stack of matrices (``Norm.lmo_matrices``).
  A norm whose LMO needs whole matrices (``Norm.whole_matrices``: Spectral and
  SpectralConv) splits it into that part (``whole_lmo_matrices``: the polar
  factor) and a scale (``lmo_scale``: the dimension factor): the part runs for
  the leaves of one norm and matrix shape in one batched call (``batch=True``;
  on a mesh each matrix whole on one owner device), the scale where the data is.

  ``update`` takes an optional extra argument ``keep``: a pytree of booleans
  matched to the updates by path (``None`` entries: always computed), as
  :func:`~optax_lmo.contrib.drop_leaves` passes it. A spectral leaf whose entry is
  false gets a zero direction without running its LMO: sampled leaves
  are batched apart from the others, each under ``lax.cond`` on one device and
  one ``lax.cond`` per matrix on its owner on a mesh.

  Args:
    norms: a :class:`~optax_lmo.norms.Norm` for every leaf, or a pytree of norms
      matched to the updates by path (``None`` leaves pass through untouched).
    specs: a :class:`~optax_lmo.MatrixSpec` per leaf, in the same forms; ``None``
      takes each norm's default view (an error for ndim >= 3 matrix norms).
    dual_clip: ``None``, or the radius per leaf for the clipped step.
    dual_scale: multiply each direction by its dual norm (steepest descent).
    batch: stack same-norm, same-shape whole-matrix leaves into one call.
    distribute: give each whole matrix one owner device on the mesh the
      updates live on (see ``exchange.py``); ``None``: when that mesh has more
      than one device, ``False``: never.
    exchange_dtype: the dtype the whole matrices travel in to their owners
      and back, e.g. ``jnp.bfloat16`` (half the bytes of both all-to-alls; each
      element picks up a relative rounding error of at most 2^-8 each way);
      the polar factor still runs at its own dtype (the
      :class:`~optax_lmo.Polar`'s, float32 by default). ``None``: float32.
      Static. Off a mesh nothing travels and it changes nothing. Under
      ``optax.inject_hyperparams`` name it in ``static_args`` (dtypes like
      ``jnp.bfloat16`` are callable, so they would be taken for schedules).

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> tx = ol.scale_by_norm({"w": ol.norms.Spectral(), "b": ol.norms.BiasRMS()})
    >>> g = {"w": jnp.ones((4, 8)), "b": jnp.array([3.0, -4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> [round(float(v), 4) for v in u["b"]]
    [0.8485, -1.1314]
  """

  wire = exchange_lib.check_dtype(exchange_dtype, "scale_by_norm")
  checks.each_leaf("scale_by_norm", "dual_clip", dual_clip)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, keep=None, **extra_args):
    del params, extra_args
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
    norm_l = per_leaf(norms, updates, kind=Norm, what="norm")
    spec_l = per_leaf(specs, updates, kind=MatrixSpec, what="MatrixSpec")
    clip_l = per_leaf(dual_clip, updates, what="dual_clip radius")
    keep_l = per_leaf(keep, updates, what="keep mask")
    finish = lambda idx, u, st: _finish(out[idx], u, clip_l[idx], st, dual_scale)
    out = [g for _, g in flat]
    whole: dict[Any, list] = {}  # (norm, shape[, "keep"]) -> [(index, stack)]
    for idx, ((path, g), nrm) in enumerate(zip(flat, norm_l, strict=True)):
      if nrm is None:
        continue
      p = spec_lib.path_str(path)
      if not isinstance(nrm, Norm):
        raise TypeError(f"{p}: expected a Norm or None, got {nrm!r}.")
      _check_float(g, p)
      st = nrm.to_stack(g, spec_l[idx], path=p)
      if nrm.whole_matrices:  # batched by norm and shape, on owner devices on a mesh
        sampled = keep_l[idx] is not None  # skipped when dropped: its own group
        key = (nrm, st.matrices.shape[1:] if batch else idx) + (("keep",) if sampled else ())
        whole.setdefault(key, []).append((idx, st))
      else:  # row-local LMOs run where the data lives
        out[idx] = finish(idx, nrm.lmo_matrices(st.matrices), st)
    stacks = [[st.matrices for _, st in items] for items in whole.values()]
    mesh = exchange_lib.find_mesh([m for ms in stacks for m in ms], distribute)
    keeps = [[keep_l[idx] for idx, _ in items] for items in whole.values()]
    lmos = exchange_lib.lmo_stacks(
        [key[0].whole_lmo_matrices for key in whole], stacks, mesh, exchange_dtype=wire,
        keeps=keeps)
    for (nrm, *_), items, us in zip(whole, whole.values(), lmos, strict=True):
      for (idx, st), u in zip(items, us, strict=True):
        out[idx] = finish(idx, nrm.lmo_scale(*u.shape[-2:]) * u, st)
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _finish(g, u, clip, st, dual_scale=False):
  """The stack LMO ``u`` of ``g`` back in leaf shape, scaled or clipped by the dual norm."""
  u = st.weight * u
  if clip is not None or dual_scale:  # <g, lmo(g)> per matrix of the view, over its blocks
    dual = st.per_view(jnp.sum(st.matrices * u, axis=(-2, -1))).sum(axis=-1, keepdims=True)
    scale = dual if dual_scale else 1.0
    if clip is not None:
      scale = scale * jnp.minimum(1.0, dual / jnp.asarray(clip, jnp.float32))
    u = u * jnp.broadcast_to(scale, dual.shape[:-1] + (st.blocks,)).reshape(-1, 1, 1)
  return st.unstack(u).astype(g.dtype)


def orthogonalize(
    *,
    method: str = "auto",
    coeffs: Any = "polar_express",
    steps: int | None = None,
    dtype: Any = None,
    precision: Any = None,
    input_layer: bool = False,
    scaled: bool = True,
    specs: MatrixSpec | PerLeaf = None,
    distribute: bool | None = None,
    exchange_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The spectral LMO on every leaf: ``sqrt(d_out/d_in) * polar(g)`` in Flax layout.

  .. math::
    u = \sqrt{d_{out}/d_{in}}\; U V^\top, \qquad g = U \Sigma V^\top

  ``scaled=False`` returns ``polar(g)`` itself. Leaves with ndim != 2 need a
  :class:`~optax_lmo.MatrixSpec` in ``specs``; 0-D and 1-D leaves are an error
  (route them elsewhere with ``optax.partition`` or use :func:`scale_by_norm`).

  Args:
    method, coeffs, steps, dtype, precision: see :class:`~optax_lmo.Polar`.
    input_layer: use the input-layer factor ``max(1, sqrt(d_out/d_in))``.
    scaled: apply the dimension factor.
    specs: matrix views, as in :func:`scale_by_norm`.
    distribute: whole-matrix ownership on a mesh, as in :func:`scale_by_norm`.
    exchange_dtype: the dtype of that exchange, as in :func:`scale_by_norm`.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, optax_lmo as ol
    >>> g = jax.random.normal(jax.random.key(0), (32, 32))
    >>> u, _ = ol.orthogonalize(method="svd").update(g, None)
    >>> round(float(jax.numpy.linalg.norm(u, ord=2)), 4)
    1.0
  """
  pol = Polar(method=method, coeffs=coeffs, steps=steps, dtype=dtype, precision=precision)
  nrm = Spectral(input_layer=input_layer, scaled=scaled, polar=pol)
  return scale_by_norm(nrm, specs=specs, distribute=distribute, exchange_dtype=exchange_dtype)


def sign(*, scaled: bool = False, specs: MatrixSpec | PerLeaf = None):
  r"""Sign descent direction: ``sign(g)`` (or ``sign(g) / d_in`` with ``scaled=True``).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> u, _ = ol.sign().update(jnp.array([0.3, -2.0, 0.0]), None)
    >>> u.tolist()
    [1.0, -1.0, 0.0]
  """
  return scale_by_norm(Sign(scaled=scaled), specs=specs)


def scale_by_radius(radius: chex.Numeric | PerLeaf) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies each leaf by its radius ``rho``: ``u <- rho * u``.

  Args:
    radius: one number (or array), or a pytree of them matched to the updates
      by path (``None`` leaves are left alone).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> u, _ = ol.scale_by_radius({"a": 2.0, "b": None}).update(
    ...     {"a": jnp.ones(2), "b": jnp.ones(2)}, None)
    >>> u["a"].tolist(), u["b"].tolist()
    ([2.0, 2.0], [1.0, 1.0])
  """
  return scale_each("scale_by_radius", "radius", radius)


def scale_each(where: str, name: str, factors: PerLeaf) -> optax.GradientTransformationExtraArgs:
  """Multiplies each leaf by its factor (``None``: left alone); ``name`` picks the check.

  The radius (:func:`scale_by_radius`) and a group's learning-rate multiplier are such
  factors.
  """
  checks.each_leaf(where, name, factors)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    fac = per_leaf(factors, updates, what=name)
    leaves, treedef = jax.tree.flatten(updates)
    out = [
        g if r is None else (jnp.asarray(r, jnp.float32) * g).astype(g.dtype)
        for g, r in zip(leaves, fac, strict=True)
    ]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def add_constrained_decay(weight_decay: chex.Numeric | PerLeaf = 1.0):
  r"""Adds ``weight_decay * W`` to the update: the shrink of constrained Scion (SCG).

  Chained before ``optax.scale_by_learning_rate(lr)`` with ``weight_decay=1`` it
  turns ``W <- W - lr rho u`` into SCG's

  .. math::
    W \leftarrow (1 - \gamma_t)\, W - \gamma_t\, \rho\, u

  with the scheduled learning rate ``gamma_t``, which keeps ``||W|| <= rho``.
  Other values give uSCG with weight decay ``mu`` (equal to SCG with radius
  ``rho / mu`` and learning rate ``mu * gamma``).

  Args:
    weight_decay: one number (or array), or a pytree of them matched to the
      updates by path (``None``: no decay on that leaf).

  Examples:
    >>> import jax.numpy as jnp, optax_lmo as ol
    >>> u, _ = ol.add_constrained_decay().update(jnp.zeros(2), None, jnp.ones(2))
    >>> u.tolist()
    [1.0, 1.0]
  """
  checks.each_leaf("add_constrained_decay", "weight_decay", weight_decay)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    wd = per_leaf(weight_decay, updates, what="weight_decay")
    if all(w is None for w in wd):
      return updates, state
    if params is None:
      raise ValueError(
          "add_constrained_decay needs the parameters: call tx.update(grads, state, params)."
      )
    u_l, treedef = jax.tree.flatten(updates)
    p_l = treedef.flatten_up_to(params)
    out = [
        u if w is None else (u + jnp.asarray(w, jnp.float32) * p).astype(u.dtype)
        for u, p, w in zip(u_l, p_l, wd, strict=True)
    ]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_float32_state(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` on float32 copies of updates and params, so its state is float32.

  Low-precision (bf16, fp16) parameters keep float32 optimizer state; the
  updates come back in each leaf's own dtype.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_lmo as ol
    >>> from optax_lmo._src.transforms import with_float32_state
    >>> tx = with_float32_state(optax.adam(0.1))
    >>> tx.init(jnp.zeros(2, jnp.bfloat16))[0].nu.dtype
    dtype('float32')
  """
  f32 = lambda t: jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, t
  )

  def init_fn(params):
    return inner.init(f32(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    out, state = inner.update(f32(updates), state, None if params is None else f32(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
