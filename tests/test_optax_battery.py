"""optax's own contributed-optimizer battery (``optax/contrib/_common_test.py``) on our optimizers.

The battery ships in the optax wheel. It is loaded from the installed optax and
run unchanged except for the list of optimizers under test and the factory
lookup, which point at ours. Deliberate differences (each in the optax battery
row of docs/guarantees.md, with its reason) live in the keyword arguments below:

- Constrained Scion keeps ``||W|| <= rho`` and, with a constant step, circles
  an interior optimum at a distance of about ``lr * rho``. The battery asks for
  convergence to 3e-2, so in the tests that run every optimizer of the list
  (convergence, extra arguments, dtype stability, schedules) Scion takes the
  Frank-Wolfe step ``2 / (t + 2)`` and radii that contain the targets. The tests
  of the "main" list (``inject_hyperparams``, dtypes, ``MultiSteps``) compare a
  wrapped optimizer's state with a plain one's, which a schedule argument
  changes in optax itself (``inject_hyperparams`` evaluates it outside), so
  there Scion has a constant learning rate.
- The LMO step has a fixed length ``lr * rho`` whatever the gradient, so the
  unconstrained runs (normalized SGD's too) use ``lr = 3e-3`` to settle within
  the tolerance in the curved Rosenbrock valley (at 1e-2 they zigzag at about
  0.1 from its minimum, the side they end on set by rounding).
- A leaf with ndim >= 3 needs a ``MatrixSpec`` in strict mode (the battery's
  ``(2, 5, 2)`` leaf): the rules below give stacked leaves the view
  ``(batch, fan_in, fan_out)``.
"""

import ast
import pathlib

import optax
import optax.contrib

import optax_lmo as ol
from optax_lmo import norms

_SOURCE = pathlib.Path(optax.contrib.__file__).parent / "_common_test.py"


def _rules(radius: float) -> ol.Rules:
  """Every leaf: 0-1-D BiasRMS, 2-D Spectral, 3-D a stack of Spectral matrices."""

  def rule(path, leaf):
    del path
    nd = len(getattr(leaf, "shape", ()))
    if nd <= 1:
      return ol.Group(norms.BiasRMS(), radius=radius)
    spec = ol.MatrixSpec(fan_in=(-2,), fan_out=(-1,)) if nd >= 3 else None
    return ol.Group(norms.Spectral(), radius=radius, spec=spec)

  return ol.Rules(rule)


def _frank_wolfe(count):
  return 2.0 / (count + 2.0)


OPTIMIZERS = {
    "scion": ol.scion,
    "unconstrained_scion": ol.unconstrained_scion,
    "muon": ol.muon,
    "sign_descent": ol.sign_descent,
    "normalized_sgd": ol.normalized_sgd,
}


def _entries(scion_lr):
  return tuple(
      {"opt_name": name, "opt_kwargs": kwargs, "wrapper_name": None, "wrapper_kwargs": None}
      for name, kwargs in (
          ("scion", {"learning_rate": scion_lr, "rules": _rules(8.0)}),
          ("unconstrained_scion", {"learning_rate": 3e-3, "rules": _rules(1.0)}),
          ("unconstrained_scion",
           {"learning_rate": 3e-3, "rules": _rules(1.0), "weight_decay": 1e-3}),
          ("muon", {"learning_rate": 1e-2, "rules": _rules(1.0)}),
          ("sign_descent", {"learning_rate": 1e-3}),
          ("normalized_sgd", {"learning_rate": 3e-3}),
      )
  )


UNDER_TEST = _entries(_frank_wolfe)  # optax's _ALL_OPTIMIZERS_UNDER_TEST
MAIN_UNDER_TEST = _entries(1e-2)  # optax's _MAIN_OPTIMIZERS_UNDER_TEST


def _load_battery():
  """optax's ContribTest with our optimizers in place of optax.contrib's."""
  tree = ast.parse(_SOURCE.read_text(), filename=str(_SOURCE))
  at = next(i for i, node in enumerate(tree.body)
            if isinstance(node, ast.ClassDef) and node.name == "ContribTest")
  tree.body[at:at] = ast.parse(
      "_ALL_OPTIMIZERS_UNDER_TEST = _OURS\n_MAIN_OPTIMIZERS_UNDER_TEST = _OURS_MAIN"
  ).body
  namespace = {"__name__": "optax_contrib_battery", "_OURS": UNDER_TEST,
               "_OURS_MAIN": MAIN_UNDER_TEST}
  exec(compile(tree, str(_SOURCE), "exec"), namespace)  # noqa: S102
  namespace["_get_opt_factory"] = OPTIMIZERS.__getitem__
  return namespace["ContribTest"]


OptaxContribBattery = _load_battery()


def test_the_battery_is_optax_s_own_and_runs_ours():
  assert "def test_optimizers_can_be_wrapped_in_inject_hyperparams" in _SOURCE.read_text()
  names = [n for n in dir(OptaxContribBattery) if n.startswith("test_")]
  assert any("inject_hyperparams" in n for n in names)
  assert sum("test_optimizers_accept_extra_args" in n for n in names) == 2 * len(UNDER_TEST)
