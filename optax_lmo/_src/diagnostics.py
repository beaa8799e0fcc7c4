"""Operator norms of weight matrices for monitoring training (the [NT] output-norm metric).

Each function views a leaf as a stack of ``(d_in, d_out)`` matrices in Flax layout
(``y = x @ W``) through an optional :class:`~optax_lmo.MatrixSpec` and returns one
norm per matrix: a scalar for a 2-D leaf, an array of the batch shape otherwise.
All are float32, jit-friendly, and scale invariant down to tiny entries (each
matrix is divided by its max-abs entry before anything is squared).

References:
  Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_lmo._src import norms as norms_lib
from optax_lmo._src import numerics
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.spec import MatrixSpec

_HIGHEST = jax.lax.Precision.HIGHEST
# The norms whose formulas the operator norms below are (unit radius, Flax layout).
_RMS_TO_RMS = norms_lib.Spectral()
_ONE_TO_RMS = norms_lib.ColNorm()
_RMS_TO_INF = norms_lib.RowNorm()
_SUP = norms_lib.Sign(scaled=False)
_OUTPUT_NORMS = (norms_lib.RowNorm, norms_lib.Sign)


def _view(w, spec, path, what) -> MatrixSpec:
  return spec_lib.resolve_spec(jnp.shape(w), spec, path, what=what)


def rms_to_inf(w: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
  r"""The RMS -> inf operator norm: the [NT] output-layer norm.

  Column ``i`` of a Flax kernel ``(d_in, d_out)`` holds the weights of output ``i``:

  .. math::
    \|W\|_{RMS \to \infty} = \sqrt{d_{in}}\, \max_i \|W_{:,i}\|_2

  Args:
    w: a leaf; 2-D unless ``spec`` names its fan-in and fan-out axes.
    spec: the matrix view (``None``: Flax layout ``(d_in, d_out)`` for 2-D).
    path: the leaf path, used in error messages.

  Returns:
    A float32 array of the batch shape (a scalar for a 2-D leaf).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_lmo._src import diagnostics
    >>> w = jnp.array([[3., 0.], [4., 1.]])   # columns of norm 5 and 1
    >>> float(diagnostics.rms_to_inf(w))          # sqrt(2) * 5
    7.07106...

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  return _leaf_norms(w, _view(w, spec, path, "rms_to_inf"), ("rms_to_inf",))[0]


