"""The polar factor ``polar(G) = U V^T`` by Newton–Schulz, Gram Newton–Schulz or SVD.

All methods act on the last two axes; leading axes are a batch. Iterations run
on the short side (a tall stack is never copied: its products are written
transposed), inside a ``jax.lax.while_loop`` (never unrolled), in a chosen dtype
and matmul precision. ``benchmarks/orthogonalize.py`` measures the speed and
accuracy claims made here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_lmo._src import coeffs as coeffs_lib
from optax_lmo._src import numerics

METHODS = ("auto", "newton_schulz", "gram_newton_schulz", "svd")
# How the input is scaled before Newton–Schulz: by its Frobenius norm, or (``"aol"``) row by
# row in the first step (Turbo-Muon's AOL rescaling, docs/polar.md).
PRECONDITIONINGS = ("frobenius", "aol")
AOL_EPS = 1e-8  # floor of the AOL row sums (of the Frobenius-normalized input): zero rows stay 0

# `method="auto"` takes the Gram iteration at this aspect ratio or more (docs/polar.md).
GRAM_MIN_ASPECT = 2.0
GRAM_MIN_ASPECT_REDUCED = 3.0

# Default Gram window (`restart_every=None`): steps between restarts (docs/polar.md).
GRAM_WINDOW_FULL = 5
GRAM_WINDOW_REDUCED = 3


@dataclasses.dataclass(frozen=True)
class Polar:
  """How to compute the polar factor: a hashable bundle of :func:`polar` options.

  Attributes:
    method: ``"auto"`` (Gram iteration for aspect ratio >= 2, >= 3 with 16-bit
      iterates, where its products are exact float32 (CPU, or
      ``precision="highest"``), else standard), ``"newton_schulz"``, ``"gram_newton_schulz"`` or
      ``"svd"`` (exact oracle).
    coeffs: a registry name (``"polar_express"``, ``"jordan"``, ``"you5"``,
      ``"cubic"``) or a sequence of ``(a, b, c)`` triples.
    steps: Newton–Schulz steps; ``None`` takes the preset's default.
    dtype: iteration dtype (``None``: float32). bfloat16 is allowed.
    precision: ``jax.lax.Precision`` (or dot algorithm name) passed to every matmul.
    restart_every: Gram iteration only: re-form the Gram matrix from the
      current iterate after this many steps (rounding accumulates in it);
      ``None`` picks 5 for exact float32 products, else 3.
    preconditioning: ``"frobenius"`` (divide by the Frobenius norm) or ``"aol"``
      (Turbo-Muon's row scaling in the first step; pair it with ``coeffs="aol"``,
      4 steps): see :func:`polar`.
  """

  method: str = "auto"
  coeffs: Any = "polar_express"
  steps: int | None = None
  dtype: Any = None
  precision: Any = None
  restart_every: int | None = None
  preconditioning: str = "frobenius"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"Unknown polar method {self.method!r}; choose one of {METHODS}.")
    _check_preconditioning(self.preconditioning, self.method)
    if not isinstance(self.coeffs, (str, coeffs_lib.Coefficients)):
      object.__setattr__(self, "coeffs", tuple(tuple(float(v) for v in t) for t in self.coeffs))
    coeffs_lib.get_coefficients(self.coeffs, self.steps)  # validate early
    if self.restart_every is not None and self.restart_every < 1:
      raise ValueError(f"restart_every must be >= 1, got {self.restart_every}.")

  def resolve(self, shape: Sequence[int]) -> Polar:
    """These options made concrete for matrices of ``shape`` (the last two axes).

    ``method="auto"`` becomes the method it picks there, ``steps`` the number of
    Newton–Schulz steps run and, for the Gram iteration, ``restart_every`` its
    window: what the matmul count of one polar factor depends on.

    Examples:
      >>> import optax_lmo as ol
      >>> r = ol.Polar().resolve((128, 512))   # CPU, float32: the Gram iteration
      >>> r.method, r.steps, r.restart_every
      ('gram_newton_schulz', 5, 5)
    """
    coeffs = coeffs_lib.get_coefficients(self.coeffs, self.steps)
    steps = coeffs.schedule(self.steps).shape[0]
    work = jnp.dtype(self.dtype) if self.dtype is not None else jnp.dtype(jnp.float32)
    method = choose_method(shape, work, self.precision) if self.method == "auto" else self.method
    window = self.restart_every
    if method == "gram_newton_schulz" and window is None:
      window = GRAM_WINDOW_FULL if _exact_f32(work, self.precision) else GRAM_WINDOW_REDUCED
    return dataclasses.replace(self, method=method, steps=steps, restart_every=window)

  def composed(self, sigma) -> np.ndarray:
    """What the iteration does to each singular value of the normalized input, in float64.

    The composed Newton–Schulz polynomial of the coefficients (the safety factor
    included) at ``sigma`` (singular values of ``G / ||G||_F``): the polar factor
    in exact arithmetic maps them to 1; this is how far these steps get.

    Examples:
      >>> import optax_lmo as ol
      >>> [round(float(v), 3) for v in ol.Polar(coeffs="cubic", steps=60).composed([0.1, 1.0])]
      [1.0, 1.0]
    """
    return coeffs_lib.get_coefficients(self.coeffs, self.steps).composed(np.asarray(sigma),
                                                                         self.steps)

  def apply(self, x: jax.Array) -> jax.Array:
    """The polar factor of each matrix of ``x`` with these options (see :func:`polar`).

    (A method, not ``__call__``: ``optax.inject_hyperparams`` treats callable
    arguments as schedules, and a ``Polar`` must pass through it unchanged.)
    """
    return polar(
        x,
        method=self.method,
        coeffs=self.coeffs,
        steps=self.steps,
        dtype=self.dtype,
        precision=self.precision,
        restart_every=self.restart_every,
        preconditioning=self.preconditioning,
    )


def polar(
    x: jax.Array,
    *,
    method: str = "auto",
    coeffs: str | Sequence[Sequence[float]] = "polar_express",
    steps: int | None = None,
    dtype: Any = None,
    precision: Any = None,
    restart_every: int | None = None,
    preconditioning: str = "frobenius",
) -> jax.Array:
  r"""Approximates the polar factor of each matrix in ``x`` (last two axes).

  .. math::
    G = U \Sigma V^\top \;\Rightarrow\; \mathrm{polar}(G) = U V^\top

  Newton–Schulz normalizes ``X = G / (||G||_F \cdot \text{safety})`` (dividing by
  the max-abs entry first, so scale invariance holds from 1e-20 to 1e20 in
  float32) and iterates ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` on the
  short side: ``4 m^2 n + 2 m^3`` flops a step for ``m <= n``. The Gram variant
  keeps only ``m x m`` matrices: ``X_k = Q_k X_0`` with ``Q`` a polynomial in
  ``A``, ``2 m^3`` flops for a window's first step and ``8 m^3`` for each later
  one, plus ``4 m^2 n`` per window to form ``A`` and apply ``Q``; it restarts
  (re-forms ``A`` from the current iterate) every ``restart_every`` steps. A zero
  matrix maps to zeros; zero singular values stay zero in float32.

  The iterate is kept in ``dtype``; products accumulate in float32 at
  ``precision`` and the result is cast back to ``x.dtype``. The Gram matrix is
  always kept in float32: rounded to bfloat16 it loses positive
  semi-definiteness, and the iteration blows up on ill-conditioned inputs.

  With ``preconditioning="aol"`` (Turbo-Muon) the first step, on the short side
  ``X`` with Gram matrix ``A = X X^T``, first scales each row of ``X`` by
  ``s_i = 1 / sqrt(max(eps, sum_j |A_ij|)) / safety`` and ``A`` by ``s_i s_j``
  (reused, not re-formed), which bounds ``||X||_2 <= 1 / safety`` more tightly than
  the Frobenius norm (a rank-1 input reaches the bound), so the small singular values
  start higher and one step can go (``coeffs="aol"``: 4 steps). The row scaling
  changes the matrix: the iteration converges to ``polar(diag(s) G)``, which differs
  from ``polar(G)`` when the rows' Gram sums differ (see docs/polar.md).

  How close each preset gets to the exact polar factor (singular-value bands
  against SVD, per dtype and method) is in the docs page "The polar factor:
  accuracy and speed" (``docs/polar.md``), which the tests read.

  Args:
    x: array with ``ndim >= 2``; leading axes are batch axes.
    method: ``"auto"``, ``"newton_schulz"``, ``"gram_newton_schulz"`` or ``"svd"``.
    coeffs: registry name or ``(a, b, c)`` triples; the last triple repeats.
    steps: number of steps; ``None`` takes the preset's default.
    dtype: iteration dtype, float32 when ``None``; bfloat16 is allowed.
    precision: matmul precision (``jax.lax.Precision`` or a dot algorithm name)
      passed to every product.
    restart_every: Gram method: steps between re-forming the Gram matrix.
      ``None``: 5 when products are exact float32 (float32 iterates on CPU, or
      ``precision="highest"``), else 3 (bfloat16 iterates, TF32 on GPU).
    preconditioning: ``"frobenius"`` or ``"aol"`` (both Newton–Schulz methods;
      not ``"svd"``, which is exact).

  Returns:
    An array of ``x``'s shape and dtype.

  Examples:
    >>> import jax, jax.numpy as jnp, optax_lmo as ol
    >>> g = jax.random.normal(jax.random.key(0), (64, 128))
    >>> s = jnp.linalg.svd(ol.Polar().apply(g), compute_uv=False)
    >>> bool(jnp.all(jnp.abs(s - 1) < 0.15))
    True

  References:
    Amsel et al., The Polar Express, arXiv:2505.16932.
    Jordan et al., Muon, https://kellerjordan.github.io/posts/muon/.
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"polar needs ndim >= 2 (a matrix or a batch of them), got shape {x.shape}.")
  if method not in METHODS:
    raise ValueError(f"Unknown polar method {method!r}; choose one of {METHODS}.")
  if restart_every is not None and restart_every < 1:
    raise ValueError(f"restart_every must be >= 1, got {restart_every}.")
  _check_preconditioning(preconditioning, method)
  out_dtype = x.dtype
  if x.size == 0:
    return x
  if method == "svd":
    return _polar_svd(x).astype(out_dtype)
  c = coeffs_lib.get_coefficients(coeffs, steps)
  table = c.schedule(steps)
  work = jnp.dtype(dtype) if dtype is not None else jnp.float32

  tall = x.shape[-2] > x.shape[-1]
  aol = c.safety if preconditioning == "aol" else None  # AOL applies the safety factor itself
  x0 = _normalize(x, 1.0 if aol else c.safety).astype(work)
  if method == "auto":
    method = choose_method(x.shape, work, precision)
  if method == "newton_schulz":
    iterate = lambda x: _newton_schulz(x, table, precision, tall, aol)
  else:
    if restart_every is None:
      restart_every = GRAM_WINDOW_FULL if _exact_f32(work, precision) else GRAM_WINDOW_REDUCED
    restarts = range(restart_every, table.shape[0], restart_every)
    iterate = lambda x: _gram_newton_schulz(x, table, precision, tall, restarts, aol)
  if x0.ndim > 2 and jax.default_backend() == "cpu":
    # One matrix at a time on CPU, batched on accelerators (docs/polar.md, "Batches").
    flat = x0.reshape((-1,) + x0.shape[-2:])
    out = jax.lax.map(iterate, flat).reshape(x0.shape)
  else:
    out = iterate(x0)
  return out.astype(out_dtype)


def choose_method(
    shape: Sequence[int], dtype: Any = None, precision: Any = None, backend: str | None = None
) -> str:
  """The method ``method="auto"`` picks for a stack of ``shape`` iterated in ``dtype``.

  The Gram iteration carries its rounding from step to step in the Gram matrix,
  where the standard iteration re-forms it from the iterate. It is only picked
  where the Gram matrix's products are exact float32: on CPU, or at
  ``precision="highest"``; at an accelerator's default precision (TF32 or
  bfloat16 passes) ``auto`` keeps the standard iteration (docs/polar.md).
  """
  m, n = sorted(shape[-2:])
  work = jnp.dtype(dtype) if dtype is not None else jnp.dtype(jnp.float32)
  backend = backend or jax.default_backend()
  if backend != "cpu" and not _exact_name(precision):
    return "newton_schulz"
  threshold = GRAM_MIN_ASPECT if jnp.finfo(work).bits >= 32 else GRAM_MIN_ASPECT_REDUCED
  return "gram_newton_schulz" if n >= threshold * m else "newton_schulz"


def _exact_name(precision) -> bool:
  if precision is None:
    return False
  name = str(getattr(precision, "name", precision)).lower()
  return name in ("highest", "float32", "f32_f32_f32", "f64_f64_f64")


def _exact_f32(work, precision) -> bool:
  """Whether matmuls of ``work`` at ``precision`` round like float32 (or better).

  ``precision=None`` is exact float32 on CPU; on GPU and TPU it may run TF32 or
  bfloat16 passes.
  """
  if jnp.finfo(work).bits < 32:
    return False
  if precision is None or precision == jax.lax.Precision.DEFAULT:
    return jax.default_backend() == "cpu"
  return _exact_name(precision)


def _check_preconditioning(preconditioning: str, method: str) -> None:
  if preconditioning not in PRECONDITIONINGS:
    raise ValueError(f"Unknown preconditioning {preconditioning!r}; choose one of"
                     f" {PRECONDITIONINGS}.")
  if preconditioning == "aol" and method == "svd":
    raise ValueError("preconditioning='aol' scales the input of Newton–Schulz; method='svd'"
                     " is exact and takes none. Use method='newton_schulz' (or 'auto', or"
                     " 'gram_newton_schulz'), or preconditioning='frobenius'.")


def _aol(x: jax.Array, gram: jax.Array, tall: bool, safety: float):
  """AOL rescaling of the wide view ``X`` (rows) and of its float32 Gram matrix ``A = X X^T``.

  ``s_i = 1 / sqrt(max(eps, sum_j |A_ij|)) / safety``; returns ``(diag(s) X, diag(s) A diag(s))``.
  A tall stack is the transpose of its wide view: its columns are scaled.
  """
  s = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(gram), axis=-1), AOL_EPS)) / safety
  x = (x * (s[..., None, :] if tall else s[..., :, None])).astype(x.dtype)
  return x, gram * s[..., :, None] * s[..., None, :]


def _normalize(x: jax.Array, safety: float) -> jax.Array:
  """``x / (||x||_F * safety)`` per matrix, in float32, without underflow or a 0/0."""
  return numerics.unit(x.astype(jnp.float32), (-2, -1))[0] / safety


def _mT(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _matmul(precision):
  """``a @ b`` at ``precision``, accumulated and returned in float32."""
  return lambda a, b: jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32)


def _loop(lower, upper, body, init):
  """``fori_loop`` always lowered to a ``while`` loop (never a scan, never unrolled)."""

  def cond(carry):
    return carry[0] < upper

  def step(carry):
    i, val = carry
    return i + 1, body(i, val)

  return jax.lax.while_loop(cond, step, (jnp.asarray(lower, jnp.int32), init))[1]


def _sides(precision, tall: bool):
  """``(gram, left)``: ``X X^T`` and ``P X`` on the wide view of a (possibly tall) stack.

  A tall stack is kept as it is and the wide view's products are written
  transposed (``X^T X`` and ``X P^T``), so no transposed copy is ever made.
  """
  mm = _matmul(precision)
  if tall:
    return (lambda x: mm(_mT(x), x)), (lambda p, x: mm(x, _mT(p)))
  return (lambda x: mm(x, _mT(x))), mm


def _newton_schulz(
    x: jax.Array, table: np.ndarray, precision, tall: bool, aol: float | None = None
) -> jax.Array:
  """Standard iteration, 3 matmuls a step: ``X <- a X + (b A + c A A) X``, ``A = X X^T``.

  ``x`` is a stack whose wide view (``m <= n``) is ``x`` itself or, if ``tall``, its transpose.
  With ``aol`` (the safety factor) the first step rescales ``X`` and ``A`` first (:func:`_aol`).
  """
  table = jnp.asarray(table, dtype=jnp.float32)
  mm = _matmul(precision)
  gram_of, left = _sides(precision, tall)
  work = x.dtype

  def step(i, x, aol=None):
    a, b, c = table[i]
    gram = gram_of(x)
    if aol is not None:
      x, gram = _aol(x, gram, tall, aol)
    gram = gram.astype(work)
    poly = (b * gram + c * mm(gram, gram)).astype(work)
    return (a * x + left(poly, x)).astype(work)

  if aol is None:
    return _loop(0, table.shape[0], step, x)
  return _loop(1, table.shape[0], step, step(0, x, aol))  # the first step, peeled


def _gram_newton_schulz(
    x: jax.Array, table: np.ndarray, precision, tall: bool, restarts: Sequence[int],
    aol: float | None = None,
) -> jax.Array:
  """Gram iteration: only ``m x m`` products inside a window (``m`` the short side).

  With ``R = X X^T`` and ``P = a I + b R + c R^2`` the standard step is
  ``X <- P X``, so ``R <- P R P^T`` and ``X_k = Q_k X_0`` with ``Q <- P Q``. One
  step costs 4 ``m x m`` products (``R R``, ``P Q`` and two for ``P R P``, done at
  the start of the next step so a window's last step skips them); a window's first
  step only ``R R`` (``Q = P``). A window starts from ``R = X X^T`` and ends with
  ``X <- Q X`` (the restart at each step in ``restarts``): rounding that builds
  up in ``R`` lasts one window. ``R`` is kept in float32 whatever the iterate's
  dtype: it must stay positive semi-definite, which bfloat16 rounding breaks. With ``aol``
  the first window starts from the AOL-rescaled ``X`` and ``R`` (:func:`_aol`).
  """
  steps = table.shape[0]
  bounds = [0] + sorted({int(r) for r in restarts if 0 < r < steps}) + [steps]
  starts, ends = jnp.asarray(bounds[:-1], jnp.int32), jnp.asarray(bounds[1:], jnp.int32)
  table = jnp.asarray(table, dtype=jnp.float32)
  # The small products that carry R from step to step default to exact float32
  # (free on CPU; on accelerators TF32 rounding would accumulate in R).
  mm = _matmul(jax.lax.Precision.HIGHEST if precision is None else precision)
  gram_of, left = _sides(precision, tall)
  work = x.dtype
  eye = jnp.eye(min(x.shape[-2:]), dtype=jnp.float32)

  def run_window(w, x, aol=None):
    start = starts[w]
    gram = gram_of(x)
    if aol is not None:
      x, gram = _aol(x, gram, tall, aol)
    a, b, c = table[start]
    q = (a * eye + b * gram + c * mm(gram, gram)).astype(work)  # Q = P_0: one product

    def step(j, carry):
      q, gram, p = carry
      gram = mm(p, mm(gram, p))  # R <- P R P, kept in float32
      a, b, c = table[start + j]
      p = (a * eye + b * gram + c * mm(gram, gram)).astype(work)
      return mm(p, q).astype(work), gram, p

    q, *_ = _loop(1, ends[w] - start, step, (q, gram, q))
    return left(q, x).astype(work)

  if aol is None:
    return _loop(0, len(bounds) - 1, run_window, x)
  return _loop(1, len(bounds) - 1, run_window, run_window(0, x, aol))  # the first window


def _polar_svd(x: jax.Array) -> jax.Array:
  """Exact polar factor by SVD (the test oracle); zero singular values map to zero."""
  xf = numerics.peak_scaled(x.astype(jnp.float32), (-2, -1))[0]
  u, s, vt = jnp.linalg.svd(xf, full_matrices=False)
  tol = jnp.max(s, axis=-1, keepdims=True) * max(x.shape[-2:]) * jnp.finfo(jnp.float32).eps
  keep = (s > tol).astype(xf.dtype)
  return jnp.matmul(u * keep[..., None, :], vt, precision=jax.lax.Precision.HIGHEST)
