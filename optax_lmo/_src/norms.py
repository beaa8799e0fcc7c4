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
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from optax_lmo._src import numerics
from optax_lmo._src import spec as spec_lib
from optax_lmo._src.polar import Polar
from optax_lmo._src.spec import MatrixSpec, Stack


@dataclasses.dataclass(frozen=True)
class Norm:
  """Base class: subclasses define the per-matrix math on float32 ``(B, d_in, d_out)`` stacks.

  :meth:`to_stack` is the one place a leaf becomes matrices; the leaf-level
  :meth:`lmo`, :meth:`norm`, :meth:`dual_norm` and :meth:`init` all go through it.
  """

  name: ClassVar[str] = "norm"
  # True when the norm needs a (d_in, d_out) matrix view; False: whole-leaf vector view.
  needs_matrix: ClassVar[bool] = True
  # True when the LMO couples every entry of a matrix (a polar factor): its lmo_matrices is
  # lmo_scale(d_in, d_out) * whole_lmo_matrices(m), and scale_by_norm runs the whole-matrix
  # part batched with the other matrices of its norm and shape (on a mesh: each matrix whole
  # on one owner device), the scale where the data is. False: the LMO is row-local.
  whole_matrices: ClassVar[bool] = False

  def with_polar(self, polar: Polar) -> Norm:
    """This norm with ``polar`` options for its polar factor (itself if it has none)."""
    if "polar" in {f.name for f in dataclasses.fields(self)}:
      return dataclasses.replace(self, polar=polar)
    return self

  # -- views ---------------------------------------------------------------
  def view(self, shape: Sequence[int], spec: MatrixSpec | None = None,
           path: str = "") -> MatrixSpec:
    """The resolved matrix view this norm uses for a leaf of ``shape``.

    Args:
      shape: the leaf's shape.
      spec: the leaf's view, or ``None`` for this norm's default.
      path: the leaf path, for error messages.

    Returns:
      A :class:`~optax_lmo.MatrixSpec` with non-negative axes. Raises
      ``ValueError`` (naming ``path``) where the norm has no default view: a
      matrix norm on a leaf with ndim >= 3 and no spec.
    """
    if spec is not None:
      spec.unblocked(shape, path)  # raises, naming the leaf, for blocks that do not fit
      return spec.resolve(len(shape), path)
    if self.needs_matrix:
      return spec_lib.default_spec(len(shape), path, what=repr(self))
    return MatrixSpec(fan_in=(), fan_out=tuple(range(len(shape))))

  def to_stack(self, x: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> Stack:
    """The leaf ``x`` as the float32 matrix stack this norm acts on, and the way back.

    Args:
      x: a leaf.
      spec: its matrix view (``None``: this norm's default).
      path: the leaf path, for error messages.

    Returns:
      A :class:`Stack`; here the ``(batch, d_in, d_out)`` matrices of the view.
    """
    x = jnp.asarray(x, jnp.float32)
    view = self.view(x.shape, spec, path)
    shape, cut = view.unblocked(x.shape, path)  # blocks (if any) become a batch axis
    groups, layout, cut_layout = cut.groups(len(shape)), spec_lib.explicit_spec(x), \
        spec_lib.cut_layout(x, view)
    return Stack(
        spec_lib.merge_axes(spec_lib.pin_blocks(spec_lib.reshape(x, shape, cut_layout), view),
                            groups),
        lambda m: spec_lib.reshape(spec_lib.split_axes(m, shape, groups, cut_layout), x.shape,
                                   layout),
        spec_lib.batch_shape(x.shape, view),
    )

  def describe_view(self, shape: Sequence[int], spec: MatrixSpec | None = None,
                    path: str = "") -> str:
    """The matrices this norm sees in a leaf of ``shape``, e.g. ``"3x64x256"`` or ``"64x256"``.

    Args:
      shape: the leaf's shape.
      spec: its matrix view (``None``: this norm's default).
      path: the leaf path, for error messages.

    Returns:
      ``"<batch>x<d_in>x<d_out>"``, without the batch when there are no batch axes.
    """
    return self.view(shape, spec, path).describe(shape)

  # -- public API on leaves ------------------------------------------------
  def lmo(self, g: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """Unit-radius LMO of ``g``: same shape and dtype as ``g``."""
    g = jnp.asarray(g)
    st = self.to_stack(g, spec, path=path)
    return st.unstack(st.weight * self.lmo_matrices(st.matrices)).astype(g.dtype)

  def norm(self, w: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """The norm of each matrix of ``w`` (shape: the batch axes; scalar for 2-D)."""
    st = self.to_stack(jnp.asarray(w), spec, path=path)
    return jnp.max(st.per_view(self.norm_matrices(st.matrices)), axis=-1) / st.weight

  def dual_norm(self, g: jax.Array, spec: MatrixSpec | None = None, *, path: str = "") -> jax.Array:
    """The dual norm ``max_{||x|| <= 1} <g, x>`` of each matrix of ``g``."""
    st = self.to_stack(jnp.asarray(g), spec, path=path)
    return jnp.sum(st.per_view(self.dual_matrices(st.matrices)), axis=-1) * st.weight

  def init(self, key, shape, dtype=jnp.float32, spec: MatrixSpec | None = None) -> jax.Array:
    """A random leaf of unit norm (per matrix) shaped for this geometry; multiply by rho."""
    st = self.to_stack(jnp.zeros(tuple(shape), jnp.float32), spec)
    m = self.init_matrices(key, *st.matrices.shape)
    return st.unstack(st.weight * m).astype(dtype)

  # -- per-matrix math on float32 (B, I, O) stacks ---------------------------
  def lmo_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    """The LMO of each matrix of the stack."""
    raise NotImplementedError

  def whole_lmo_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    """A norm whose LMO needs whole matrices: the part that does (the polar factor), per matrix;
    ``lmo_matrices`` is it times :meth:`lmo_scale`."""
    raise NotImplementedError(f"{self!r}: its LMO is row-local (whole_matrices is False).")

  def lmo_scale(self, i: int, o: int) -> float:
    """What :meth:`whole_lmo_matrices` of an ``i x o`` stack matrix is multiplied by."""
    return 1.0

  def norm_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    """The norm of each matrix of the stack, shape ``(B,)``."""
    raise NotImplementedError

  def dual_matrices(self, m_BxIxO: jax.Array) -> jax.Array:
    """The dual norm of each matrix of the stack, shape ``(B,)``."""
    raise NotImplementedError

  def init_matrices(self, key, b: int, i: int, o: int) -> jax.Array:
    """``b`` random ``i x o`` matrices of unit norm."""
    raise NotImplementedError


def _semi_orthogonal(key, b: int, i: int, o: int) -> jax.Array:
  g = jax.random.normal(key, (b, max(i, o), min(i, o)), jnp.float32)
  # One matrix at a time: XLA's CPU runtime was seen to hang on several batched QR calls
  # running at once inside one jitted init (a GPT's kernels cut into blocks).
  q, r = jax.lax.map(jnp.linalg.qr, g)
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  return q if i >= o else jnp.swapaxes(q, -1, -2)


@dataclasses.dataclass(frozen=True)
class Spectral(Norm):
  r"""Hidden matrices: how much a kernel ``(d_in, d_out)`` can grow an input's RMS.

  In words: the largest factor by which ``x @ W`` can have a larger RMS than
  ``x`` (the RMS -> RMS operator norm), i.e. the largest singular value scaled
  by ``sqrt(d_in/d_out)``. Its LMO is the orthogonalized gradient (Muon's step).

  .. math::
    \|W\| = \sqrt{d_{in}/d_{out}}\,\sigma_{\max}(W), \qquad
    \mathrm{lmo}(G) = \sqrt{d_{out}/d_{in}}\,\mathrm{polar}(G)

  With ``input_layer=True`` the factor is ``max(1, sqrt(d_out/d_in))`` (first
  layer on image or real-valued inputs); ``scaled=False`` drops it (plain polar).
  Its LMO needs whole matrices (``whole_matrices``): :func:`~optax_lmo.scale_by_norm`
  batches Spectral leaves by shape and distributes them over a mesh.

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
  whole_matrices: ClassVar[bool] = True
  input_layer: bool = False
  scaled: bool = True
  polar: Polar = Polar()

  def factor(self, i: int, o: int) -> float:
    """The dimension factor of the LMO of an ``i x o`` stack matrix: ``lmo = factor * polar``."""
    if not self.scaled:
      return 1.0
    f = math.sqrt(o / i)
    return max(1.0, f) if self.input_layer else f

  def lmo_matrices(self, m):
    return self.lmo_scale(*m.shape[-2:]) * self.whole_lmo_matrices(m)

  def whole_lmo_matrices(self, m):
    return self.polar.apply(m)

  def lmo_scale(self, i, o):
    return self.factor(i, o)

  def norm_matrices(self, m):
    return jnp.max(numerics.singular_values(m), axis=-1) / self.factor(*m.shape[-2:])

  def dual_matrices(self, m):
    return self.factor(*m.shape[-2:]) * jnp.sum(numerics.singular_values(m), axis=-1)

  def init_matrices(self, key, b, i, o):
    return self.factor(i, o) * _semi_orthogonal(key, b, i, o)




@dataclasses.dataclass(frozen=True)
class ColNorm(Norm):
  r"""Embedding tables: the largest RMS of a row of a Flax ``Embed`` table ``(vocab, d)``.

  In words: each token's vector is one row (the fan-in index), and the norm is
  the largest RMS among them (the 1 -> RMS operator norm: what a one-hot input
  can produce). Its LMO rescales every row of the gradient to RMS 1. The name
  comes from the PyTorch layout ``(d_out, d_in)`` of the reference code, where
  those rows are columns.

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
    return self._s(m.shape[-1]) * numerics.unit(m, -1)[0]

  def norm_matrices(self, m):
    return jnp.max(numerics.unit(m, -1)[1][..., 0], axis=-1) / self._s(m.shape[-1])

  def dual_matrices(self, m):
    return jnp.sum(numerics.unit(m, -1)[1][..., 0], axis=-1) * self._s(m.shape[-1])

  def init_matrices(self, key, b, i, o):
    return self._s(o) * numerics.unit(jax.random.normal(key, (b, i, o)), -1)[0]


@dataclasses.dataclass(frozen=True)
class RowNorm(Norm):
  r"""Output heads: the largest norm of a column of a Flax kernel ``(d_in, vocab)``.

  In words: column ``i`` holds the weights of output (logit) ``i``; the norm is
  the largest column norm times ``sqrt(d_in)`` (the RMS -> inf operator norm:
  the largest logit an input of RMS 1 can produce). Its LMO rescales every
  column of the gradient to that unit. The name comes from the PyTorch layout
  ``(d_out, d_in)`` of the reference code, where those columns are rows.

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
    return numerics.unit(m, -2)[0] / self._s(m.shape[-2])

  def norm_matrices(self, m):
    return jnp.max(numerics.unit(m, -2)[1][:, 0, :], axis=-1) * self._s(m.shape[-2])

  def dual_matrices(self, m):
    return jnp.sum(numerics.unit(m, -2)[1][:, 0, :], axis=-1) / self._s(m.shape[-2])

  def init_matrices(self, key, b, i, o):
    return numerics.unit(jax.random.normal(key, (b, i, o)), -2)[0] / self._s(i)


@dataclasses.dataclass(frozen=True)
class Sign(Norm):
  r"""Output (or input) layers: the largest absolute entry of a kernel ``(d_in, d_out)``, x d_in.

  In words: every weight is bounded by the same amount (the 1 -> inf operator
  norm, scaled by ``d_in``); its LMO is the sign of the gradient (sign descent).

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
  r"""Biases and gains: the RMS of the vector (of the whole leaf, unless a spec names batch axes).

  .. math::
    \|b\| = \|b\|_{RMS} = \|b\|_2/\sqrt{n}, \qquad \mathrm{lmo}(g) = g / \|g\|_{RMS}

  Acts on the whole leaf unless a spec names batch axes. Initializes to zeros.
  """

  name: ClassVar[str] = "BiasRMS"
  needs_matrix: ClassVar[bool] = False

  def lmo_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return math.sqrt(n) * numerics.unit(m, (-2, -1))[0]

  def norm_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return numerics.unit(m, (-2, -1))[1][:, 0, 0] / math.sqrt(n)

  def dual_matrices(self, m):
    n = m.shape[-1] * m.shape[-2]
    return numerics.unit(m, (-2, -1))[1][:, 0, 0] * math.sqrt(n)

  def init_matrices(self, key, b, i, o):
    del key
    return jnp.zeros((b, i, o), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Frobenius(Norm):
  r"""Any leaf: the square root of its sum of squares (normalized SGD, and a fallback).

  .. math::
    \|W\| = \|W\|_F, \qquad \mathrm{lmo}(G) = G / \|G\|_F

  Acts on the whole leaf unless a spec names batch axes.
  """

  name: ClassVar[str] = "Frobenius"
  needs_matrix: ClassVar[bool] = False

  def lmo_matrices(self, m):
    return numerics.unit(m, (-2, -1))[0]

  def norm_matrices(self, m):
    return numerics.unit(m, (-2, -1))[1][:, 0, 0]

  def dual_matrices(self, m):
    return numerics.unit(m, (-2, -1))[1][:, 0, 0]

  def init_matrices(self, key, b, i, o):
    return numerics.unit(jax.random.normal(key, (b, i, o)), (-2, -1))[0]


__all__ = ["Norm", "Spectral", "ColNorm", "RowNorm", "Sign", "BiasRMS", "Frobenius"]
