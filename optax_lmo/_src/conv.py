"""The spectral norm of convolution kernels: whole-kernel, per-tap and per-group (grouped) views."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp

from optax_lmo._src import spec as spec_lib
from optax_lmo._src.norms import Spectral
from optax_lmo._src.spec import MatrixSpec, Stack

CONVENTIONS = ("reference", "per_tap")


@dataclasses.dataclass(frozen=True)
class SpectralConv(Spectral):
  r"""Convolution kernels ``(kh, kw, c_in, c_out)``: the spectral norm of the kernel as a matrix.

  In words: the kernel is viewed as one ``(kh*kw*c_in) x c_out`` matrix (each
  output channel reads a patch), or per tap, and normed like a hidden matrix,
  with the reference code's extra factor ``kh*kw``.

  The fan-in axes of the view are ``(spatial..., c_in)``: the last one is
  ``c_in`` and the others index the ``T = kh*kw`` taps. Default view for an
  ``N``-D kernel: fan-in ``(0, ..., N-2)``, fan-out ``(N-1,)``.

  ``convention="reference"`` (the default, as LIONS-EPFL/scion's
  ``SpectralConv``): the kernel is one ``(T c_in) x c_out`` matrix ``W``,

  .. math::
    \|W\| = T\sqrt{c_{in}/c_{out}}\,\sigma_{\max}(W), \qquad
    \mathrm{lmo}(G) = \frac{\sqrt{c_{out}/c_{in}}}{T}\,\mathrm{polar}(G)

  ``convention="per_tap"``: each tap ``W_t`` (``c_in x c_out``) separately,

  .. math::
    \|W\| = T\sqrt{c_{in}/c_{out}}\,\max_t \sigma_{\max}(W_t), \qquad
    \mathrm{lmo}(G)_t = \frac{\sqrt{c_{out}/c_{in}}}{T}\,\mathrm{polar}(G_t)

  ``groups=G`` is a grouped convolution (``feature_group_count=G``; depthwise
  when ``G = c_in``): the kernel ``(..., kh, kw, c_in/G, c_out)`` holds ``G``
  independent matrices, group ``g`` owning the out-features
  ``[g c_out/G, (g+1) c_out/G)``. The out-feature axis is split into
  ``(G, c_out/G)`` and ``G`` becomes a batch axis: each group is its own
  ``(T c_in/G) x (c_out/G)`` matrix with the formulas above (``c_in``,
  ``c_out`` per group), so :meth:`norm` has one value per group.

  ``scaled=False`` drops the factor (plain polar factors). Either way the
  kernels are batched and distributed with the other spectral leaves (a
  sharded out-feature axis is sharded over the groups).

  Attributes:
    scaled: apply the factor.
    polar: how the polar factor is computed (:class:`~optax_lmo.Polar`).
    convention: ``"reference"`` or ``"per_tap"``.
    groups: the convolution's ``feature_group_count``.

  Examples:
    >>> import optax_lmo as ol
    >>> ol.norms.SpectralConv().describe_view((3, 3, 64, 128))
    '576x128'
    >>> ol.norms.SpectralConv(convention="per_tap").describe_view((3, 3, 64, 128))
    '9x64x128 per tap'
    >>> ol.norms.SpectralConv(groups=16).describe_view((3, 3, 1, 16))  # depthwise
    '16x9x1'
  """

  name: ClassVar[str] = "SpectralConv"
  input_layer: bool = dataclasses.field(default=False, init=False, repr=False)
  convention: str = "reference"
  groups: int = 1

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise ValueError(f"SpectralConv convention must be one of {CONVENTIONS},"
                       f" got {self.convention!r}.")
    if not isinstance(self.groups, int) or self.groups < 1:
      raise ValueError(f"SpectralConv groups must be an int >= 1, got {self.groups!r}.")

  def view(self, shape, spec=None, path=""):
    where = f"{path}: " if path else ""
    if spec is not None and spec.blocked:
      raise ValueError(f"{where}SpectralConv takes no blocks in its MatrixSpec ({spec}); a"
                       " grouped convolution's groups are SpectralConv(groups=G).")
    if spec is not None:
      view = spec.resolve(len(shape), path)
    elif len(shape) < 3:
      raise ValueError(f"{where}SpectralConv needs a kernel with ndim >= 3"
                       f" (spatial..., c_in, c_out), got shape {tuple(shape)}.")
    else:
      view = MatrixSpec(tuple(range(len(shape) - 1)), (len(shape) - 1,))
    if self.groups > 1 and (len(view.fan_out) != 1 or shape[view.fan_out[0]] % self.groups):
      raise ValueError(f"{where}SpectralConv(groups={self.groups}) needs one out-feature axis"
                       f" whose size the groups divide; got {view} for shape {tuple(shape)}.")
    return view

  def _grouped(self, shape, spec, path):
    """The shape with the out-feature axis split into ``(groups, c_out / groups)``, and the
    view of that shape (the groups are a batch axis); unchanged for one group."""
    view, shape = self.view(shape, spec, path), tuple(shape)
    if self.groups == 1:
      return shape, view
    a = view.fan_out[0]
    split = shape[:a] + (self.groups, shape[a] // self.groups) + shape[a + 1:]
    return split, MatrixSpec(tuple(x + (x > a) for x in view.fan_in), (a + 1,))

  def _layout(self, shape, spec, path):
    """Axis groups of the stack, the number of taps, the view and the (grouped) shape."""
    shape, view = self._grouped(shape, spec, path)
    batch, fan_in, fan_out = view.groups(len(shape))
    taps = math.prod(shape[a] for a in fan_in[:-1])
    if self.convention == "per_tap":
      return (batch + fan_in[:-1], fan_in[-1:], fan_out), taps, view, shape
    return (batch, fan_in, fan_out), taps, view, shape

  def to_stack(self, x, spec=None, *, path=""):
    x = jnp.asarray(x, jnp.float32)
    groups, taps, view, shape = self._layout(x.shape, spec, path)
    layout, per_tap = spec_lib.explicit_spec(x), self.convention == "per_tap"
    split_layout = layout
    if shape != x.shape and layout is not None:  # the groups take the out-feature sharding
      at = self.view(x.shape, spec, path).fan_out[0]
      split_layout = layout[:at] + (layout[at], None) + layout[at + 1:]
    # The stack's own Spectral factor is sqrt(d_out / d_in); the weight makes it
    # sqrt(c_out / c_in) / T for a tap (d_in = c_in) and for the whole kernel
    # (d_in = T c_in).
    weight = 1.0 if not self.scaled else (1.0 / taps if per_tap else 1.0 / math.sqrt(taps))
    return Stack(
        spec_lib.merge_axes(spec_lib.reshape(x, shape, split_layout), groups),
        lambda m: spec_lib.reshape(spec_lib.split_axes(m, shape, groups, split_layout), x.shape,
                                   layout),
        spec_lib.batch_shape(shape, view),
        taps if per_tap else 1,
        weight,
    )

  def describe_view(self, shape, spec=None, path=""):
    groups, taps, view, shape = self._layout(tuple(shape), spec, path)
    if self.convention == "reference":
      return view.describe(shape)
    b, _, o = view.dims(shape)
    prefix = f"{b}x" if view.batch_axes(len(shape)) else ""
    return f"{prefix}{taps}x{shape[groups[1][0]]}x{o} per tap"


__all__ = ["SpectralConv"]
