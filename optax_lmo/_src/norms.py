"""Per-layer norms, their unit-ball LMOs, dual norms and initializers (Flax layout).

Every norm views a leaf as a stack of matrices ``(batch, d_in, d_out)`` through a
:class:`~optax_lmo.MatrixSpec` and works per matrix. ``lmo(g)`` is
``argmax_{||x|| <= 1} <g, x>``: the unit-radius direction an update subtracts.
Properties that hold for every norm (and that ``tests/test_norms.py`` checks):
``lmo(c g) = lmo(g)`` for ``c > 0``, ``norm(lmo(g)) = 1`` for ``g != 0``,
``<g, lmo(g)> = dual_norm(g)`` and ``lmo(0) = 0``.

References:
  Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs,
  ICML 2025, arXiv:2502.07529, Table 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from optax_lmo._src import spec as spec_lib
from optax_lmo._src.polar import Polar
from optax_lmo._src.spec import MatrixSpec


def _unit(x: jax.Array, axis) -> tuple[jax.Array, jax.Array]:
  """``(x / ||x||, ||x||)`` along ``axis``; divides by the max-abs entry first.

  The pre-scaling keeps ``||x||`` from underflowing (entries near 1e-20 in
  float32) or overflowing; only an exactly zero vector is guarded, and maps to 0.
  """
  peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  peak_safe = jnp.where(peak > 0, peak, 1.0)
  y = x / peak_safe
  n = jnp.sqrt(jnp.sum(y * y, axis=axis, keepdims=True))
  return y / jnp.where(n > 0, n, 1.0), n * peak


def _batch_reduce(x_B: jax.Array, shape, view: MatrixSpec) -> jax.Array:
  return x_B.reshape(spec_lib.batch_shape(shape, view))


@dataclasses.dataclass(frozen=True)
class Norm:
  """Base class: subclasses define the per-matrix math on ``(B, d_in, d_out)`` stacks."""

  name: ClassVar[str] = "norm"
  # True when the norm needs a (d_in, d_out) matrix view; False: whole-leaf vector view.
  needs_matrix: ClassVar[bool] = True
  # True for norms whose LMO is a polar factor (grouped, batched and distributed).
  spectral: ClassVar[bool] = False

  def with_polar(self, polar: Polar) -> Norm:
    """This norm with ``polar`` options for its polar factor (itself if it has none)."""
    if "polar" in {f.name for f in dataclasses.fields(self)}:
      return dataclasses.replace(self, polar=polar)
    return self

  # -- views ---------------------------------------------------------------
  def view(self, shape, spec: MatrixSpec | None = None, path: str = "") -> MatrixSpec:
    """The resolved matrix view this norm uses for a leaf of ``shape``."""
    if spec is not None:
      return spec.resolve(len(shape), path)
    if self.needs_matrix:
      return spec_lib.default_spec(len(shape), path, what=repr(self))
    return MatrixSpec(fan_in=(), fan_out=tuple(range(len(shape))))

  # -- public API on leaves ------------------------------------------------
  def lmo(self, g: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """Unit-radius LMO of ``g``: same shape and dtype as ``g``."""
    g = jnp.asarray(g)
    view = self.view(g.shape, spec, path)
    m = spec_lib.to_matrices(g.astype(jnp.float32), view)
    return spec_lib.from_matrices(self.lmo_matrices(m), g.shape, view).astype(g.dtype)

  def norm(self, w: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """The norm of each matrix of ``w`` (shape: the batch axes; scalar for 2-D)."""
    w = jnp.asarray(w)
    view = self.view(w.shape, spec, path)
    m = spec_lib.to_matrices(w.astype(jnp.float32), view)
    return _batch_reduce(self.norm_matrices(m), w.shape, view)

  def dual_norm(self, g: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """The dual norm ``max_{||x|| <= 1} <g, x>`` of each matrix of ``g``."""
    g = jnp.asarray(g)
    view = self.view(g.shape, spec, path)
    m = spec_lib.to_matrices(g.astype(jnp.float32), view)
    return _batch_reduce(self.dual_matrices(m), g.shape, view)

  def init(self, key, shape, dtype=jnp.float32, spec: MatrixSpec | None = None) -> jax.Array:
    """A random leaf of unit norm (per matrix) shaped for this geometry; multiply by rho."""
    shape = tuple(shape)
    view = self.view(shape, spec)
    b, i, o = view.dims(shape)
    m = self.init_matrices(key, b, i, o)
    return spec_lib.from_matrices(m, shape, view).astype(dtype)

  # -- per-matrix math on float32 (B, I, O) stacks ---------------------------
  def lmo_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    raise NotImplementedError

  def norm_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    raise NotImplementedError

  def dual_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    raise NotImplementedError

  def init_matrices(self, key, b: int, i: int, o: int) -> jax.Array:
    raise NotImplementedError


def _semi_orthogonal(key, b: int, i: int, o: int) -> jax.Array:
  g = jax.random.normal(key, (b, max(i, o), min(i, o)), jnp.float32)
  q, r = jnp.linalg.qr(g)
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  return q if i >= o else jnp.swapaxes(q, -1, -2)


def _sigma_max(m: jax.Array) -> jax.Array:
  peak = jnp.max(jnp.abs(m), axis=(-2, -1))
  safe = jnp.where(peak > 0, peak, 1.0)
  s = jnp.linalg.svd(m / safe[:, None, None], compute_uv=False)
  return jnp.max(s, axis=-1) * peak


def _nuclear(m: jax.Array) -> jax.Array:
  peak = jnp.max(jnp.abs(m), axis=(-2, -1))
  safe = jnp.where(peak > 0, peak, 1.0)
  s = jnp.linalg.svd(m / safe[:, None, None], compute_uv=False)
  return jnp.sum(s, axis=-1) * peak


@dataclasses.dataclass(frozen=True)
class Spectral(Norm):
  r"""Scaled spectral norm (RMS -> RMS operator norm) for hidden matrices.

  .. math::
    \|W\| = \sqrt{d_{in}/d_{out}}\,\sigma_{\max}(W), \qquad
    \mathrm{lmo}(G) = \sqrt{d_{out}/d_{in}}\,\mathrm{polar}(G)

  With ``input_layer=True`` the factor is ``max(1, sqrt(d_out/d_in))`` (first
  layer on image or real-valued inputs); ``scaled=False`` drops it (plain polar).

  Attributes:
    input_layer: use the input-layer factor.
    scaled: apply the dimension factor.
    polar: how the polar factor is computed (:class:`~optax_lmo.Polar`).

  Examples:
    >>> import jax, optax_lmo as ol
    >>> g = jax.random.normal(jax.random.key(0), (64, 256))   # Flax (d_in, d_out)
    >>> u = ol.norms.Spectral(polar=ol.Polar(method="svd")).lmo(g)
    >>> round(float(ol.norms.Spectral().norm(u)), 4)
    1.0
  """

  name: ClassVar[str] = "Spectral"
  spectral: ClassVar[bool] = True
  input_layer: bool = False
  scaled: bool = True
  polar: Polar = Polar()

  def factor(self, i: int, o: int) -> float:
    if not self.scaled:
      return 1.0
    f = math.sqrt(o / i)
    return max(1.0, f) if self.input_layer else f

  def lmo_matrices(self, m):
    return self.factor(*m.shape[-2:]) * self.polar(m)

  def norm_matrices(self, m):
    return _sigma_max(m) / self.factor(*m.shape[-2:])

  def dual_matrices(self, m):
    return self.factor(*m.shape[-2:]) * _nuclear(m)

  def init_matrices(self, key, b, i, o):
    return self.factor(i, o) * _semi_orthogonal(key, b, i, o)


@dataclasses.dataclass(frozen=True)
class SpectralConv(Norm):
  r"""Spectral norm for convolution kernels ``(..., kh, kw, c_in, c_out)``, per tap.

  The fan-in axes of the spec are ``(spatial..., c_in)``; the last one is
  ``c_in`` and the others index the ``T = kh*kw`` taps. Per matrix:

  .. math::
    \|W\| = T\sqrt{c_{in}/c_{out}}\,\max_t \sigma_{\max}(W_t), \qquad
    \mathrm{lmo}(G)_t = \frac{\sqrt{c_{out}/c_{in}}}{T}\,\mathrm{polar}(G_t)

  Default view for an ``N``-D kernel: fan-in ``(0, ..., N-2)``, fan-out ``(N-1,)``.
  """

  name: ClassVar[str] = "SpectralConv"
  polar: Polar = Polar()

  def view(self, shape, spec=None, path=""):
    if spec is not None:
      return spec.resolve(len(shape), path)
    if len(shape) < 3:
      raise ValueError(f"{path + ': ' if path else ''}SpectralConv needs a kernel with ndim >= 3"
                       f" (spatial..., c_in, c_out), got shape {tuple(shape)}.")
    return MatrixSpec(tuple(range(len(shape) - 1)), (len(shape) - 1,))

  def _taps(self, x, view):
    """(B, T, c_in, c_out) from a leaf, and the inverse."""
    nd = x.ndim
    taps = view.fan_in[:-1]
    perm = view.batch_axes(nd) + taps + view.fan_in[-1:] + view.fan_out
    b, _, _ = view.dims(x.shape)
    t = math.prod(x.shape[a] for a in taps)
    c_in = x.shape[view.fan_in[-1]]
    c_out = math.prod(x.shape[a] for a in view.fan_out)
    y = jnp.transpose(x, perm).reshape(b, t, c_in, c_out)
    inv = [0] * nd
    for k, a in enumerate(perm):
      inv[a] = k
    permuted = tuple(x.shape[a] for a in perm)
    return y, lambda z: jnp.transpose(z.reshape(permuted), inv)

  def _factor(self, t, c_in, c_out):
    return math.sqrt(c_out / c_in) / t

  def lmo(self, g, spec=None, *, path=""):
    g = jnp.asarray(g)
    y, back = self._taps(g.astype(jnp.float32), self.view(g.shape, spec, path))
    _, t, ci, co = y.shape
    return back(self._factor(t, ci, co) * self.polar(y)).astype(g.dtype)

  def norm(self, w, spec=None, *, path=""):
    w = jnp.asarray(w)
    view = self.view(w.shape, spec, path)
    y, _ = self._taps(w.astype(jnp.float32), view)
    b, t, ci, co = y.shape
    s = _sigma_max(y.reshape(b * t, ci, co)).reshape(b, t).max(axis=1)
    return _batch_reduce(s / self._factor(t, ci, co), w.shape, view)

  def dual_norm(self, g, spec=None, *, path=""):
    g = jnp.asarray(g)
    view = self.view(g.shape, spec, path)
    y, _ = self._taps(g.astype(jnp.float32), view)
    b, t, ci, co = y.shape
    s = _nuclear(y.reshape(b * t, ci, co)).reshape(b, t).sum(axis=1)
    return _batch_reduce(s * self._factor(t, ci, co), g.shape, view)

  def init(self, key, shape, dtype=jnp.float32, spec=None):
    shape = tuple(shape)
    view = self.view(shape, spec)
    y, back = self._taps(jnp.zeros(shape, jnp.float32), view)
    b, t, ci, co = y.shape
    q = _semi_orthogonal(key, b * t, ci, co).reshape(b, t, ci, co)
    return back(self._factor(t, ci, co) * q).astype(dtype)


@dataclasses.dataclass(frozen=True)
class ColNorm(Norm):
  r"""Max row norm (1 -> RMS operator norm) for one-hot inputs: embedding tables.

  Rows are the fan-in index (a Flax ``Embed`` table ``(vocab, d)``: one row per token).

  .. math::
    \|W\| = \max_j \|W_{j,:}\|_2 / \sqrt{d_{out}}, \qquad
    \mathrm{lmo}(G)_{j,:} = \sqrt{d_{out}}\, G_{j,:} / \|G_{j,:}\|_2

  ``scaled=False`` drops the ``sqrt(d_out)``: unit rows.
  """

  name: ClassVar[str] = "ColNorm"
  scaled: bool = True

  def _s(self, o):
    return math.sqrt(o) if self.scaled else 1.0

  def lmo_matrices(self, m):
    return self._s(m.shape[-1]) * _unit(m, -1)[0]

  def norm_matrices(self, m):
    return jnp.max(_unit(m, -1)[1][..., 0], axis=-1) / self._s(m.shape[-1])

  def dual_matrices(self, m):
    return jnp.sum(_unit(m, -1)[1][..., 0], axis=-1) * self._s(m.shape[-1])

  def init_matrices(self, key, b, i, o):
    return self._s(o) * _unit(jax.random.normal(key, (b, i, o)), -1)[0]


@dataclasses.dataclass(frozen=True)
class RowNorm(Norm):
  r"""Max column norm (RMS -> inf operator norm) for output layers (unembedding).

  Column ``i`` of a Flax kernel ``(d_in, d_out)`` holds the weights of output ``i``.

  .. math::
    \|W\| = \sqrt{d_{in}} \max_i \|W_{:,i}\|_2, \qquad
    \mathrm{lmo}(G)_{:,i} = G_{:,i} / (\sqrt{d_{in}}\, \|G_{:,i}\|_2)

  ``scaled=False`` drops the ``sqrt(d_in)``: unit columns.
  """

  name: ClassVar[str] = "RowNorm"
  scaled: bool = True

  def _s(self, i):
    return math.sqrt(i) if self.scaled else 1.0

  def lmo_matrices(self, m):
    return _unit(m, -2)[0] / self._s(m.shape[-2])

  def norm_matrices(self, m):
    return jnp.max(_unit(m, -2)[1][:, 0, :], axis=-1) * self._s(m.shape[-2])

  def dual_matrices(self, m):
    return jnp.sum(_unit(m, -2)[1][:, 0, :], axis=-1) / self._s(m.shape[-2])

  def init_matrices(self, key, b, i, o):
    return _unit(jax.random.normal(key, (b, i, o)), -2)[0] / self._s(i)


@dataclasses.dataclass(frozen=True)
class Sign(Norm):
  r"""Scaled max-abs norm (1 -> inf operator norm): sign descent.

  .. math::
    \|W\| = d_{in} \max |W|, \qquad \mathrm{lmo}(G) = \mathrm{sign}(G) / d_{in}

  ``scaled=False`` gives ``sign(G)`` (the input-layer form, and plain sign
  descent on any leaf: then no matrix view is needed).
  """

  name: ClassVar[str] = "Sign"
  scaled: bool = True

  @property
  def needs_matrix(self):  # type: ignore[override]
    return self.scaled

  def _s(self, i):
    return float(i) if self.scaled else 1.0

  def lmo_matrices(self, m):
    return jnp.sign(m) / self._s(m.shape[-2])

  def norm_matrices(self, m):
    return jnp.max(jnp.abs(m), axis=(-2, -1)) * self._s(m.shape[-2])

  def dual_matrices(self, m):
    return jnp.sum(jnp.abs(m), axis=(-2, -1)) / self._s(m.shape[-2])

  def init_matrices(self, key, b, i, o):
    return jax.random.rademacher(key, (b, i, o), jnp.float32) / self._s(i)


@dataclasses.dataclass(frozen=True)
class BiasRMS(Norm):
  r"""RMS norm for biases, gains and other 1-D leaves.

  .. math::
    \|b\| = \|b\|_{RMS} = \|b\|_2/\sqrt{n}, \qquad \mathrm{lmo}(g) = g / \|g\|_{RMS}

  Acts on the whole leaf unless a spec names batch axes. Initializes to zeros.
  """

  name: ClassVar[str] = "BiasRMS"
  needs_matrix: ClassVar[bool] = False

  def lmo_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return math.sqrt(n) * _unit(m, (-2, -1))[0]

  def norm_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return _unit(m, (-2, -1))[1][:, 0, 0] / math.sqrt(n)

  def dual_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return _unit(m, (-2, -1))[1][:, 0, 0] * math.sqrt(n)

  def init_matrices(self, key, b, i, o):
    del key
    return jnp.zeros((b, i, o), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Frobenius(Norm):
  r"""Frobenius norm: normalized SGD, and a fallback for any leaf.

  .. math::
    \|W\| = \|W\|_F, \qquad \mathrm{lmo}(G) = G / \|G\|_F

  Acts on the whole leaf unless a spec names batch axes.
  """

  name: ClassVar[str] = "Frobenius"
  needs_matrix: ClassVar[bool] = False

  def lmo_matrices(self, m):
    return _unit(m, (-2, -1))[0]

  def norm_matrices(self, m):
    return _unit(m, (-2, -1))[1][:, 0, 0]

  def dual_matrices(self, m):
    return _unit(m, (-2, -1))[1][:, 0, 0]

  def init_matrices(self, key, b, i, o):
    return _unit(jax.random.normal(key, (b, i, o)), (-2, -1))[0]


__all__ = ["Norm", "Spectral", "SpectralConv", "ColNorm", "RowNorm", "Sign", "BiasRMS", "Frobenius"]