def one_to_rms(w: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
  r"""The 1 -> RMS operator norm: the norm of embedding tables (one row per token).

  .. math::
    \|W\|_{1 \to RMS} = \max_j \|W_{j,:}\|_2 / \sqrt{d_{out}}

  Args:
    w: a leaf; 2-D unless ``spec`` names its fan-in and fan-out axes.
    spec: the matrix view (``None``: Flax layout ``(d_in, d_out)`` for 2-D).
    path: the leaf path, used in error messages.

  Returns:
    A float32 array of the batch shape (a scalar for a 2-D leaf).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_lmo._src import diagnostics
    >>> w = jnp.array([[3., 4.], [0., 1.]])   # rows of norm 5 and 1
    >>> float(diagnostics.one_to_rms(w))          # 5 / sqrt(2)
    3.53553...

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  return _leaf_norms(w, _view(w, spec, path, "one_to_rms"), ("one_to_rms",))[0]


def _normalize(v: jax.Array) -> jax.Array:
  return numerics.unit(v, -1)[0]


def _start(k: int, b: int) -> jax.Array:
  # A fixed pseudo-random start: deterministic, and never orthogonal to the top
  # singular vector by structure (as the all-ones vector can be).
  v = np.random.default_rng(0).standard_normal(k).astype(np.float32)
  return jnp.broadcast_to(jnp.asarray(v / np.linalg.norm(v)), (b, k))


def _sigma_max_power(m_BxIxO: jax.Array, iters: int, squaring: bool) -> jax.Array:
  """``sigma_max`` of each matrix (entries <= 1 in abs) by power iteration.

  ``squaring=False``: ``iters`` steps ``v <- W^T W v`` (matrix-vector products).
  ``squaring=True``: on the trace-normalized Gram matrix ``P`` of the short side,
  step ``t`` applies ``P^(2^t)`` to ``v`` and squares ``P``, so ``iters`` steps
  equal ``2^iters - 1`` plain ones.
  """
  b, i, o = m_BxIxO.shape
  a = m_BxIxO if i >= o else jnp.swapaxes(m_BxIxO, -1, -2)  # (B, n, k), k = min(i, o)
  k = a.shape[-1]
  if squaring:

    def trace_normalize(p):
      t = jnp.trace(p, axis1=-2, axis2=-1)[:, None, None]
      return p / jnp.where(t > 0, t, 1.0)

    def body(_, carry):
      p, v = carry
      v = _normalize(jnp.einsum("bkl,bl->bk", p, v, precision=_HIGHEST))
      return trace_normalize(jnp.einsum("bkl,blm->bkm", p, p, precision=_HIGHEST)), v

    gram = jnp.einsum("bnk,bnl->bkl", a, a, precision=_HIGHEST)
    _, v = jax.lax.fori_loop(0, iters, body, (trace_normalize(gram), _start(k, b)))
  else:

    def body(_, v):
      u = jnp.einsum("bnk,bk->bn", a, v, precision=_HIGHEST)
      return _normalize(jnp.einsum("bnk,bn->bk", a, u, precision=_HIGHEST))

    v = jax.lax.fori_loop(0, iters, body, _start(k, b))
  return jnp.linalg.norm(jnp.einsum("bnk,bk->bn", a, v, precision=_HIGHEST), axis=-1)


@functools.partial(jax.jit, static_argnames=("view", "names", "iters", "squaring"))
def _leaf_norms(
    w: jax.Array, view: MatrixSpec, names: tuple[str, ...], iters: int = 12, squaring: bool = True
) -> tuple[jax.Array, ...]:
  """The norms ``names`` of each matrix of ``w`` (one compiled program per leaf shape)."""
  out = []
  for name in names:
    if name == "rms_to_rms":  # Spectral's norm, sigma_max by power iteration instead of SVD
      m = spec_lib.to_matrices(jnp.asarray(w, jnp.float32), view)
      y, peak = numerics.peak_scaled(m, (-2, -1))
      sigma = _sigma_max_power(y, iters, squaring) * peak[:, 0, 0]
      n = sigma / _RMS_TO_RMS.factor(*m.shape[-2:])
      n = n.reshape(spec_lib.batch_shape(jnp.shape(w), view))
    elif name == "one_to_rms":
      n = _ONE_TO_RMS.norm(w, view)
    elif name == "rms_to_inf":
      n = _RMS_TO_INF.norm(w, view)
    else:
      n = _SUP.norm(w, view)
    out.append(n)
  return tuple(out)


def rms_to_rms(
    w: jax.Array,
    spec: MatrixSpec | None = None,
    *,
    iters: int | None = None,
    squaring: bool = True,
    path: str = "",
) -> jax.Array:
  r"""The RMS -> RMS operator norm (scaled spectral norm) by power iteration.

  .. math::
    \|W\|_{RMS \to RMS} = \sqrt{d_{in}/d_{out}}\, \sigma_{\max}(W)

  ``sigma_max`` comes from power iteration from a fixed start vector (no SVD:
  deterministic, one compiled loop of a static length). Up to rounding the
  estimate never exceeds ``sigma_max``; a zero matrix gives 0.

  With ``squaring=True`` (the default) the iteration runs on the Gram matrix of
  the short side, ``k = min(d_in, d_out)``, and squares it at every step, so
  ``iters`` steps (default 12) do the work of ``2^iters - 1`` plain ones:
  float32-accurate even when the top singular values are close, for
  ``O(k^2 max(d_in, d_out) + iters k^3)`` flops. ``squaring=False`` runs
  ``iters`` (default 200) plain steps ``v <- W^T W v``, ``O(iters d_in d_out)``
  flops, for very large matrices; its relative error decays like
  ``(sigma_2 / sigma_1)^(4 iters)``.

  Args:
    w: a leaf; 2-D unless ``spec`` names its fan-in and fan-out axes.
    spec: the matrix view (``None``: Flax layout ``(d_in, d_out)`` for 2-D).
    iters: the number of iteration steps (static; ``None``: 12, or 200 without
      squaring).
    squaring: square the Gram matrix at every step (see above).
    path: the leaf path, used in error messages.

  Returns:
    A float32 array of the batch shape (a scalar for a 2-D leaf).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_lmo._src import diagnostics
    >>> w = jnp.diag(jnp.array([2., 1., 0.5, 0.25]))[:, :2]   # d_in=4, d_out=2
    >>> round(float(diagnostics.rms_to_rms(w)), 5)                 # sqrt(4/2) * 2
    2.82843

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  if iters is None:
    iters = 12 if squaring else 200
  view = _view(w, spec, path, "rms_to_rms")
  return _leaf_norms(w, view, ("rms_to_rms",), int(iters), bool(squaring))[0]


def sup_norm(w: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
  r"""The largest absolute entry (the unscaled 1 -> inf operator norm).

  .. math::
    \|W\|_{\max} = \max_{j,i} |W_{j,i}|

  Args:
    w: any leaf.
    spec: a matrix view whose batch axes are kept (``None``: the whole leaf).
    path: the leaf path, used in error messages.

  Returns:
    A float32 array of the batch shape (a scalar when ``spec`` is ``None``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_lmo._src import diagnostics
    >>> float(diagnostics.sup_norm(jnp.array([[1., -3.], [2., 0.]])))
    3.0
  """
  if spec is None:  # the whole leaf as one (1, size) matrix
    view = MatrixSpec(fan_in=(), fan_out=tuple(range(jnp.ndim(w))))
  else:
    view = _view(w, spec, path, "sup_norm")
  return _leaf_norms(w, view, ("sup",))[0]


NORM_NAMES = ("rms_to_rms", "one_to_rms", "rms_to_inf", "sup")

SpecFn = Callable[[str, Any], MatrixSpec | None]


def _view_for(rules, path: str, leaf) -> tuple[MatrixSpec | None, bool]:
  """The matrix view to report for a leaf (``None``: skip it), and whether it is an output."""
  nd = np.ndim(leaf)
  spec, output = None, False
  if rules is None:
    pass
  elif hasattr(rules, "group_for"):  # an optax_lmo.Rules
    group = rules.group_for(path, leaf)
    if group is not None and group.norm is not None:
      output = group.role == "output" or isinstance(group.norm, _OUTPUT_NORMS)
      spec = group.spec
      if spec is None and nd != 2 and group.norm.needs_matrix:
        spec = group.norm.view(np.shape(leaf), None, path)  # e.g. a conv kernel's view
  elif callable(rules):
    spec = rules(path, leaf)
  else:
    raise TypeError(
        "norm_report(rules=...) takes None, an optax_lmo.Rules or a callable"
        f" (path, leaf) -> MatrixSpec | None; got {type(rules).__name__}."
    )
  if spec is not None:
    return spec.resolve(nd, path), output
  return (MatrixSpec() if nd == 2 else None), output


def norm_report(
    params: Any,
    rules: SpecFn | Any | None = None,
    *,
    norms: Sequence[str] = ("rms_to_rms", "one_to_rms", "rms_to_inf", "sup"),
    iters: int | None = None,
    squaring: bool = True,
) -> dict[str, jax.Array]:
  r"""Operator norms of every matrix leaf, as a flat dict for a metrics logger.

  For each reported leaf and each name in ``norms`` the dict holds
  ``"<path>/<name>"``: ``rms_to_rms`` (:func:`rms_to_rms`), ``one_to_rms``,
  ``rms_to_inf`` and ``sup`` (:func:`sup_norm`). Output layers (leaves whose
  group in ``rules`` has ``role="output"`` or an output norm, RowNorm or Sign)
  come first, with ``rms_to_inf`` first (a dict returned from ``jax.jit`` has
  its keys sorted instead): the [NT] output norm

  .. math::
    \|W_{out}\|_{RMS \to \infty} = \sqrt{d_{in}}\, \max_i \|W_{out}[:, i]\|_2

  which sat near ``2^7`` at the optimal (lr, batch) in the norm-everywhere Llama
  runs of [NT] (a necessary condition, not a sufficient one).

  Args:
    params: a parameter pytree.
    rules: which leaves to report and how to view them. ``None``: every 2-D
      leaf, in Flax layout. A callable ``(path, leaf) -> MatrixSpec | None``:
      the view of each leaf (``None``: Flax layout for a 2-D leaf, skip any
      other). An :class:`~optax_lmo.Rules`: each matched group's ``spec`` (or
      its norm's default view, for conv kernels); 2-D leaves without a spec in
      Flax layout; other leaves are skipped.
    norms: which norms to report, in order.
    iters: iteration steps for ``rms_to_rms`` (see :func:`rms_to_rms`).
    squaring: the ``rms_to_rms`` method (see :func:`rms_to_rms`).

  Returns:
    ``{"<path>/<name>": float32 array}``: scalars for 2-D leaves, the batch
    shape for stacked ones.

  Examples:
    >>> import jax, jax.numpy as jnp, optax_lmo as ol
    >>> params = {"fc": {"kernel": jnp.eye(4), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> list(ol.contrib.norm_report(params, ol.default_rules()))[:2]   # head: RowNorm
    ['head/kernel/rms_to_inf', 'head/kernel/rms_to_rms']
    >>> report = jax.jit(ol.contrib.norm_report)(params)   # e.g. every 100 steps
    >>> {k: round(float(v), 4) for k, v in report.items() if k.startswith("head")}
    {'head/kernel/one_to_rms': 1.0, 'head/kernel/rms_to_inf': 4.0,
     'head/kernel/rms_to_rms': 4.0, 'head/kernel/sup': 1.0}

  References:
    Filatov et al., Optimal Scaling Needs Optimal Norm, arXiv:2510.03871, 2025.
  """
  unknown = [n for n in norms if n not in NORM_NAMES]
  if unknown:
    raise ValueError(f"Unknown norm names {unknown}; choose from {list(NORM_NAMES)}.")
  if iters is None:
    iters = 12 if squaring else 200
  heads, others = {}, {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = spec_lib.path_str(key_path)
    view, is_head = _view_for(rules, path, leaf)
    if view is None:
      continue
    names = list(norms)
    if is_head and "rms_to_inf" in names:
      names.remove("rms_to_inf")
      names.insert(0, "rms_to_inf")
    out = heads if is_head else others
    values = _leaf_norms(leaf, view, tuple(names), int(iters), bool(squaring))
    out.update((f"{path}/{name}", v) for name, v in zip(names, values, strict=True))
  return {**heads, **others}


__all__ = ["norm_report", "one_to_rms", "rms_to_inf", "rms_to_rms", "sup_norm"]
