"""Newton–Schulz coefficient sets: one registry, one repeat policy, one validator.

Each Newton–Schulz step maps every singular value ``x`` of the iterate through
the odd quintic ``p(x) = a x + b x^3 + c x^5``. A coefficient set is a sequence
of triples ``(a, b, c)`` plus the factor by which the input is divided on top of
its Frobenius norm (``safety``). Policy: when more steps are asked for than
triples are listed, the last triple repeats.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Coefficients:
  """A validated Newton–Schulz coefficient set.

  Attributes:
    name: registry name, or ``"custom"``.
    triples: the ``(a, b, c)`` of each step; the last repeats past the end.
    default_steps: steps used when ``polar(..., steps=None)``.
    safety: the input is normalized by ``||G||_F * safety``.
  """

  name: str
  triples: tuple[tuple[float, float, float], ...]
  default_steps: int
  safety: float = 1.0

  def schedule(self, steps: int | None = None) -> np.ndarray:
    """``(steps, 3)`` float64 array of the triples used, the last repeated."""
    steps = self.default_steps if steps is None else int(steps)
    if steps < 1:
      raise ValueError(f"Newton–Schulz needs steps >= 1, got {steps}.")
    rows = [self.triples[min(i, len(self.triples) - 1)] for i in range(steps)]
    return np.asarray(rows, dtype=np.float64)

  def composed(self, x: np.ndarray, steps: int | None = None) -> np.ndarray:
    """The composed polynomial applied to singular values ``x`` (after normalization)."""
    y = np.asarray(x, dtype=np.float64) / self.safety
    for a, b, c in self.schedule(steps):
      y2 = y * y
      y = y * (a + y2 * (b + c * y2))
    return y


_PE_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def _damped(raw):
  """The Polar Express safety factor: every triple but the last damped by 1.01."""
  return tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in raw[:-1]) + raw[-1:]


_PE = _damped(_PE_RAW)
# For AOL preconditioning (polar(..., preconditioning="aol")): Polar Express's greedy
# construction (each step the odd quintic closest to 1 in the max norm on the interval the
# previous steps leave), run for 4 steps from [8e-3, 1] without a cushion. AOL lifts the
# small singular values, so the construction may start from a lower bound 8 times the 1e-3
# of Polar Express's coefficients, and reaches its 5-step error one step earlier on Gaussian
# and condition-1e2 inputs (docs/polar.md; tests/test_aol.py re-derives these numbers).
_AOL_RAW = (
    (8.17431312112634, -23.939684576662334, 17.699989207717962),
    (3.7414727086503343, -2.79742834890224, 0.5451359158804492),
    (2.8272901183474475, -2.111131063881436, 0.46754571598483496),
    (2.009459227755841, -1.3924486523641093, 0.38950582392104605),
)

REGISTRY: dict[str, Coefficients] = {
    # KellerJordan/Muon and optax.contrib.muon; does not converge (sigma in ~[0.68, 1.13]).
    "jordan": Coefficients("jordan", ((3.4445, -4.7750, 2.0315),), 5),
    # You Jiacheng's five per-step triples (optax preset "dion").
    "you5": Coefficients(
        "you5",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        5,
    ),
    # Amsel et al., The Polar Express, Alg. 1, with the 1.01 safety factor.
    "polar_express": Coefficients("polar_express", _PE, 5, safety=1.01),
    # Made for AOL preconditioning (above), with the same 1.01 safety: 4 steps.
    "aol": Coefficients("aol", _damped(_AOL_RAW), 4, safety=1.01),
    # The classical cubic Newton–Schulz iteration: exact in the limit, slow.
    "cubic": Coefficients("cubic", ((1.5, -0.5, 0.0),), 30),
}


def validate(coeffs: Coefficients, steps: int | None = None, *, bound: float = 2.0) -> None:
  """Raises ``ValueError`` unless the composed polynomial is in ``(0, bound]`` on ``(0, 1]``.

  Checked on a dense grid (log-spaced down to 1e-8 plus linear), in float64.
  """
  x = np.unique(np.concatenate([np.logspace(-8, 0, 2001), np.linspace(1e-3, 1.0, 4001)]))
  y = coeffs.composed(x, steps)
  bad = np.flatnonzero(~((y > 0) & (y <= bound) & np.isfinite(y)))
  if bad.size:
    i = bad[0]
    raise ValueError(
        f"Newton–Schulz coefficients {coeffs.name!r} with {steps or coeffs.default_steps} steps"
        f" map singular value {x[i]:.4g} to {y[i]:.4g}: the composed polynomial must be"
        f" positive and at most {bound} on (0, 1]. Use a registry preset"
        f" ({', '.join(REGISTRY)}) or fix the triples."
    )


def get_coefficients(
    coeffs: str | Coefficients | Sequence[Sequence[float]], steps: int | None = None
) -> Coefficients:
  """Looks up a preset by name, or validates user triples ``[(a, b, c), ...]``."""
  if isinstance(coeffs, Coefficients):
    out = coeffs
  elif isinstance(coeffs, str):
    if coeffs not in REGISTRY:
      raise ValueError(
          f"Unknown Newton–Schulz coefficient set {coeffs!r}; known: {', '.join(REGISTRY)}."
      )
    out = REGISTRY[coeffs]
  else:
    triples = tuple(tuple(float(v) for v in t) for t in coeffs)
    if not triples or any(len(t) != 3 for t in triples):
      raise ValueError(
          "Newton–Schulz coefficients must be a non-empty sequence of (a, b, c) triples,"
          f" got {coeffs!r}."
      )
    out = Coefficients("custom", triples, len(triples))
  _validate_once(out, steps)
  return out


@functools.lru_cache(maxsize=256)
def _validate_once(coeffs: Coefficients, steps: int | None) -> None:
  validate(coeffs, steps)
