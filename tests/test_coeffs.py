"""Newton–Schulz coefficient registry: presets, repeat-last policy, validator."""

import numpy as np
import pytest

import optax_lmo as ol
from optax_lmo._src import coeffs as coeffs_lib

# Polar Express (Amsel et al., arXiv:2505.16932, Alg. 1): raw numbers, no safety factor.
PE_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
JORDAN = (3.4445, -4.7750, 2.0315)
YOU5 = [
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
]


def _composed(triples, x, safety=1.0):
  """NumPy composition of the odd quintics, written from the published coefficient tables."""
  y = np.asarray(x, np.float64) / safety
  for a, b, c in triples:
    y = a * y + b * y**3 + c * y**5
  return y


def test_registry_names():
  assert set(coeffs_lib.REGISTRY) == {"polar_express", "jordan", "you5", "cubic", "aol"}


@pytest.mark.parametrize("name", sorted(coeffs_lib.REGISTRY))
@pytest.mark.parametrize("steps", [None, 1, 3, 5, 8, 12])
def test_every_preset_passes_validator(name, steps):
  c = coeffs_lib.REGISTRY[name]
  coeffs_lib.validate(c, steps)
  assert coeffs_lib.get_coefficients(name, steps) is c


def test_presets_match_spec_numbers():
  reg = coeffs_lib.REGISTRY
  assert reg["jordan"].triples == (JORDAN,)
  assert reg["jordan"].default_steps == 5
  assert reg["you5"].triples == tuple(YOU5)
  assert reg["you5"].default_steps == 5
  assert reg["cubic"].triples == ((1.5, -0.5, 0.0),)
  assert reg["cubic"].default_steps == 30


def test_polar_express_safety_factor():
  pe = coeffs_lib.REGISTRY["polar_express"]
  assert pe.safety == 1.01
  assert len(pe.triples) == len(PE_RAW)
  for (a, b, c), (ra, rb, rc) in zip(pe.triples[:-1], PE_RAW[:-1], strict=True):
    np.testing.assert_allclose([a, b, c], [ra / 1.01, rb / 1.01**3, rc / 1.01**5], rtol=1e-15)
  # The last triple is not damped.
  assert pe.triples[-1] == PE_RAW[-1] == (1.875, -1.25, 0.375)


@pytest.mark.parametrize(
    "name, listed",
    [("polar_express", PE_RAW[-1:]), ("jordan", [JORDAN]), ("you5", YOU5[-1:])],
)
def test_repeat_last_policy(name, listed):
  c = coeffs_lib.REGISTRY[name]
  n = len(c.triples)
  s = c.schedule(n + 4)
  assert s.shape == (n + 4, 3)
  assert s.dtype == np.float64
  np.testing.assert_array_equal(s[:n], np.asarray(c.triples))
  np.testing.assert_array_equal(s[n:], np.repeat(np.asarray(listed[-1:]), 4, axis=0))


def test_schedule_truncates_and_defaults():
  pe = coeffs_lib.REGISTRY["polar_express"]
  np.testing.assert_array_equal(pe.schedule(3), np.asarray(pe.triples[:3]))
  assert pe.schedule().shape == (pe.default_steps, 3)
  assert coeffs_lib.REGISTRY["cubic"].schedule().shape == (30, 3)
  with pytest.raises(ValueError, match="steps >= 1"):
    pe.schedule(0)


@pytest.mark.parametrize("name", sorted(coeffs_lib.REGISTRY))
def test_composed_matches_numpy(name):
  c = coeffs_lib.REGISTRY[name]
  x = np.linspace(0.0, 1.0, 101)
  for steps in (1, c.default_steps, 10):
    np.testing.assert_allclose(
        c.composed(x, steps), _composed(c.schedule(steps), x, c.safety), rtol=1e-12
    )


