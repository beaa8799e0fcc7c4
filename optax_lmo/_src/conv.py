"""The spectral norm of convolution kernels: the reference (whole-kernel) and per-tap views."""

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

  ``scaled=False`` drops the factor (plain polar factors). Either way the
  kernels are batched and distributed with the other spectral leaves.

  Attributes:
    scaled: apply the factor.
    polar: how the polar factor is computed (:class:`~optax_lmo.Polar`).
    convention: ``"reference"`` or ``"per_tap"``.

  Examples:
    >>> import optax_lmo as ol
    >>> ol.norms.SpectralConv().describe_view((3, 3, 64, 128))
    '576x128'
    >>> ol.norms.SpectralConv(convention="per_tap").describe_view((3, 3, 64, 128))
    '9x64x128 per tap'
  """

  name: ClassVar[str] = "SpectralConv"
  input_layer: bool = dataclasses.field(default=False, init=False, repr=False)
  convention: str = "reference"

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise ValueError(f"SpectralConv convention must be one of {CONVENTIONS},"
                       f" got {self.convention!r}.")

  def view(self, shape, spec=None, path=""):
    if spec is not None:
      return spec.resolve(len(shape), path)
    if len(shape) < 3:
      raise ValueError(f"{path + ': ' if path else ''}SpectralConv needs a kernel with ndim >= 3"
                       f" (spatial..., c_in, c_out), got shape {tuple(shape)}.")
    return MatrixSpec(tuple(range(len(shape) - 1)), (len(shape) - 1,))

  def _layout(self, shape, spec, path):
    """Axis groups of the stack, the number of taps, and the view."""
    view = self.view(shape, spec, path)
    batch, fan_in, fan_out = view.groups(len(shape))
    taps = math.prod(shape[a] for a in fan_in[:-1])
    if self.convention == "per_tap":
      return (batch + fan_in[:-1], fan_in[-1:], fan_out), taps, view
    return (batch, fan_in, fan_out), taps, view

  def to_stack(self, x, spec=None, *, path=""):
    x = jnp.asarray(x, jnp.float32)
    groups, taps, view = self._layout(x.shape, spec, path)
    layout, per_tap = spec_lib.explicit_spec(x), self.convention == "per_tap"
    # The stack's own Spectral factor is sqrt(d_out / d_in); the weight makes it
    # sqrt(c_out / c_in) / T for a tap (d_in = c_in) and for the whole kernel
    # (d_in = T c_in).
    weight = 1.0 if not self.scaled else (1.0 / taps if per_tap else 1.0 / math.sqrt(taps))
    return Stack(
        spec_lib.merge_axes(x, groups),
        lambda m: spec_lib.split_axes(m, x.shape, groups, layout),
        spec_lib.batch_shape(x.shape, view),
        taps if per_tap else 1,
        weight,
    )

  def describe_view(self, shape, spec=None, path=""):
    groups, taps, view = self._layout(tuple(shape), spec, path)
    if self.convention == "reference":
      return view.describe(shape)
    b, _, o = view.dims(shape)
    prefix = f"{b}x" if view.batch_axes(len(shape)) else ""
    return f"{prefix}{taps}x{shape[groups[1][0]]}x{o} per tap"


__all__ = ["SpectralConv"]