def test_converged_presets_reach_one():
  # Polar Express with 8 steps and cubic with 30 map (0.05, 1] close to 1 (the Polar Express paper).
  x = np.linspace(0.05, 1.0, 200)
  pe = coeffs_lib.REGISTRY["polar_express"]
  np.testing.assert_allclose(_composed(pe.schedule(8), x, pe.safety), 1.0, atol=1e-2)
  np.testing.assert_allclose(_composed([(1.5, -0.5, 0.0)] * 30, x), 1.0, atol=1e-6)
  # jordan does not converge: its composed map oscillates around 1, roughly [0.68, 1.13].
  y = _composed([JORDAN] * 5, x)
  assert 0.6 < y.min() < 0.75 and 1.05 < y.max() < 1.2


# Sets whose composed polynomial really leaves (0, bound] on (0, 1]; each entry
# says where (checked with the NumPy composition above).
BAD_SETS = {
    # (3, -5, 3) style with a larger cubic term: p(1) = 3 - 6.5 + 3 = -0.5.
    "negative_at_one": ([(3.0, -6.5, 3.0)], 1.0),
    # Each triple is fine alone, the composition is not: 1 -> 2 -> 3 - 4 = -1.
    "negative_composed": ([(2.0, 0.0, 0.0), (1.5, -0.5, 0.0)], 1.0),
    # Negative slope at 0: small singular values flip sign.
    "negative_near_zero": ([(-0.5, 3.0, 0.0)], 0.01),
    # Exceeds the bound 2: p(1) = 3.
    "exceeds_bound": ([(3.0, 0.0, 0.0)], 1.0),
    # jordan's triple with a doubled linear term overshoots: p(0.5) > 2.
    "jordan_overshoot": ([(2 * 3.4445, -4.7750, 2.0315)], 0.5),
}


@pytest.mark.parametrize("name", sorted(BAD_SETS))
def test_validator_rejects_bad_sets(name):
  triples, x_bad = BAD_SETS[name]
  y = _composed(triples, x_bad)
  assert y <= 0 or y > 2  # the set is genuinely bad at x_bad
  with pytest.raises(ValueError, match="positive and at most 2"):
    coeffs_lib.get_coefficients(triples)
  with pytest.raises(ValueError):
    ol.Polar(coeffs=triples)


def test_validator_checks_the_repeated_schedule():
  # (2, 0, 0) once maps 1 to 2 (allowed); twice maps it to 4.
  ok = coeffs_lib.get_coefficients([(2.0, 0.0, 0.0)], steps=1)
  assert ok.name == "custom" and ok.default_steps == 1
  with pytest.raises(ValueError, match="2 steps"):
    coeffs_lib.get_coefficients([(2.0, 0.0, 0.0)], steps=2)


def test_validator_bound_argument():
  c = coeffs_lib.Coefficients("x", ((1.5, 0.0, 0.0),), 1)
  coeffs_lib.validate(c)
  with pytest.raises(ValueError):
    coeffs_lib.validate(c, bound=1.2)


def test_validator_rejects_non_finite():
  with pytest.raises(ValueError):
    coeffs_lib.get_coefficients([(float("nan"), 0.0, 0.0)])


def test_user_triples_accepted():
  c = coeffs_lib.get_coefficients([[3.4445, -4.7750, 2.0315], (1.5, -0.5, 0.0)])
  assert c.name == "custom"
  assert c.triples == (JORDAN, (1.5, -0.5, 0.0))
  assert c.default_steps == 2


@pytest.mark.parametrize(
    "triples",
    [[], [(1.5, -0.5)], [(1.5, -0.5, 0.0, 0.0)], [(1.5, -0.5, 0.0), (1.0,)]],
)
def test_user_triples_of_wrong_arity_raise(triples):
  with pytest.raises(ValueError, match=r"\(a, b, c\) triples"):
    coeffs_lib.get_coefficients(triples)


def test_unknown_preset_lists_known_names():
  with pytest.raises(ValueError, match="polar_expres") as e:
    coeffs_lib.get_coefficients("polar_expres")
  for name in coeffs_lib.REGISTRY:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="jordan"):
    ol.Polar(coeffs="dion")
